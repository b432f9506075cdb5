"""A sweep assembled on Ray Tune: OptunaSearch with the spec's sampler, its scheduler, budget and resources, the
tracking and progress callbacks, the sweep's record; run or resumed. The Ray it runs on is :mod:`sweep.cluster`'s,
its trials :mod:`sweep.trial`'s."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep import journal, lock, records, storage, store, study
from sweep.cluster import LOG_FILE, check_address, check_resources, joined, start_ray
from sweep.errors import Fault, SweepError
from sweep.record import SweepRecord, find_record
from sweep.samplers import build_sampler, build_scheduler
from sweep.space import DefineByRun
from sweep.spec import Spec
from sweep.tags import (
    DATA_SPLIT_SEED,
    MAX_EPOCHS,
    METRIC,
    MODE,
    NAME,
    ROLE,
    SEARCHED,
    SEED,
    SPEC_HASH,
    TRAINER,
    TRIALS,
)
from sweep.trial import ended_trials, make_trainable, trial_dirname


def sweep_dir(results: Path, name: str) -> Path:
    return (results / name).resolve()


@dataclass(frozen=True)
class Outcome:
    """How a sweep ended, for the exit code: every trial ran, some errored, or it was interrupted."""

    grid: Any
    """Ray Tune's ResultGrid."""
    interrupted: bool
    errors: list[tuple[str, str]]
    """(trial id, one-line reason) of each errored trial."""
    log: Path
    """Ray's own log lines and tracebacks."""
    fault: Fault | None = None
    """Why the sweep stopped itself before its end (a full disk), when it did: resumable once that is fixed."""


def run_sweep(
    spec: Spec,
    results: Path = Path("results"),
    resume: bool = False,
    address: str | None = None,
    base: Path = Path("."),
) -> Outcome:
    """Run (or with ``resume``, continue) the sweep. Every check that can refuse it (the sweep's folder,
    its data and weights, the tracking store, the cluster's resources, another driver of the same sweep) runs
    before a trial starts."""
    with lock.held() as locks:
        return _run_sweep(spec, results, resume, address, base, locks)


