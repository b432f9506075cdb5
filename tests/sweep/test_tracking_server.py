"""The team setup: an MLflow tracking server on PostgreSQL with a served artifact store."""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sweep import tracking
from sweep.export import load_table
from tests.sweep.conftest import QUICK, ROOT

pytestmark = pytest.mark.e2e
PG = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path):
    """A fresh database and an ``mlflow server`` on 127.0.0.1, stopped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    db = f"sweep_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(f"{PG}/postgres")
    except psycopg2.OperationalError as e:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432: {e}")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    port = free_port()
    exe = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"{PG.replace('postgresql:', 'postgresql+psycopg2:')}/{db}",
            "--artifacts-destination",
            str(tmp_path / "artifact-store"),
            "--serve-artifacts",
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            tracking.client(url).search_experiments()
            break
        except Exception:
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
    yield url, tmp_path / "artifact-store"
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    admin.cursor().execute(f"DROP DATABASE {db} WITH (FORCE)")
    admin.close()


def test_sweep_tracks_into_a_server_on_postgres(server, tmp_path: Path) -> None:
    url, store = server
    overrides = [*QUICK, "budget.trials=3", "fixed.epochs=2", f"tracking.uri={url}"]
    cmd = [sys.executable, "-m", "sweep", "run", str(ROOT / "search_spaces" / "demo.yaml")]
    done = subprocess.run(
        cmd + [a for o in overrides for a in ("--set", o)], cwd=tmp_path, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (tmp_path / "mlruns.db").exists()  # nothing went to the embedded store
    table = load_table("digits-demo", url)
    assert len(table.frame) == 3 and table.frame["val_top1"].notna().all()
    assert list(store.rglob("best.pt"))  # checkpoints went through the server to its artifact store
    status = subprocess.run(
        [sys.executable, "-m", "sweep", "status", "digits-demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and "3 trials" in status.stdout, status.stderr
