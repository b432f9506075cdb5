"""``sweep ui``, ``sweep dashboard`` and ``sweep tensorboard``: a local server over a sweep's records, started,
waited for until it answers, its link printed, and stopped with everything it started when we are."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from sweep.errors import SweepError


def tool(name: str) -> str:
    """A console script of this environment (mlflow, optuna-dashboard, tensorboard)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SweepError(f"'{name}' is not installed in this environment; pip install {name}")
    return found


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own http://127.0.0.1 server)
            return bool(response.status < 500)
    except (urllib.error.URLError, OSError):
        return False


def serve(
    cmd: Sequence[str],
    ready: str,
    link: str,
    what: str,
    env: Mapping[str, str] | None = None,
    wait_s: float = 180.0,
) -> int:
    """Run ``cmd`` in its own process group, print ``link`` once ``ready`` answers, and on Ctrl-C or SIGTERM
    stop the whole group (a server's workers included). Returns 0 when stopped by a signal."""
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in finally; the server writes it until then)
    proc = subprocess.Popen(
        list(cmd), env={**os.environ, **(env or {})}, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting {what}…", file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait_s
        while not answers(ready):
            if proc.poll() is not None:
                log.seek(0)
                last = [line for line in log.read().splitlines() if line.strip()][-1:] or ["no output"]
                raise SweepError(f"{what} exited with {proc.returncode} before it answered: {last[0][:300]}")
            if time.monotonic() > deadline:
                raise SweepError(f"{what} did not answer at {ready} within {wait_s:.0f} s")
            time.sleep(0.5)
        print(f"{what}: {link}  (Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0 if stopping else 130
    finally:
        _stop_group(proc)
        log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to what is left after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers may not be
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
