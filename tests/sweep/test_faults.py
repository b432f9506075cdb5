"""Real fault injection: kill -9 a trial's worker process mid-sweep."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep import store
from tests.sweep.conftest import QUICK, ROOT

pytestmark = pytest.mark.e2e


def reported_pids(tune_dir: Path) -> dict[str, tuple[int, int]]:
    """trial id → (pid of its worker, epochs it reported), from Ray's result.json files."""
    out = {}
    for result in tune_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines:
            out[result.parent.name] = (int(lines[-1]["pid"]), int(lines[-1]["epoch"]))
    return out


def test_killed_worker_is_retried_from_its_checkpoint_in_the_same_run(tmp_path: Path) -> None:
    overrides = [*QUICK, "budget.trials=2", "fixed.epochs=5", "scheduler.name=fifo", "budget.max_failures=2"]
    cmd = [sys.executable, "-m", "sweep", "run", str(ROOT / "search_spaces" / "demo.yaml")]
    cmd += [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    tune_dir = tmp_path / "results" / "digits-demo" / "tune"
    deadline = time.monotonic() + 240
    victim = None
    while victim is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no trial reported an epoch"
        running = {t: (pid, ep) for t, (pid, ep) in reported_pids(tune_dir).items() if 1 <= ep < 4}
        if running:
            victim = next(iter(running.items()))
        time.sleep(0.2)
    trial_id, (pid, _) = victim
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    mlflow = store.client(store.resolve_uri(None, tmp_path))
    exp = mlflow.get_experiment_by_name("digits-demo")
    parent = store.parent_runs(mlflow, exp.experiment_id, "digits-demo")[0]
    runs = store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)
    assert len(runs) == 2  # the retried trial continued its own run
    killed = next(r for r in runs if r.data.tags["sweep.trial_id"] == trial_id)
    assert killed.info.status == "FINISHED" and killed.data.tags["sweep.state"] == "completed"
    assert killed.data.tags["sweep.retries"] == "1"
    steps = [m.step for m in mlflow.get_metric_history(killed.info.run_id, "val_top1")]
    assert steps == [1, 2, 3, 4, 5]
    assert reported_pids(tune_dir)[trial_id][0] != pid  # finished by a new worker


def test_diverged_trial_ends_with_its_reason_and_no_retry(tmp_path: Path) -> None:
    """Non-finite loss: the trial is stopped and marked with the reason, not retried; the sweep goes on."""
    overrides = [
        *QUICK,
        "budget.trials=2",
        "budget.max_failures=2",
        "fixed.epochs=2",
        "scheduler.name=fifo",
        "sampler.name=grid",
        "search={lr: {type: categorical, choices: [0.05, 1.0e+30]}, optimizer: {type: categorical, choices: [adam]}}",
    ]
    cmd = [sys.executable, "-m", "sweep", "run", str(ROOT / "search_spaces" / "demo.yaml")]
    cmd += [a for o in overrides for a in ("--set", o)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"diverged in epoch 1: (non-finite|training loss exploded)", done.stdout), done.stdout

    mlflow = store.client(store.resolve_uri(None, tmp_path))
    exp = mlflow.get_experiment_by_name("digits-demo")
    parent = store.parent_runs(mlflow, exp.experiment_id, "digits-demo")[0]
    runs = {float(r.data.params["lr"]): r for r in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)}
    assert sorted(runs) == [0.05, 1e30]
    bad, good = runs[1e30], runs[0.05]
    assert bad.info.status == "FINISHED" and bad.data.tags["sweep.state"] == "diverged"
    assert re.match(r"diverged in epoch 1: (non-finite|training loss exploded)", bad.data.tags["sweep.stop_reason"])
    assert "sweep.retries" not in bad.data.tags  # ended, not retried
    assert good.data.tags["sweep.state"] == "completed"
    assert [m.step for m in mlflow.get_metric_history(good.info.run_id, "val_top1")] == [1, 2]
