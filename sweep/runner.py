"""Run a sweep on Ray Tune: OptunaSearch with the spec's sampler, its scheduler, budget and resources."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep import tracking
from sweep.errors import SweepError
from sweep.progress import ProgressCallback
from sweep.samplers import build_sampler, build_scheduler
from sweep.space import DefineByRun
from sweep.spec import Spec
from sweep.tracking import STOP_REASON
from trainers import TRAINERS, TrialParams
from trainers.base import Diverged

# Ray writes its experiment state this often, so a killed driver loses at most this much.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _quiet() -> None:
    """Our progress lines are the output; the libraries' start-up chatter is not."""
    import warnings

    import mlflow  # noqa: F401  (configures its loggers on import; lower them after that)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares; shipped to the workers once."""

    trainer: str
    dataset: Mapping[str, Any]
    model: Mapping[str, Any]
    fixed: Mapping[str, Any]
    seed: int
    threads: int
    trials_dir: Path
    cache_dir: Path
    metrics: tuple[str, ...] = ()
    mode: str = "max"
    """The spec's metric names: a diverged trial reports them as NaN, which Optuna records as failed."""


class RayReporter:
    """A :class:`trainers.Reporter` that forwards to ``ray.tune.report``."""

    def __init__(self) -> None:
        self.epoch = 0

    def report(
        self, metrics: Mapping[str, float], checkpoint_dir: Path | None = None, info: Mapping[str, Any] | None = None
    ) -> None:
        from ray import tune

        self.epoch = int(metrics.get("epoch", self.epoch + 1))
        result = {**metrics, **{f"info/{k}": v for k, v in (info or {}).items()}}
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(result, checkpoint=checkpoint)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune trainable: one trial of the sweep, resumed from its checkpoint when Ray has one."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    work_dir = setup.trials_dir / trial_id
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = Path(tempfile.mkdtemp(dir=work_dir, prefix="resume-"))
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_from, dirs_exist_ok=True)
    params = TrialParams(
        dataset=setup.dataset,
        model=setup.model,
        hparams={**setup.fixed, **config},
        work_dir=work_dir,
        resume_from=resume_from,
        seed=setup.seed,
        threads=setup.threads,
        cache_dir=setup.cache_dir,
        metric=setup.metrics[0] if setup.metrics else "",
        mode=setup.mode,
    )
    reporter = RayReporter()
    try:
        TRAINERS.get(setup.trainer).load().fit(params, reporter)
    except Diverged as e:
        # Ended, not errored: a retry from the last checkpoint would diverge again. The NaN metric
        # makes Optuna record the trial as failed; the reason becomes the run's tag.
        epoch = reporter.epoch + 1
        nan = {name: float("nan") for name in setup.metrics}
        reporter.report({"epoch": epoch, **nan}, info={STOP_REASON: f"diverged in epoch {epoch}: {e}"})
    finally:
        if resume_from is not None:  # the trainer has read it; Ray keeps the checkpoint itself
            shutil.rmtree(resume_from, ignore_errors=True)


def sweep_dir(results: Path, name: str) -> Path:
    return (results / name).resolve()


