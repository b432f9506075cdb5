"""The team setup: an MLflow tracking server on PostgreSQL with a served artifact store."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweep import store
from tests.sweep.conftest import QUICK, ROOT

pytestmark = pytest.mark.e2e
PG = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``mlflow server`` on PostgreSQL and 127.0.0.1, which a test can stop and start again."""

    def __init__(self, db: str, store: Path, admin_password: str | None = None) -> None:
        self.port, self.db, self.store = free_port(), db, store
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.admin_password = admin_password
        """With one: MLflow's basic-auth app is on, user ``admin`` has this password."""

    def start(self) -> None:
        exe = str(Path(sys.executable).with_name("mlflow"))
        backend = f"{PG.replace('postgresql:', 'postgresql+psycopg2:')}/{self.db}"
        cmd = [
            exe,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(self.store),
            "--serve-artifacts",
            "--workers",
            "1",
        ]
        env = dict(os.environ)
        if self.admin_password:
            config = self.store.parent / "basic_auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.store.parent / 'basic_auth.db'}\nadmin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            cmd += ["--app-name", "basic-auth"]
            env |= {
                "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,  # the auth app's CSRF key
            }
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextmanager
def tracking_server(store: Path, admin_password: str | None = None) -> Iterator[Server]:
    """A fresh PostgreSQL database and a running server on it, both removed afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    db = f"sweep_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(f"{PG}/postgres")
    except psycopg2.OperationalError as e:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432: {e}")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    srv = Server(db, store, admin_password)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        admin.cursor().execute(f"DROP DATABASE {db} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each test logs to its own experiment); a test that stops it starts it again."""
    with tracking_server(tmp_path_factory.mktemp("tracking") / "artifact-store") as srv:
        yield srv


def sweep_cmd(*overrides: str) -> list[str]:
    cmd = [sys.executable, "-m", "sweep", "run", str(ROOT / "search_spaces" / "demo.yaml")]
    return cmd + [a for o in overrides for a in ("--set", o)]


def epochs_reported(tune_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in tune_dir.glob("*/result.json"))


def assert_complete(url: str, experiment: str, trials: int, epochs: int) -> None:
    """Every trial's run holds every epoch exactly once, and ended."""
    mlflow = store.client(url)
    exp = mlflow.get_experiment_by_name(experiment)
    parent = store.parent_runs(mlflow, exp.experiment_id, "digits-demo")[0]
    runs = store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)
    assert len(runs) == trials and parent.info.status == "FINISHED"
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["sweep.state"] == "completed"
        for metric in ("val_top1", "train_loss"):
            assert [m.step for m in mlflow.get_metric_history(run.info.run_id, metric)] == list(range(1, epochs + 1))
        assert [a.path for a in mlflow.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]


FIFO = [*QUICK, "scheduler.name=fifo", "budget.trials=2", "fixed.epochs=5", "dataset.image_size=16"]


class RunningSweep:
    """``sweep run`` in a child process, watched through the epochs Ray records on disk."""

    def __init__(self, cwd: Path, *overrides: str) -> None:
        self.proc = subprocess.Popen(
            sweep_cmd(*FIFO, *overrides), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.tune_dir = cwd / "results" / "digits-demo" / "tune"
        self.deadline = time.monotonic() + 240

    def wait_epochs(self, n: int) -> None:
        while epochs_reported(self.tune_dir) < n:
            assert self.proc.poll() is None and time.monotonic() < self.deadline
            time.sleep(0.3)

    def finish(self) -> str:
        out, _ = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, out[-3000:]
        return out


def test_server_outage_mid_sweep_loses_nothing(server, tmp_path: Path) -> None:
    sweep = RunningSweep(tmp_path, f"tracking.uri={server.url}", "tracking.experiment=outage")
    sweep.wait_epochs(2)
    server.stop()
    sweep.wait_epochs(epochs_reported(sweep.tune_dir) + 3)  # training goes on while the store is away
    pending = tmp_path / "results" / "digits-demo" / "tracking-pending.jsonl"
    assert pending.exists()
    server.start()
    out = sweep.finish()
    assert "store unreachable" in out and "every kept record delivered" in out
    assert_complete(server.url, "outage", trials=2, epochs=5)
    assert not pending.exists()


def assert_no_secret(secret: str, url: str, *folders: Path) -> None:
    """Not in any file of ``folders`` (results/, the server's artifact store) nor in any MLflow param or tag."""
    for folder in folders:
        leaks = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not leaks, leaks
    mlflow = store.client(url)
    for run in mlflow.search_runs([e.experiment_id for e in mlflow.search_experiments()]):
        assert secret not in repr(run.data.params) + repr(run.data.tags)


def test_store_gone_until_the_end_then_sweep_sync(server, tmp_path: Path) -> None:
    """A password in the tracking URI: the records kept during the outage reach that same server through
    `sweep sync`, and the password is in no file, no MLflow record and no output."""
    password = f"pw-{uuid.uuid4().hex[:12]}"
    url = server.url.replace("http://", f"http://sweeper:{password}@")
    sweep = RunningSweep(tmp_path, f"tracking.uri={url}", "tracking.drain_s=2", "tracking.experiment=gone")
    sweep.wait_epochs(1)
    server.stop()
    out = sweep.finish()
    pending = tmp_path / "results" / "digits-demo" / "tracking-pending.jsonl"
    assert pending.exists() and "sweep sync" in out
    sync = [sys.executable, "-m", "sweep", "sync", "digits-demo"]
    refused = subprocess.run(sync, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "cannot reach" in refused.stderr and pending.exists(), refused.stderr
    server.start()
    done = subprocess.run(sync, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "records delivered to http://127.0.0.1" in done.stdout, done.stderr
    assert not pending.exists() and not (tmp_path / "mlruns.db").exists()
    assert_complete(server.url, "gone", trials=2, epochs=5)
    assert password not in out + refused.stdout + refused.stderr + done.stdout + done.stderr
    assert_no_secret(password, server.url, tmp_path / "results", server.store)
