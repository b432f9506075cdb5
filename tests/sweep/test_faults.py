"""A trial whose loss diverges ends with its reason, not retried (a killed worker: tests/sweep/test_cluster.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweep import store
from tests.sweep.conftest import QUICK, ROOT

pytestmark = pytest.mark.e2e


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