def _run_sweep(spec: Spec, results: Path, resume: bool, address: str | None, base: Path, locks: list[int]) -> Outcome:
    root = sweep_dir(results, spec.name)
    if root.is_dir():  # nothing of a sweep another driver runs is read or touched
        locks.append(lock.acquire(root, spec.name))
    place = storage.resolve(spec.storage, root, spec.name)
    saved = find_record(spec.name, results) if resume else None
    if resume and saved is None:
        raise SweepError(f"--resume: no sweep '{spec.name}' in {root}; run it without --resume first")
    if saved is not None and saved.spec_hash != spec.digest:
        raise SweepError(f"--resume: the spec changed since '{spec.name}' started; resume with the same spec")
    if address:
        check_address(address)
    if spec.storage.uri:
        storage.check(place)
    if not resume and place.exists("tune"):
        raise SweepError(f"sweep '{spec.name}' already ran in {place.url}; continue it with --resume or rename it")
    entry = spec.entry
    sizes = {}
    if entry.has("preflight"):
        sizes = entry.capability("preflight")(spec.dataset, spec.model, spec.weight_sources())
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SweepError(f"--results: cannot create {root}: {e.strerror}") from None
    uri = store.connect(store.resolve_uri(spec.tracking.uri, base))
    mlflow = store.client(uri)
    try:
        exp_id = store.experiment_id(mlflow, spec.tracking.experiment or spec.name, uri)
    except Exception as e:  # nothing has started yet: refuse clearly rather than run untracked
        raise store.unreachable(uri, e) from None
    if not locks:  # a first start (nothing written yet): of two at once, the second is refused here
        locks.append(lock.acquire(root, spec.name))
        if not resume and place.exists("tune"):
            raise SweepError(f"sweep '{spec.name}' already ran in {place.url}; continue it with --resume or rename it")
    study_url = store.connect(study.storage_url(root, spec.tracking.study))
    study_storage = _study_storage(study_url, spec.name, resume)
    start_ray(address, root / LOG_FILE)
    check_resources(spec)
    if address:
        print(f"[{spec.name}] {joined(address)}", flush=True)
    from ray import tune

    if resume:  # before any record changes: a state no --resume can read is refused with nothing touched
        from sweep.repair import repair

        repair(place)  # a trial whose named checkpoint a killed driver left deleted goes on from its newest
    tags = common_tags(spec, base)  # once: it asks git for the commit
    dataset = dataset_info(spec, sizes)
    if saved is not None:
        parent_id = saved.parent_run_id
        mlflow.update_run(parent_id, status="RUNNING")
    else:
        parent_id = _new_parent(mlflow, exp_id, spec, tags, dataset)
        record = SweepRecord(parent_id, exp_id, spec.digest, store.redact(uri), store.redact(study_url), spec.raw)
        record.write(root)
    trainable = make_trainable(spec, place, ended_trials(mlflow, exp_id, parent_id) if resume else None)
    if resume:
        tuner = tune.Tuner.restore(
            place.tune_path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=place.filesystem(),
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=_tune_config(spec, study_storage),
            run_config=run_config(spec, root, place, uri, exp_id, parent_id, tags, dataset),
        )
    from sweep.errors import disk_full, out_of_space
    from sweep.interrupts import FAULT, INTERRUPTED, kept
    from sweep.tracking import last_line

    INTERRUPTED.clear()  # set only by a signal the command's handler (sweep.interrupts.handled) caught during fit
    FAULT.clear()  # or by a fault that stops the sweep (sweep.interrupts.stop_for)
    try:
        with kept():  # Tune installs handlers of its own inside fit(); the caller's are back after it
            grid = tuner.fit()
    except Exception as e:  # Tune's own write or read of its state: a full disk, an object store gone
        down = storage.gone(str(e), place) if spec.storage.uri else None
        full = disk_full(e) or out_of_space(root)  # or a file the full disk left empty, read back
        if not FAULT and not full and not down:
            raise
        # Tune ended the trials (and the tracking callback recorded them) before it failed: resumable
        fault = Fault.full_disk(root) if full else Fault.store_gone(down or place.url)
        fault = FAULT[0] if FAULT else fault
        return Outcome([], True, [], root / LOG_FILE, fault)
    if not INTERRUPTED.is_set():
        study.close_orphans(study_url, spec.name)
    errors = [(Path(r.path).name, last_line(str(r.error))) for r in grid if r.error is not None]  # type: ignore[attr-defined]
    return Outcome(grid, INTERRUPTED.is_set(), errors, root / LOG_FILE, FAULT[0] if FAULT else None)


def _study_storage(url: str, name: str, resume: bool) -> Any:
    """The study's storage; a fresh sweep starts a fresh study (a database shared with an earlier sweep of the
    same name keeps only this one's trials)."""
    import optuna

    try:
        storage = study.open_storage(url)
        if not resume and name in {s.study_name for s in storage.get_all_studies()}:
            optuna.delete_study(study_name=name, storage=storage)
    except Exception as e:
        raise SweepError(
            f"tracking.study: cannot use {store.redact(url)}: {store.redact(str(e).splitlines()[0][:200])}"
        ) from None
    return storage


def _tune_config(spec: Spec, storage: Any) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from sweep.searcher import BestEpochSearch

    multi = len(spec.metric.names) > 1
    searcher = BestEpochSearch(
        space=DefineByRun(spec.search),
        sampler=build_sampler(spec),
        max_epochs=spec.max_epochs,
        metric=spec.metric.names if multi else spec.metric.primary,
        mode=spec.metric.modes if multi else spec.metric.modes[0],
        study_name=spec.name,
        storage=storage,
    )
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
        scheduler=build_scheduler(spec),
        num_samples=spec.budget.trials,
        metric=None if multi else spec.metric.primary,
        mode=None if multi else spec.metric.modes[0],
        time_budget_s=spec.budget.time_budget_s,
        trial_dirname_creator=trial_dirname,
        reuse_actors=spec.resources.reuse_workers,
    )


