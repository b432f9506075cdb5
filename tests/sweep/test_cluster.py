"""A team's cluster on this machine, as a lab runs it across machines: a Ray head and a second node (``ray start
--address``, its own CPUs, temp folder and scratch disk) with Ray 2.60's token authentication, an S3-compatible
object store (moto's server) for Ray Tune's storage, and MLflow's basic-auth tracking server on PostgreSQL. Every
server is started and stopped here, on 127.0.0.1. The drivers reach the head by HOST:PORT (or its job server's
URL), as a driver on another machine does; the trials never see the driver's ``results/``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep import store
from sweep.export import load_table
from tests.conftest import SCRIPTED_ENV, free_port, scripted_spec
from tests.scripted import best_weights
from tests.sweep.test_tracking_server import tracking_server

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
BIN = Path(sys.executable).parent
PASSWORD = "s3cret-Pa55word-only-in-the-environment"
AWS = {
    "AWS_ACCESS_KEY_ID": "sweep-test",
    "AWS_SECRET_ACCESS_KEY": "aws-s3cret-key-in-the-env",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "sweeps"
SMALL = ["budget.max_concurrent=2", "fixed.epoch_s=0.4"]


def wait_for(check, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (a token-protected route says 401)
    except OSError:
        return False


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@dataclass
class Cluster:
    port: int
    jobs_url: str
    env: dict[str, str]
    """A driver's environment: the head's token in its home, the tracking and object-store credentials."""
    scratch: dict[str, Path]
    """Each node's own disk (``SWEEP_SCRATCH``): ``head`` and ``node2``."""
    node_ids: dict[str, str]
    endpoint: str
    tracking_url: str
    artifact_store: Path
    procs: dict[str, subprocess.Popen]

    def kill(self, node: str) -> None:
        os.killpg(self.procs[node].pid, signal.SIGKILL)  # the node's raylet, object store and workers: kill -9