def run_sweep(
    spec: Spec,
    results: Path = Path("results"),
    resume: bool = False,
    address: str | None = None,
    base: Path = Path("."),
) -> Any:
    """Run (or with ``resume``, continue) the sweep; return Ray's ResultGrid."""
    import ray
    from ray import tune

    _quiet()
    root = sweep_dir(results, spec.name)
    tune_dir = root / "tune"
    state_file = root / "sweep.json"
    if resume and not state_file.exists():
        raise SweepError(f"--resume: no sweep '{spec.name}' in {root}; run it without --resume first")
    if not resume and tune_dir.exists():
        raise SweepError(f"sweep '{spec.name}' already ran in {root}; continue it with --resume or rename it")
    if resume:
        saved = json.loads(state_file.read_text())
        if saved["spec_hash"] != spec.digest:
            raise SweepError(f"--resume: the spec changed since '{spec.name}' started; resume with the same spec")
    if spec.entry.preflight:
        _resolve_preflight(spec)
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking.resolve_uri(spec.tracking.uri, base)
    mlflow = tracking.client(uri)
    try:
        exp_id = tracking.experiment_id(mlflow, spec.tracking.experiment or spec.name, uri)
    except Exception as e:  # nothing has started yet: refuse clearly rather than run untracked
        raise SweepError(f"tracking.uri: cannot reach {tracking.redact(uri)}: {str(e).splitlines()[0][:200]}") from None
    tags = _common_tags(spec, base)  # once: it asks git for the commit
    parent_id = (
        json.loads(state_file.read_text())["parent_run_id"] if resume else _new_parent(mlflow, exp_id, spec, tags)
    )
    if not resume:
        _atomic_json(
            state_file,
            {
                "parent_run_id": parent_id,
                "experiment_id": exp_id,
                "spec_hash": spec.digest,
                "tracking_uri": tracking.redact(uri),
                "spec": spec.raw,
            },
        )
    setup = TrialSetup(
        spec.trainer,
        spec.dataset.model_dump(),
        spec.model.model_dump(),
        dict(spec.fixed),
        spec.seed,
        max(1, int(spec.resources.cpus_per_trial)),
        root / "trials",
        root / "cache",
        tuple(spec.metric.names),
        spec.metric.modes[0],
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=True,
        )
    if resume:
        tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, tune_config=_tune_config(spec), run_config=_run_config(spec, root, uri, exp_id, parent_id, tags)
        )
    return tuner.fit()


def _resolve_preflight(spec: Spec) -> None:
    """The trainer's checks of data and weights, before Ray starts or anything is written."""
    import importlib

    module, _, func = (spec.entry.preflight or "").partition(":")
    getattr(importlib.import_module(module), func)(spec.dataset.model_dump(), spec.model.model_dump())


def _tune_config(spec: Spec) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = len(spec.metric.names) > 1
    searcher = OptunaSearch(
        space=DefineByRun(spec.search),
        sampler=build_sampler(spec),
        metric=spec.metric.names if multi else spec.metric.primary,
        mode=spec.metric.modes if multi else spec.metric.modes[0],
    )
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
        scheduler=build_scheduler(spec),
        num_samples=spec.budget.trials,
        metric=None if multi else spec.metric.primary,
        mode=None if multi else spec.metric.modes[0],
        time_budget_s=spec.budget.time_budget_s,
        trial_dirname_creator=trial_dirname,
    )


def _run_config(spec: Spec, root: Path, uri: str, exp_id: str, parent_id: str, tags: Mapping[str, str]) -> Any:
    from ray import tune

    params = {
        **spec.fixed,
        "model.arch": spec.model.model_dump().get("arch"),
        "model.weights": spec.model.model_dump().get("weights"),
        "dataset.name": spec.dataset.model_dump()["name"],
    }
    callbacks = [
        tracking.MlflowCallback(
            uri,
            exp_id,
            parent_id,
            spec.metric.primary,
            spec.metric.modes[0],
            params,
            tags,
            spec.max_epochs,
            root / "tracking-pending.jsonl",
            spec.tracking.drain_s,
        ),
        ProgressCallback(spec.name, spec.metric.primary, spec.metric.modes[0], spec.budget.trials),
    ]
    return tune.RunConfig(
        name="tune",
        storage_path=str(root),
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
    )


def _common_tags(spec: Spec, base: Path) -> dict[str, str]:
    tags = {
        "sweep.name": spec.name,
        "sweep.spec_hash": spec.digest,
        "sweep.seed": str(spec.seed),
        "sweep.trainer": spec.trainer,
        "sweep.data_split_seed": str(spec.dataset.model_dump().get("seed", "")),
    }
    commit = tracking.git_commit(base)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _new_parent(mlflow: Any, exp_id: str, spec: Spec, common: Mapping[str, str]) -> str:
    from mlflow.entities import Param

    tags = {
        **common,
        "sweep.role": tracking.PARENT,
        "sweep.metric": ",".join(spec.metric.names),
        "sweep.mode": ",".join(spec.metric.modes),
        "sweep.searched": ",".join(spec.search),
        "sweep.trials": str(spec.budget.trials),
        "sweep.max_epochs": str(spec.max_epochs),
    }
    run = mlflow.create_run(exp_id, run_name=spec.name, tags=tags)
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


def _atomic_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
