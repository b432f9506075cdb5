"""The tracking store: credentials kept out of every URI we record, and an embedded store that is created
whole or not at all (a kill -9 mid-creation, two first sweeps at once)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep import store
from sweep.errors import SweepError


def test_credentials_leave_the_uri_for_the_clients_environment(monkeypatch) -> None:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD"):
        monkeypatch.delenv(key, raising=False)
    assert store.connect("http://alice:s3cr%40t@mlflow.lab:5000/") == "http://mlflow.lab:5000/"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr@t"
    assert store.connect("postgresql+psycopg2://ml:pw@db:5432/mlflow") == (
        "postgresql+psycopg2://ml@db:5432/mlflow?connect_timeout=5"
    )
    assert os.environ["PGPASSWORD"] == "pw"
    assert store.connect("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert store.redact("mysql://u:pw@h/db and http://a:b@c") == "mysql://u:***@h/db and http://a:***@c"


def test_a_missing_database_driver_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"mysql://u:\*\*\*@127.0.0.1/x needs the Python package 'MySQLdb'"):
        client = store.client("mysql://u:pw@127.0.0.1/x")
        store.experiment_id(client, "e", "mysql://u:pw@127.0.0.1/x")


CREATE = "import sys; from sweep import store; store.ensure_sqlite(__import__('pathlib').Path(sys.argv[1]))"


def test_kill_9_during_the_store_creation_leaves_no_broken_store(tmp_path: Path, cli) -> None:
    db = tmp_path / "mlruns.db"
    for delay in (0.0, 0.3):
        empty = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / f"cache{delay}")}  # no template: the migrations run
        proc = subprocess.Popen([sys.executable, "-c", CREATE, str(db)], cwd=tmp_path, env=empty)
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".mlruns.db.*.creating")):  # killed mid-migration, not before
            assert proc.poll() is None and time.monotonic() < deadline, "the store was created before the kill"
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not db.exists()  # never a half-built store in place
    status = cli("status", "nothing-here", cwd=tmp_path)  # reads, never creates: still no store
    assert status.returncode == 2 and status.stderr.count("\n") == 1, status
    assert "no sweep named 'nothing-here'" in status.stderr and not db.exists()
    store.ensure_sqlite(db)  # the next creation is whole and clears what the killed ones left
    assert db.exists() and not list(tmp_path.glob(".mlruns.db.*.creating"))


def test_a_new_store_is_a_copy_of_the_first_one_built(tmp_path: Path, monkeypatch) -> None:
    """The first store built on a machine is kept as a template (in the cache folder); later ones are copies of it
    that keep their Default experiment's artifacts next to themselves, and work as a migrated store does."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import mlflow

    firsts = []
    for folder in ("first", "second"):
        uri = f"sqlite:///{tmp_path / folder / 'mlruns.db'}"
        client = store.client(uri)
        assert client.get_experiment("0").artifact_location == (tmp_path / folder / "mlartifacts" / "0").as_uri()
        run = client.create_run(store.experiment_id(client, "e", uri))
        client.log_metric(run.info.run_id, "m", 1.0)
        firsts.append(client.get_metric_history(run.info.run_id, "m")[0].value)
    assert firsts == [1.0, 1.0]
    assert (tmp_path / "cache" / "sweep" / f"mlflow-{mlflow.__version__}.db").is_file()


SAME = (
    "import sys; from sweep import store; uri = 'sqlite:///' + sys.argv[1]; c = store.client(uri); "
    "e = store.experiment_id(c, 'shared', uri); c.create_run(e); print(e)"
)


def test_two_first_sweeps_at_once_share_one_whole_store(tmp_path: Path) -> None:
    db = tmp_path / "mlruns.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SAME, str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]  # one experiment
    mlflow = store.client(f"sqlite:///{db}")
    assert len(mlflow.search_runs([outs[0][0].strip()])) == 2


def test_a_postgresql_store_that_does_not_answer_is_one_line(tmp_path: Path, cli) -> None:
    """Nothing listens: refused within the connect timeout, one line, exit 2, the password nowhere; a sweep started
    on it starts nothing."""
    from tests.conftest import free_port

    uri = f"postgresql+psycopg2://ml:hunter2@127.0.0.1:{free_port()}/mlflow"
    done = cli("status", "x", "--tracking-uri", uri, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert "cannot reach postgresql+psycopg2://ml@127.0.0.1:" in done.stderr and "hunter2" not in done.stderr
    demo = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"
    done = cli("run", demo, "--set", f"tracking.uri={uri}", cwd=tmp_path)
    assert done.returncode == 2 and "cannot reach" in done.stderr and done.stderr.count("\n") == 1, done
    assert not (tmp_path / "results" / "digits-demo" / "tune").exists()


def test_a_plain_postgresql_uri_means_psycopg2_and_works(postgres) -> None:
    assert store.postgres_uri("postgresql://ml@db:5432/mlflow") == (
        "postgresql+psycopg2://ml@db:5432/mlflow?connect_timeout=5"
    )
    assert store.postgres_uri("postgres://ml@db/x?connect_timeout=2") == "postgresql+psycopg2://ml@db/x?connect_timeout=2"
    assert postgres.startswith("postgresql://")  # as a user writes it
    mlflow = store.client(store.connect(postgres))
    exp = store.experiment_id(mlflow, "plain-postgresql", postgres)
    assert mlflow.get_experiment(exp).name == "plain-postgresql"


def test_post_hoc_writes_leave_a_run_ended_as_the_sweep_left_it(tmp_path: Path) -> None:
    """What `evaluate`, `detect`, `report` and `promote` add to ended runs goes in, and each run keeps its status and
    end time even when an MLflow call in the block reopens it (as the fluent API does) and ends it again later."""
    import mlflow

    uri = store.resolve_uri(None, tmp_path)
    client = store.client(uri)
    exp = client.create_experiment("posthoc")
    run = client.create_run(exp)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=run.info.start_time + 11_800)
    ended = client.get_run(run.info.run_id).info
    with store.fluent(uri), store.as_ended(client, run.info.run_id):
        with mlflow.start_run(run_id=run.info.run_id):  # reopened: RUNNING, then ended again now
            mlflow.log_metric("test_top1", 0.97)
        time.sleep(0.01)
        assert client.get_run(run.info.run_id).info.end_time != ended.end_time  # what the guard is for
    after = client.get_run(run.info.run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", ended.end_time)
    assert after.data.metrics["test_top1"] == 0.97