def ray_start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "ray"), "start", *args, "--block"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    home = base / "home"
    home.mkdir()
    procs: dict[str, subprocess.Popen] = {}
    s3_port = free_port()
    procs["moto"] = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {
        **os.environ,
        **AWS,
        **SCRIPTED_ENV,  # the nodes and the drivers know the tests' scripted trainer
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this environment's
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        "RAY_health_check_period_ms": "500",  # a killed node is declared dead in ~2 s, not ~15 s
        "RAY_health_check_failure_threshold": "4",
    }
    # a head that has a token turns Ray's token authentication on; every other node and driver must present it
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    scratch = {n: base / f"scratch-{n}" for n in ("head", "node2")}
    temps = [tempfile.mkdtemp(prefix=f"ray{n}", dir="/tmp") for n in ("h", "n")]  # short: socket paths
    port, dash = free_port(), free_port()
    head_args = [
        "--head",
        f"--port={port}",
        "--num-cpus=1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={temps[0]}",
        *own_ports(),
    ]
    try:
        # the head starts while the tracking server does
        procs["head"] = ray_start(head_args, {**env, "SWEEP_SCRATCH": str(scratch["head"])})
        with tracking_server(postgres, base / "artifact-store", PASSWORD) as server:
            wait_for(lambda: listening(s3_port), "moto")
            import boto3

            keys = {k.lower(): v for k, v in AWS.items() if "KEY" in k}
            boto3.client("s3", endpoint_url=endpoint, **keys).create_bucket(Bucket=BUCKET)
            wait_for(lambda: listening(port) and answers(f"http://127.0.0.1:{dash}/api/version"), "the Ray head")
            node_args = [f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--temp-dir={temps[1]}", *own_ports()]
            node_env = {**env, "SWEEP_SCRATCH": str(scratch["node2"]), "RAY_AUTH_MODE": "token"}
            procs["node2"] = ray_start(node_args, node_env)
            nodes = node_list(port, env)
            jobs_url = f"http://127.0.0.1:{dash}"
            yield Cluster(port, jobs_url, env, scratch, nodes, endpoint, server.url, server.store, procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def own_ports() -> list[str]:
    """Free ports for a node's agents: Ray's defaults (52365, ...) may be held by another Ray on this machine (the
    test session's own), and a head whose job agent cannot bind takes no job."""
    flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")
    flags += ("metrics-export-port",)
    return [f"--{flag}={free_port()}" for flag in flags]


def node_list(port: int, env: dict[str, str]) -> dict[str, str]:
    """Once both nodes joined: their ids by role."""
    probe = (
        "import json, time, ray\n"
        f"ray.init(address='127.0.0.1:{port}', logging_level='ERROR')\n"
        "for _ in range(120):\n"
        "    alive = [n for n in ray.nodes() if n['Alive']]\n"
        "    if len(alive) == 2: break\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps({('head' if 'node:__internal_head__' in n['Resources'] else 'node2'): n['NodeID']"
        " for n in alive}))\n"
    )
    env = {**env, "RAY_AUTH_MODE": "token"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(nodes) == {"head", "node2"}, done.stdout + done.stderr
    return nodes


def as_driver(monkeypatch, cluster: Cluster, **changes: str) -> None:
    """This process as one of the team's drivers: the cluster's environment (token home, credentials)."""
    for key in ("HOME", *AWS, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, changes.get(key, cluster.env[key]))
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):  # a fresh driver's, not what this process's own Ray set
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def tracking_login(monkeypatch) -> None:
    """This process reads the tracking server back as the team's user."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)


def test_refusals_are_one_line_and_start_nothing(cluster: Cluster, tmp_path: Path, cli, monkeypatch) -> None:
    """A wrong port, a driver without the head's token, an object store that is not there (or has no such bucket),
    a wrong tracking password: each is one line and exit 2, before any trial (the CLI in this process: each is
    refused before Ray starts)."""
    stranger = tmp_path / "no-token-home"
    stranger.mkdir()
    cases = [
        ("--address", f"127.0.0.1:{free_port()}"),
        ("--address", f"127.0.0.1:{cluster.port}"),
        ("--storage", f"s3://{BUCKET}/x", "--set", f"storage.endpoint=http://127.0.0.1:{free_port()}"),
        ("--storage", "s3://no-such-bucket/x", "--set", f"storage.endpoint={cluster.endpoint}"),
        ("--set", f"tracking.uri={cluster.tracking_url}"),
    ]
    expected = [
        "nothing answers there",
        "auth_token",
        "cannot reach the object store",
        "bucket 'no-such-bucket' does not exist",
        "refused the credentials",
    ]
    spec = scripted_spec(tmp_path, *SMALL)
    for i, (case, words) in enumerate(zip(cases, expected, strict=True)):
        as_driver(monkeypatch, cluster, **({"HOME": str(stranger)} if i == 1 else {}))
        if i == 4:
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
        done = cli("run", spec, *case, "--set", f"name=refused{i}", cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, (case, done)
        assert "Traceback" not in done.stderr and not (tmp_path / "results" / f"refused{i}" / "tune").exists()


def runs(cluster: Cluster, name: str) -> list:
    mlflow = store.client(cluster.tracking_url)
    exp = mlflow.get_experiment_by_name(name)
    return mlflow.search_runs([exp.experiment_id]) if exp else []


def job_client(cluster: Cluster, cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """A ``sweep`` job command in a process of its own, as on a team member's machine: Ray keeps the token it first
    read for the life of a process, and this one's talks to the session's own Ray."""
    cmd = [sys.executable, "-m", "sweep", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=cluster.env, capture_output=True, text=True, timeout=300)


def test_submit_runs_a_sweep_on_the_cluster_stop_ends_it_and_resume_finishes(cluster: Cluster, tmp_path: Path) -> None:
    """``sweep submit`` uploads the folder with the spec; the driver runs on the head (its records in
    ``--cluster-results`` there). ``sweep stop`` ends the job mid-trial with no run left RUNNING, and ``sweep submit
    --resume`` runs the sweep to completion."""
    spec = scripted_spec(
        tmp_path,
        *SMALL,
        "name=job",
        "budget.trials=2",
        "fixed.epochs=12",
        f"storage.endpoint={cluster.endpoint}",
        f"tracking.uri={cluster.tracking_url}",
    )
    jobs = ["--address", cluster.jobs_url]
    args = [spec.name, *jobs, "--cluster-results", tmp_path / "on-the-cluster", "--storage", f"s3://{BUCKET}/jobs"]
    done = job_client(cluster, tmp_path, "submit", *args)
    assert done.returncode == 0 and "submitted job-" in done.stdout, done
    first = done.stdout.split()[1]

    def training() -> bool:
        trials = [r for r in runs(cluster, "job") if "sweep.trial_id" in r.data.tags]
        return any(r.data.metrics.get("val_top1") is not None for r in trials)

    wait_for(training, "a trial of the job to report an epoch", 180)
    stopped = job_client(cluster, tmp_path, "stop", "job", *jobs)
    assert stopped.returncode == 0 and f"{first}: STOPPED" in stopped.stdout, stopped
    states = {r.info.run_name: r.info.status for r in runs(cluster, "job")}
    assert "RUNNING" not in states.values() and "KILLED" in states.values(), states

    done = job_client(cluster, tmp_path, "submit", "--resume", *args)
    assert done.returncode == 0, done
    follow = job_client(cluster, tmp_path, "logs", "job", *jobs, "--follow")  # the sweep's latest job
    assert follow.returncode == 0, follow
    assert "joined the Ray cluster at auto: 2 nodes" in follow.stdout, follow
    assert "2 of 2 trials · 2 completed" in follow.stdout, follow
    listed = job_client(cluster, tmp_path, "jobs", *jobs)
    assert f"{first} | job     | STOPPED" in listed.stdout and "SUCCEEDED" in listed.stdout, listed
    again = job_client(cluster, tmp_path, "stop", "job", *jobs)
    assert again.returncode == 2 and "already ended (SUCCEEDED); nothing to stop" in again.stderr, again
    assert not (tmp_path / "results").exists()  # the driver ran on the cluster, not here
    assert (tmp_path / "on-the-cluster" / "job" / "sweep.json").exists()
    for run in (r for r in runs(cluster, "job") if "sweep.trial_id" in r.data.tags):
        steps = [m.step for m in store.client(cluster.tracking_url).get_metric_history(run.info.run_id, "val_top1")]
        assert steps == list(range(1, 13)), steps  # the resumed job went on from the checkpoints, nothing twice


def test_two_nodes_object_store_and_a_killed_node(cluster: Cluster, tmp_path: Path) -> None:
    """Trials on both nodes, checkpoints in the object store, records on the authenticated server; the second
    node is killed (-9) mid-trial and its trial goes on from its last checkpoint on the head. The driver is a
    process of its own, on the cluster's address, as on a team member's machine."""
    name = "two-nodes"
    spec = scripted_spec(
        tmp_path,
        *SMALL,
        f"name={name}",
        "budget.trials=2",
        "fixed.epochs=8",
        f"storage.endpoint={cluster.endpoint}",
        f"tracking.uri={cluster.tracking_url}",
    )
    args = ["run", str(spec), "--address", f"127.0.0.1:{cluster.port}", "--storage", f"s3://{BUCKET}/team"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "sweep", *args, "--results", str(tmp_path / "results")],
        cwd=tmp_path,
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    import boto3

    s3 = boto3.client("s3", endpoint_url=cluster.endpoint, **{k.lower(): v for k, v in AWS.items() if "KEY" in k})
    node_trials = cluster.scratch["node2"] / name / "trials"

    def checkpointed_on_node2() -> bool:
        assert driver.poll() is None, driver.stdout.read()
        started = [p.name for p in node_trials.glob("*")] if node_trials.exists() else []
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"team/{name}/tune/").get("Contents", [])
        return any(f"/tune/{t}/checkpoint_" in o["Key"] for t in started for o in listed)

    wait_for(checkpointed_on_node2, "a checkpoint of a trial on the second node", 180)
    moved = next(p.name for p in node_trials.glob("*"))
    cluster.kill("node2")
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out[-4000:]
    assert f"joined the Ray cluster at 127.0.0.1:{cluster.port}: 2 nodes, 2 CPUs" in out
    assert "2 of 2 trials · 2 completed" in out, out[-3000:]
    assert PASSWORD not in out and AWS["AWS_SECRET_ACCESS_KEY"] not in out

    # the trials kept nothing in the driver's results/: their folders are on the nodes, their state in the store
    kept = {p.name for p in (tmp_path / "results" / name).iterdir()}
    assert not kept & {"tune", "trials", "cache"} and "sweep.json" in kept, kept
    assert (cluster.scratch["head"] / name / "trials" / moved).is_dir()  # where it went on
    for path in (tmp_path / "results").rglob("*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path

    table = load_table(name, cluster.tracking_url)
    assert len(table.frame) == 2 and table.frame["val_top1"].notna().all()
    mlflow = store.client(cluster.tracking_url)
    trials = {r.data.tags["sweep.trial"]: r for r in runs(cluster, name) if "sweep.trial_id" in r.data.tags}
    assert len(trials) == 2
    run = trials[moved]  # its folders are named by its tNN
    assert run.data.tags["sweep.retries"] == "1" and int(run.data.tags["sweep.resumed_after_epoch"]) >= 1
    assert run.data.tags["sweep.nodes"] == f"{cluster.node_ids['node2']},{cluster.node_ids['head']}"  # both nodes
    assert {r.data.tags["sweep.node_id"] for r in trials.values()} == {cluster.node_ids["head"]}
    for r in trials.values():
        assert r.info.status == "FINISHED" and r.data.tags["sweep.state"] == "completed"
        assert PASSWORD not in str(r.data.params) + str(r.data.tags)
        steps = sorted(m.step for m in mlflow.get_metric_history(r.info.run_id, "val_top1"))
        assert steps == list(range(1, 9)), steps  # every epoch once: the retry went on after its checkpoint
    best = mlflow.download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path))
    held = best_weights(Path(best))  # the best epoch's file, read back through the tracking server
    assert held["epoch"] == run.data.metrics["best_epoch"] and held["metrics"]["val_top1"] == pytest.approx(
        run.data.metrics["best_val_top1"]
    )
    assert list(cluster.artifact_store.rglob("best.pt"))
