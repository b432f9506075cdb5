"""A trial whose loss diverges ends with its reason, not retried; a trial that raises errors, is retried as the
budget allows, and the sweep exits 1 with one line (a killed worker: tests/sweep/test_cluster.py); a full disk
stops the sweep, resumable, in one line."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweep import store
from tests.conftest import REQUIRE, Gate, free_port, scripted_spec, sets

pytestmark = pytest.mark.e2e
GRID = [
    "budget.trials=2",
    "budget.max_failures=2",
    "fixed.epochs=2",
    "sampler.name=grid",
    "search={lr: {type: categorical, choices: [0.05, 0.001]}}",
]


def trials(uri: str, name: str, key: str = "lr") -> dict[float, object]:
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(name)
    parent = store.parent_runs(mlflow, exp.experiment_id, name)[0]
    return {float(r.data.params[key]): r for r in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)}


def test_diverged_trial_ends_with_its_reason_and_no_retry(tmp_path: Path, cli, ray_session) -> None:
    """Non-finite loss in the second epoch of one trial: it is stopped and marked with the reason, not retried; the
    other trial completes and the sweep exits 0."""
    spec = scripted_spec(tmp_path, *GRID, "search={diverge_at: {type: categorical, choices: [0, 2]}}")
    done = cli("run", spec, cwd=tmp_path)
    assert done.returncode == 0, done
    assert "diverged in epoch 2: non-finite training loss" in done.stdout, done

    uri = store.resolve_uri(None, tmp_path)
    mlflow = store.client(uri)
    runs = trials(uri, "scripted", "diverge_at")
    bad, good = runs[2], runs[0]
    assert bad.info.status == "FINISHED" and bad.data.tags["sweep.state"] == "diverged"
    assert bad.data.tags["sweep.stop_reason"].startswith("diverged in epoch 2: non-finite training loss")
    assert "sweep.retries" not in bad.data.tags  # ended, not retried
    assert [m.step for m in mlflow.get_metric_history(bad.info.run_id, "train_loss")] == [1]
    assert good.data.tags["sweep.state"] == "completed"
    assert [m.step for m in mlflow.get_metric_history(good.info.run_id, "val_top1")] == [1, 2]


def test_errored_trials_exit_1_with_the_first_reason_and_no_traceback(tmp_path: Path, cli, ray_session) -> None:
    """Each trial raises in its first epoch, is retried ``max_failures`` times, then errors: the exit code says
    so, the terminal gets one line for it and Ray's tracebacks go to the sweep's log file; a trial that only fails
    on another lr completes."""
    spec = scripted_spec(tmp_path, *GRID, "budget.max_failures=1")
    done = cli("run", spec, *sets("fixed.fail_at=1"), cwd=tmp_path)
    assert done.returncode == 1, done
    assert "2 of 2 trials errored; first" in done.stderr and "scripted failure in epoch 1" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "Traceback" in (tmp_path / "results" / "scripted" / "ray.log").read_text()
    runs = trials(store.resolve_uri(None, tmp_path), "scripted")
    assert sorted(runs) == [0.001, 0.05]
    for run in runs.values():
        assert run.info.status == "FAILED" and run.data.tags["sweep.state"] == "errored"
        assert run.data.tags["sweep.retries"] == "1" and "scripted failure" in run.data.tags["sweep.error"]


def test_resume_after_the_state_names_a_deleted_checkpoint(tmp_path: Path, cli, ray_session) -> None:
    """A driver killed between Ray deleting a trial's older checkpoint and saving the state that names the newer one
    leaves a state pointing at a folder that is gone: ``--resume`` points the trial at the newest checkpoint its
    folder holds, and it goes on from there (no epoch redone, none missing). A state file cut short (a full disk) is
    replaced by its last whole copy; with none kept, ``--resume`` refuses in one line, nothing touched."""
    spec = scripted_spec(tmp_path, "budget={trials: 1, max_concurrent: 1, max_failures: 0, checkpoint_every_s: 0}")
    first = cli("run", spec, *sets("fixed.epochs=4", "fixed.fail_once_at=3"), cwd=tmp_path)
    assert first.returncode == 1, first  # errored in epoch 3, checkpointed after epoch 2
    trial_dir = next(p for p in (tmp_path / "results" / "scripted" / "tune").iterdir() if p.is_dir())
    [kept] = sorted(trial_dir.glob("checkpoint_*"))
    newer = kept.with_name(f"checkpoint_{int(kept.name.split('_')[1]) + 1:06d}")
    kept.rename(newer)  # the state names `kept`, which is gone; the folder holds a newer one
    # and the state itself cut short (Ray rewrites its files in place: a full disk): the last whole copies are used.
    # A searcher state cut short alone made Tune start the experiment over, and that run never ended.
    tune_dir = tmp_path / "results" / "scripted" / "tune"
    [state] = tune_dir.glob("experiment_state-*.json")
    [searcher] = tune_dir.glob("searcher-state-*.pkl")
    whole = state.with_name(state.name + ".whole")
    for cut in (state, searcher):
        assert cut.with_name(cut.name + ".whole").read_bytes() == cut.read_bytes()
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    whole.rename(whole.with_suffix(".aside"))
    refused = cli("run", spec, "--resume", *sets("fixed.epochs=4", "fixed.fail_once_at=3"), cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "is cut short" in refused.stderr, refused
    whole.with_suffix(".aside").rename(whole)
    resumed = cli("run", spec, "--resume", *sets("fixed.epochs=4", "fixed.fail_once_at=3"), cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming from its last whole copy" in resumed.stdout, resumed
    uri = store.resolve_uri(None, tmp_path)
    [run] = trials(uri, "scripted").values()
    assert run.info.status == "FINISHED" and run.data.tags["sweep.state"] == "completed"
    assert run.data.tags["sweep.resumed_after_epoch"] == "2"
    assert [m.step for m in store.client(uri).get_metric_history(run.info.run_id, "val_top1")] == [1, 2, 3, 4]


def test_the_same_sweep_started_twice_at_once_is_refused(tmp_path: Path, cli, ray_session) -> None:
    """While a sweep runs, a second start of it (with or without --resume) is one line naming the running one,
    exit 2; the running sweep ends as if alone: one parent run, every trial once."""
    import threading
    import time

    from sweep.cli import main

    spec = scripted_spec(tmp_path, "budget.trials=2", "fixed.epochs=4", "fixed.epoch_s=0.5")
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(main(["run", str(spec), "--results", "results"])))
    tmp_path.joinpath("results").mkdir()
    cli("validate", spec, cwd=tmp_path)  # the working folder of both
    first.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "results" / "scripted" / "sweep.json").exists():
        assert first.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    for extra in ((), ("--resume",)):
        second = cli("run", spec, *extra, cwd=tmp_path)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second
        assert "sweep 'scripted' is running already (process" in second.stderr, second
    first.join(timeout=300)
    assert codes == [0]
    uri = store.resolve_uri(None, tmp_path)
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name("scripted")
    [parent] = store.parent_runs(mlflow, exp.experiment_id, "scripted")
    runs = store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)
    assert len(runs) == 2 and all(r.data.tags["sweep.state"] == "completed" for r in runs)


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small RAM disk mounted at ``folder`` for the block (root only); skipped with one line where it cannot be."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        reason = f"cannot mount a {size} tmpfs here (needs root): {done.stderr.decode().strip()[:120]}"
        if os.environ.get(REQUIRE) == "1":  # CI runs as root: there the full-disk scenarios must run
            pytest.fail(f"{reason}; {REQUIRE}=1 requires it")
        pytest.skip(reason)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)  # lazy: this process may still hold a file open


def fill(disk: Path, most: int = 16 << 20) -> Path:
    """Write zeros to the RAM disk ``disk`` until it is full (never more than ``most`` bytes, and nothing once it
    is no longer mounted: a thread left running after the block must not fill the real disk under it)."""
    filler = disk / "filler"
    if not os.path.ismount(disk):
        return filler
    with contextlib.suppress(OSError), open(filler, "ab") as f:
        for _ in range(most // 65536):
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_disk_is_one_line_and_the_sweep_resumes_once_there_is_space(tmp_path: Path, cli, ray_session) -> None:
    """Results on a full disk: before anything started, exit 2 and one line naming the disk (no store left half
    built); full mid-sweep (the trials' checkpoints, Ray's state, the embedded store and the study all live there),
    the sweep stops as an interrupt does, one line, exit 1; space freed, ``--resume`` finishes it: every trial once,
    every epoch once."""
    with tmpfs(tmp_path / "disk", "3m") as disk:
        spec = scripted_spec(disk, "budget.trials=4", "fixed.epochs=4", "fixed.epoch_s=0.2")
        filler = fill(disk)
        refused = cli("run", spec, cwd=disk)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused
        assert "no space left on the disk of" in refused.stderr and not (disk / "mlruns.db").exists(), refused
        filler.unlink()

        def fill_after_an_epoch() -> None:
            deadline = time.monotonic() + 120
            while not list(disk.glob("results/scripted/tune/*/result.json")) and time.monotonic() < deadline:
                time.sleep(0.05)
            fill(disk)

        filling = threading.Thread(target=fill_after_an_epoch, daemon=True)
        filling.start()
        try:
            stopped = cli("run", spec, cwd=disk)
        finally:
            filling.join()
        assert stopped.returncode == 1 and stopped.stderr.count("\n") == 1, stopped
        assert "no space left on the disk of" in stopped.stderr and "sweep run" in stopped.stderr, stopped
        assert "--resume" in stopped.stderr and "Traceback" not in stopped.stdout + stopped.stderr, stopped
        filler.unlink()

        resumed = cli("run", spec, "--resume", cwd=disk)
        assert resumed.returncode == 0 and "4 of 4 trials · 4 completed" in resumed.stdout, resumed
        uri = store.resolve_uri(None, disk)
        mlflow = store.client(uri)
        runs = list(trials(uri, "scripted").values())
        assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_top1")] == [1, 2, 3, 4]


def test_the_object_store_gone_mid_sweep_is_one_line_and_the_sweep_resumes(
    tmp_path: Path, cli, monkeypatch, ray_session
) -> None:
    """Checkpoints on an S3 object store (moto's server, behind a gate the test shuts): once a trial checkpointed,
    the store stops answering; the sweep stops as an interrupt does, exit 1, one line naming the store and the
    ``--resume`` that continues it, nothing RUNNING. The store back, ``--resume`` finishes every trial, every epoch
    once."""
    import sys

    import boto3

    keys = {"AWS_ACCESS_KEY_ID": "sweep-test", "AWS_SECRET_ACCESS_KEY": "k", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in keys.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    moto = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                s3.create_bucket(Bucket="sweeps")
                break
            except Exception:
                assert moto.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.2)
        gate = Gate(port).open()
        spec = scripted_spec(
            tmp_path,
            "budget.trials=2",
            "fixed.epochs=4",
            "fixed.epoch_s=0.3",
            f"storage.endpoint=http://127.0.0.1:{gate.port}",
        )

        def shut_after_a_checkpoint() -> None:
            while time.monotonic() < deadline + 120:
                listed = s3.list_objects_v2(Bucket="sweeps", Prefix="x/scripted/tune/").get("Contents", [])
                if any("/checkpoint_" in o["Key"] for o in listed):
                    break
                time.sleep(0.05)
            gate.shut()

        shutting = threading.Thread(target=shut_after_a_checkpoint)
        shutting.start()
        stopped = cli("run", spec, "--storage", "s3://sweeps/x", cwd=tmp_path)
        shutting.join()
        assert stopped.returncode == 1 and "Traceback" not in stopped.stdout + stopped.stderr, stopped
        last = stopped.stderr.strip().splitlines()[-1]
        named = f"the object store at http://127.0.0.1:{gate.port} (s3://sweeps/x/scripted) does not answer"
        assert named in last and "--resume" in last, last
        uri = store.resolve_uri(None, tmp_path)
        mlflow = store.client(uri)
        exp = mlflow.get_experiment_by_name("scripted")
        assert not [r for r in mlflow.search_runs([exp.experiment_id]) if r.info.status == "RUNNING"]

        gate.open()
        resumed = cli("run", spec, "--storage", "s3://sweeps/x", "--resume", cwd=tmp_path)
        assert resumed.returncode == 0 and "2 of 2 trials · 2 completed" in resumed.stdout, resumed
        runs = list(trials(uri, "scripted").values())
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        for run in runs:
            assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_top1")] == [1, 2, 3, 4]
    finally:
        os.killpg(moto.pid, signal.SIGKILL)
        moto.wait(timeout=30)
