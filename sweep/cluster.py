"""The Ray a sweep runs on: started here or joined (``--address``: a head's HOST:PORT, ``auto``), its token, what it
can place, and stopped again (only a Ray this process started: a caller's own stays)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sweep.errors import SweepError
from sweep.spec import Spec

RAY_ENV = {
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # Ray writes its experiment state this often: a killed driver loses little
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C belongs to the `sweep` command (sweep.interrupts), not the library
}
LOG_FILE = "ray.log"
"""Ray's own log lines and the trials' tracebacks, in the sweep's results folder (the terminal gets ours)."""


def _quiet() -> None:
    """Our progress lines are the output; the libraries' start-up chatter is not."""
    import warnings

    import mlflow  # noqa: F401  (configures its loggers on import; lower them after that)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="All-NaN slice")  # ASHA's rung of diverged (NaN) trials
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # each failed write: the journal says


_OWNED = threading.Event()
"""Set while the Ray instance this process uses is one :func:`start_ray` started (or joined): :func:`stop_ray` stops
only that one, never a Ray the caller started (a notebook's, a test session's)."""


def start_ray(address: str | None, log: Path) -> None:
    """Start (or join) Ray with our environment, unless this process has a Ray already; its own log lines and
    tracebacks go to ``log``, our progress lines are the terminal's."""
    ray_env()
    import ray

    _quiet()
    # While ray.init waits for its processes, import what Tune's TensorBoard logger needs (a second on its own)
    threading.Thread(target=_preload, args=(TUNE_MODULES,), daemon=True).start()
    if address and ray.is_initialized() and not _OWNED.is_set():
        raise SweepError(
            f"--address {address}: this process is connected to a Ray of its own already; run the sweep in a new "
            "process, or without --address to use that Ray"
        )
    if not ray.is_initialized():
        try:
            from sweep.interrupts import kept

            # Ray's C++ core logs retries and warnings straight to the terminal, and installs its own SIGTERM
            # handler (a stack dump, then exit): the caller's handlers stay
            with _stderr_into(log), kept():
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    configure_logging=True,
                )
        except Exception as e:  # Ray raises several kinds (ConnectionError, AuthenticationError, RuntimeError)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            hint = ""
            if address and ("auth" in f"{type(e).__name__} {e}".lower() or not auth_token_available()):
                # the head answered (check_address), so a refusal is most often its token authentication
                hint = (
                    "; if the cluster uses token authentication (a head started with a token has it on), copy the "
                    "head's ~/.ray/auth_token to this machine or set RAY_AUTH_TOKEN"
                )
            raise SweepError(f"--address {address}: cannot join the Ray cluster: {first}{hint}") from None
        _OWNED.set()
    handler = _QuietFileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.tune", "ray.train"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    ray_logger.setLevel(logging.INFO)
    ray_logger.propagate = False


class _QuietFileHandler(logging.FileHandler):
    """The log file's handler: a line that cannot be written (a full disk) is lost quietly, not a traceback on the
    terminal per line (the sweep itself says what is wrong)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


@contextmanager
def _stderr_into(log: Path) -> Iterator[None]:
    """File descriptor 2 appended to ``log`` for the block: what native code prints goes there too."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def ray_env() -> None:
    """Our settings of Ray's environment variables (a user's own win), before Ray is imported."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def joined(address: str) -> str:
    """What the cluster a sweep joined has, in one line."""
    import ray

    have = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return (
        f"joined the Ray cluster at {address}: {nodes} node{'s' if nodes != 1 else ''}, "
        f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs"
    )


def auth_token_available() -> bool:
    """Whether this machine has a Ray cluster token where Ray looks: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token`` (``ray get-auth-token --generate`` and a local
    ``ray.init`` write it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


def check_address(address: str) -> None:
    """Before ``ray.init`` joins ``HOST:PORT``: something must answer there (else Ray retries, then raises a
    traceback), and a token this machine has is used (Ray 2.60 turns token authentication on for a head started
    with a token, but leaves it off for a driver given an explicit address)."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(
            f"--address {address}: expected HOST:PORT of the Ray head (its GCS port, 6379 by default) or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SweepError(
            f"--address {address}: nothing answers there ({reason}); start the head with "
            f"`ray start --head --port {port}` or give the address `ray start --head` printed"
        ) from None
    use_local_token()
    import subprocess

    # Ray's GCS client answers in a moment where ray.init retries for 20 s; in a child process, because on some
    # failures Ray's native code ends the process it runs in
    probe = f"from ray._raylet import GcsClient; GcsClient(address={address!r})"
    try:
        env = {**os.environ, **({"RAY_AUTH_MODE": "token"} if auth_token_available() else {})}
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        return  # ray.init says what is wrong, in one line too
    if done.returncode != 0 and ("InvalidAuthToken" in done.stderr or "AuthenticationError" in done.stderr):
        have = "the token this machine has is not the head's" if auth_token_available() else "this machine has none"
        raise SweepError(
            f"--address {address}: the Ray head wants its cluster token and {have}; copy the head's "
            "~/.ray/auth_token to this machine or set RAY_AUTH_TOKEN"
        ) from None


def use_local_token() -> None:
    """Present the Ray token this machine has (what Ray does itself for ``auto``, and not for an explicit address
    or a job server's URL)."""
    ray_env()
    if "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        try:
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
            quiet.setLevel(logging.ERROR)  # its "token authentication is enabled" notice is not our output
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        except ImportError:  # another Ray version: the environment variable is what Ray reads at start
            os.environ["RAY_AUTH_MODE"] = "token"


def stop_ray() -> None:
    """Stop the Ray instance a sweep started (or leave the cluster it joined) as soon as the sweep is over, not at
    interpreter exit, where Ray first sleeps half a second for log lines we do not print. A Ray this process had
    before the sweep stays."""
    if "ray" in sys.modules and _OWNED.is_set():
        import ray

        ray.shutdown()
        _OWNED.clear()


TUNE_MODULES = ("tensorboardX",)
"""Imported in the background while Ray starts: Tune's TensorBoard logger needs it, and nothing ray.init imports
does (a module imported by two threads at once would wait on Python's import lock)."""


def _preload(modules: tuple[str, ...]) -> None:
    import contextlib
    import importlib

    for module in modules:
        with contextlib.suppress(ImportError):  # Tune then warns as it always does
            importlib.import_module(module)


def check_resources(spec: Spec) -> None:
    """Refuse what the cluster can never place: such a trial would wait forever."""
    import ray

    have = ray.cluster_resources()
    wants = (
        ("CPU", "cpus_per_trial", spec.resources.cpus_per_trial),
        ("GPU", "gpus_per_trial", spec.resources.gpus_per_trial),
    )
    for key, field, want in wants:
        if want > have.get(key, 0):
            stop_ray()
            raise SweepError(
                f"resources.{field}: {want:g} per trial, but the Ray cluster has {have.get(key, 0):g} {key}s "
                f"({', '.join(f'{k}: {have.get(k, 0):g}' for k in ('CPU', 'GPU'))}); no trial could ever start"
            )


