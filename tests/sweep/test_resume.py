"""Ctrl-C and kill -9 of the driver mid-sweep; ``sweep run --resume`` finishes it with exactly budget.trials trials.

The driver is a process of its own here (the signals are the subject), on the scripted trainer (what is tested is
the orchestration: Ray Tune's saved state, the tracking records and the Optuna study). Each driver's Ray lives in
a temporary folder of the test's own (``RAY_TMPDIR``): what a kill -9 leaves of it is found there, by its ids."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sweep import store
from tests.conftest import scripted_spec, sweep_env

pytestmark = pytest.mark.e2e
TRIALS, EPOCHS = 4, 4
OVERRIDES = [
    f"budget.trials={TRIALS}",
    "budget.max_concurrent=1",
    f"fixed.epochs={EPOCHS}",
    "fixed.epoch_s=0.6",
    "fixed.peak_at=2",
    "sampler.n_startup_trials=2",
]


def finished(uri: str, name: str, base: Path) -> int:
    if not (base / "results" / name / "sweep.json").exists():
        return 0  # the driver has not finished creating the store yet: do not race its migrations
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        return 0
    runs = mlflow.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial' and attributes.status = 'FINISHED'")
    return len(runs)


class Driver:
    """``sweep run`` in a process group of its own, its Ray in ``ray_tmp``."""

    def __init__(self, base: Path, spec: Path, *extra: str, log: str, **env: str) -> None:
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rayr", dir="/tmp"))  # short: Ray's socket paths
        self.log = base / log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sweep", "run", str(spec), *extra],
            cwd=base,
            env=sweep_env(RAY_TMPDIR=str(self.ray_tmp), **env),
            stdout=open(self.log, "w"),  # noqa: SIM115 (the child writes it until it ends)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_finished(self, uri: str, base: Path, at_least: int, every_s: float = 0.1) -> None:
        deadline = time.monotonic() + 240
        while finished(uri, "scripted", base) < at_least:
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(every_s)

    def kill_9(self) -> None:
        """kill -9 of the driver's process group, then of the Ray daemons it started that left the group: each
        named by its pid in the session folder of this driver's Ray."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for pid in ray_pids(self.ray_tmp):
            if ours(pid, self.ray_tmp):  # that pid is still the worker (not reused since)
                os.kill(pid, signal.SIGKILL)


