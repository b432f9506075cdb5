"""Ctrl-C and kill -9 of the driver mid-sweep; ``sweep run --resume`` finishes it with exactly budget.trials trials."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep import store
from tests.sweep.conftest import QUICK, ROOT

pytestmark = pytest.mark.e2e
SPEC = str(ROOT / "search_spaces" / "demo.yaml")
# Long enough that the sweep is still going when the test kills it (warm workers make trials quick).
TRIALS = 8
ARGS = [a for o in [*QUICK, f"budget.trials={TRIALS}", "fixed.epochs=8", "dataset.image_size=16"] for a in ("--set", o)]


def finished(uri: str, name: str, base: Path) -> int:
    if not (base / "results" / name / "sweep.json").exists():
        return 0  # the driver has not finished creating the store yet: do not race its migrations
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        return 0
    runs = mlflow.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial' and attributes.status = 'FINISHED'")
    return len(runs)


def kill_tree(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # Ray's own daemons of that driver may have left the group; stop what is left of them.
    subprocess.run(["pkill", "-9", "-f", f"ray.*{proc.pid}"], check=False)


def start(tmp_path: Path, *extra: str, log: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", "run", SPEC, *ARGS, *extra],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=open(tmp_path / log, "w"),  # noqa: SIM115 (the child writes it until it ends)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_finished(proc: subprocess.Popen, uri: str, tmp_path: Path, at_least: int, log: str) -> None:
    deadline = time.monotonic() + 240
    while finished(uri, "digits-demo", tmp_path) < at_least:
        assert proc.poll() is None, (tmp_path / log).read_text()[-3000:]
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.5)


def test_ctrl_c_then_kill_9_then_resume_finishes_exactly_the_budget(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it): Ray Tune stops and saves the sweep,
    the parent and the interrupted trials end KILLED, exit 130. ``--resume``; then the resumed driver is killed
    with -9 mid-sweep; ``--resume`` again finishes with exactly budget.trials trials, nothing run twice."""
    uri = store.resolve_uri(None, tmp_path)
    proc = start(tmp_path, log="first.log")
    wait_finished(proc, uri, tmp_path, 1, "first.log")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
    out = (tmp_path / "first.log").read_text()
    assert "continue with: sweep run" in out and "--resume" in out and "Traceback" not in out

    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name("digits-demo")
    runs = mlflow.search_runs([exp.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = store.parent_runs(mlflow, exp.experiment_id, "digits-demo")[0]
    assert parent.info.status == "KILLED"
    interrupted = [r for r in runs if r.data.tags.get("sweep.state") == "interrupted"]
    assert all(r.info.status == "KILLED" for r in interrupted)

    before = finished(uri, "digits-demo", tmp_path)
    proc = start(tmp_path, "--resume", log="second.log")
    wait_finished(proc, uri, tmp_path, before + 1, "second.log")
    kill_tree(proc)
    assert finished(uri, "digits-demo", tmp_path) < TRIALS

    resumed = subprocess.run(
        [sys.executable, "-m", "sweep", "run", SPEC, *ARGS, "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    parents = store.parent_runs(mlflow, exp.experiment_id, "digits-demo")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = store.trial_runs(mlflow, exp.experiment_id, parents[0].info.run_id)
    live = [r for r in runs if r.data.tags.get("sweep.state") != "orphaned"]
    assert len(live) == TRIALS, [(r.data.tags.get("sweep.trial_id"), r.data.tags.get("sweep.state")) for r in runs]
    assert len({r.data.tags["sweep.trial_id"] for r in live}) == TRIALS
    assert all(r.info.status == "FINISHED" for r in live)
    assert all(r.info.status == "FAILED" for r in runs if r not in live)
    for run in live:
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_top1")]
        assert steps == list(range(1, len(steps) + 1)), steps  # nothing logged twice
    # Every trial has its folder; a trial the killed driver created after Ray last saved its state may have left
    # one too (its run is marked orphaned above).
    trial_dirs = {p.name for p in (tmp_path / "results" / "digits-demo" / "tune").iterdir() if p.is_dir()}
    assert {r.data.tags["sweep.trial_id"] for r in live} <= trial_dirs
    # The Optuna study holds exactly the sweep's trials, each told its best epoch; a trial the killed driver
    # had asked for but Ray never saved is marked failed and orphaned, never left running.
    import optuna

    study = optuna.load_study(
        study_name="digits-demo", storage=f"sqlite:///{tmp_path / 'results/digits-demo/optuna.db'}"
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs["sweep.orphaned"] for t in others)
    best = {
        r.data.tags["sweep.trial_id"]: max(m.value for m in mlflow.get_metric_history(r.info.run_id, "val_top1"))
        for r in live
    }
    assert {t.user_attrs["sweep.trial_id"]: t.value for t in done} == pytest.approx(best)