def dataset_info(spec: Spec, sizes: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset as the runs' dataset input says it: name, root and the split sizes preflight counted."""
    data = spec.dataset.model_dump()
    return {
        "name": data["name"],
        "root": data.get("root") or "",
        **{k.removeprefix("data."): v for k, v in sizes.items()},
    }


def _context(spec: Spec, dataset: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "description": spec.description,
        "space": records.space_table(spec.search),
        "scheduler": spec.scheduler.name,
        "max_epochs": spec.max_epochs,
        "dataset": dict(dataset),
    }


def run_config(
    spec: Spec,
    root: Path,
    place: storage.Storage,
    uri: str,
    exp_id: str,
    parent_id: str,
    tags: Mapping[str, str],
    dataset: Mapping[str, Any],
    role: str = store.TRIAL,
    trials: int | None = None,
) -> Any:
    """Where Ray Tune keeps the run (``tune/`` in the sweep's storage; a re-run its own folder), its callbacks
    (MLflow, progress; their files in the driver's ``root``)."""
    from ray import tune

    params = {
        **spec.fixed,
        "model.arch": spec.model.model_dump().get("arch"),
        "model.weights": spec.model.model_dump().get("weights"),
        "dataset.name": spec.dataset.model_dump()["name"],
    }
    from sweep.progress import ProgressCallback
    from sweep.tracking import MlflowCallback

    callbacks = [
        MlflowCallback(
            uri,
            exp_id,
            parent_id,
            list(zip(spec.metric.names, spec.metric.modes, strict=True)),
            params,
            tags,
            spec.max_epochs,
            root / journal.pending_file(role, parent_id),
            spec.tracking.drain_s,
            {**_context(spec, dataset), "role": role},
            place,
        ),
        ProgressCallback(spec.name, spec.metric.primary, spec.metric.modes[0], trials or spec.budget.trials),
    ]
    if place.filesystem() is None and role == store.TRIAL:  # on an object store each upload is whole
        from sweep.repair import StateBackup

        callbacks.append(StateBackup(place.tune_path))
    return tune.RunConfig(
        name="tune" if role == store.TRIAL else f"{role}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage_path=place.path,
        storage_filesystem=place.filesystem(),
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
    )


def common_tags(spec: Spec, base: Path) -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags

    tags = {
        **resolve_tags(),  # mlflow.user, mlflow.source.*, as MLflow's fluent API sets them
        NAME: spec.name,
        SPEC_HASH: spec.digest,
        SEED: str(spec.seed),
        TRAINER: spec.trainer,
        DATA_SPLIT_SEED: str(spec.dataset.model_dump().get("seed", "")),
    }
    commit = store.git_commit(base)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _new_parent(mlflow: Any, exp_id: str, spec: Spec, common: Mapping[str, str], dataset: Mapping[str, Any]) -> str:
    from mlflow.entities import Param

    tags = {
        **common,
        ROLE: store.PARENT,
        METRIC: ",".join(spec.metric.names),
        MODE: ",".join(spec.metric.modes),
        SEARCHED: ",".join(spec.search),
        TRIALS: str(spec.budget.trials),
        MAX_EPOCHS: str(spec.max_epochs),
        "mlflow.note.content": "\n\n".join(filter(None, [spec.description, records.space_table(spec.search)])),
    }
    run = mlflow.create_run(exp_id, run_name=spec.name, tags=tags)
    mlflow.log_inputs(run.info.run_id, [records.dataset_input(dataset)])
    params = {
        "sampler": spec.sampler.name,
        "scheduler": spec.scheduler.name,
        "trials": spec.budget.trials,
        "max_concurrent": spec.budget.max_concurrent,
        "trainer": spec.trainer,
    }
    mlflow.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec.raw, indent=2, default=str))
        mlflow.log_artifact(run.info.run_id, str(path))
    return str(run.info.run_id)