def ray_pids(ray_tmp: Path) -> set[int]:
    """The worker processes of the Ray sessions under ``ray_tmp``, the ones that leave the driver's process group
    (each starts a session of its own; Ray's daemons stay in the group): Ray names each worker's log file after
    its pid (``logs/worker-WORKER_ID-JOB_ID-PID.out``)."""
    pids = set()
    for path in ray_tmp.glob("ray/session_*/logs/worker-*.out"):
        tail = path.stem.rsplit("-", 1)[-1]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def test_ctrl_c_then_kill_9_right_after_a_trial_finished_then_resume(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it): Ray Tune stops and saves the sweep,
    the parent and the interrupted trial end KILLED, exit 130. ``--resume``; that driver is killed with -9 the
    moment a trial's run says it finished, before Ray saved that in its state; ``--resume`` again does not train
    that trial again (its run is left as it was), and finishes with exactly budget.trials trials, nothing twice."""
    uri = store.resolve_uri(None, tmp_path)
    spec = scripted_spec(tmp_path, *OVERRIDES)
    driver = Driver(tmp_path, spec, log="first.log")
    driver.wait_finished(uri, tmp_path, 1)
    os.killpg(driver.proc.pid, signal.SIGINT)
    assert driver.proc.wait(timeout=120) == 130, driver.output()[-3000:]
    out = driver.output()
    assert "continue with: sweep run" in out and "--resume" in out and "Traceback" not in out

    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name("scripted")
    runs = mlflow.search_runs([exp.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = store.parent_runs(mlflow, exp.experiment_id, "scripted")[0]
    assert parent.info.status == "KILLED"
    interrupted = [r for r in runs if r.data.tags.get("sweep.state") == "interrupted"]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)

    # Ray saves its state only when a checkpoint forces it; the last epochs, no new best (peak_at), report none, so
    # the state Ray saved last has the trial running when its run says it finished: kill at once.
    before = finished(uri, "scripted", tmp_path)
    driver = Driver(tmp_path, spec, "--resume", log="second.log", TUNE_GLOBAL_CHECKPOINT_S="600")
    driver.wait_finished(uri, tmp_path, before + 1)
    driver.kill_9()
    ended = {r.data.tags["sweep.trial_id"]: r for r in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)}
    ended = {t: r for t, r in ended.items() if r.info.status == "FINISHED"}
    trained = {t: trained_log(tmp_path, r.data.tags["sweep.trial"]) for t, r in ended.items()}
    assert before < len(ended) < TRIALS
    time.sleep(0.5)
    assert not [p for p in ray_pids(driver.ray_tmp) if ours(p, driver.ray_tmp)]  # nothing of that driver's Ray left

    resumed = Driver(tmp_path, spec, "--resume", log="third.log")
    assert resumed.proc.wait(timeout=600) == 0, resumed.output()[-3000:]
    assert "Traceback" not in resumed.output() and "UpdateFinishedTrialError" not in resumed.output()

    parents = store.parent_runs(mlflow, exp.experiment_id, "scripted")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = store.trial_runs(mlflow, exp.experiment_id, parents[0].info.run_id)
    live = [r for r in runs if r.data.tags.get("sweep.state") != "orphaned"]
    assert len(live) == TRIALS, [(r.data.tags.get("sweep.trial_id"), r.data.tags.get("sweep.state")) for r in runs]
    assert len({r.data.tags["sweep.trial_id"] for r in live}) == TRIALS
    numbers = [r.data.tags["sweep.trial"] for r in runs]  # one tNN each, none twice
    assert len(set(numbers)) == len(numbers), numbers
    assert all(r.info.run_name.startswith(r.data.tags["sweep.trial"] + " ") for r in runs)
    from sweep.export import load_table

    table = load_table("scripted", uri)  # what `status` shows first is the trial the parent names best
    assert f"({table.frame.iloc[0]['run']})" in parents[0].info.run_name
    assert all(r.info.status == "FINISHED" and r.data.tags["sweep.state"] == "completed" for r in live)
    assert all(r.info.status == "FAILED" for r in runs if r not in live)
    for run in live:
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_top1")]
        assert steps == list(range(1, EPOCHS + 1)), steps  # every epoch once: nothing logged twice, none missing
    now = {r.data.tags["sweep.trial_id"]: r for r in runs}
    for trial, old in ended.items():  # what had ended when the driver was killed is untouched: not started again
        assert (now[trial].info.end_time, now[trial].info.run_name) == (old.info.end_time, old.info.run_name)
        assert trained_log(tmp_path, now[trial].data.tags["sweep.trial"]) == trained[trial]
    # Every trial has its folder; a trial the killed driver created after Ray last saved its state may have left
    # one too (its run is marked orphaned above).
    trial_dirs = {p.name for p in (tmp_path / "results" / "scripted" / "tune").iterdir() if p.is_dir()}
    assert {r.data.tags["sweep.trial"] for r in live} <= trial_dirs  # named by their tNN
    # The Optuna study holds exactly the sweep's trials, each told its best epoch once; a trial the killed driver
    # had asked for but Ray never saved is marked failed and orphaned, never left running.
    import optuna

    study = optuna.load_study(study_name="scripted", storage=f"sqlite:///{tmp_path / 'results/scripted/optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs["sweep.orphaned"] for t in others)
    best = {
        r.data.tags["sweep.trial_id"]: max(m.value for m in mlflow.get_metric_history(r.info.run_id, "val_top1"))
        for r in live
    }
    assert {t.user_attrs["sweep.trial_id"]: t.value for t in done} == pytest.approx(best)
    named = {r.data.tags["sweep.trial"]: r.data.tags["sweep.trial_id"] for r in live}
    assert {t.user_attrs["sweep.trial"]: t.user_attrs["sweep.trial_id"] for t in done} == named  # one tNN each


def trained_log(base: Path, trial: str) -> list[str]:
    """The epochs trial ``tNN`` really trained, in order (the scripted trainer's log in its work folder)."""
    return (base / "results" / "scripted" / "trials" / trial / "trained.log").read_text().split()


def ours(pid: int, ray_tmp: Path) -> bool:
    """Whether ``pid`` is a live process of the Ray that runs in ``ray_tmp`` (its environment says so)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("RAY_TMPDIR") == str(ray_tmp)
    except psutil.Error:
        return False
