"""One trial on a Ray worker: the Ray Tune trainable around a trainer's ``fit`` (its work folder, its checkpoint to
resume from, the node it runs on, a diverged loss as an end rather than an error), and what every trial of a sweep
shares (:class:`TrialSetup`, shipped to the workers once)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sweep import records, storage, store
from sweep.journal import ended_for_good
from sweep.records import RERUN_KEYS, flat_config
from sweep.spec import Spec
from sweep.tags import EPOCHS_RUN, HOST, NODE_ID, RESUMED_AFTER, STOP_REASON, TRIAL_ID
from trainers import TrainerEntry, TrialParams
from trainers.base import Diverged


def trial_dirname(trial: Any) -> str:
    """A trial's folder (its TensorBoard run, checkpoints, and its work folder under ``trials/``): its ``tNN``, a
    re-run's ``t09-seed2``; Ray's id where neither is known."""
    config = flat_config(trial.config)
    if "rerun_of_run" in config:
        return f"{config['rerun_of_run']}-seed{config.get('rerun_seed')}"
    number = records.NUMBERS.get(trial.trial_id)
    return records.trial_number(number) if number else str(trial.trial_id)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares; shipped to the workers once."""

    name: str
    trainer: TrainerEntry
    """Resolved in the driver: a worker needs no registry lookup (a trainer registered at run time works too)."""
    dataset: BaseModel
    model: BaseModel
    fixed: Mapping[str, Any]
    seed: int
    threads: int
    trials_dir: Path | None
    """None: this node's own scratch folder (storage on an object store)."""
    cache_dir: Path | None
    metrics: tuple[str, ...] = ()
    mode: str = "max"
    """The spec's metric names: a diverged trial reports them as NaN, which Optuna records as failed."""
    checkpoint_every_s: float = 0
    gpu_fraction: float = 1.0
    finished: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Trials the records say ended (``--resume`` after a kill that came before Ray saved that): each one's last
    epoch, reported again at once instead of training again."""


class RayReporter:
    """A :class:`trainers.Reporter` that forwards to ``ray.tune.report``."""

    def __init__(self, node: Mapping[str, str] | None = None) -> None:
        self.epoch = 0
        self.node = dict(node or {})
        """Where the trial runs, reported once with its first result (again after a retry on another node)."""

    def report(
        self, metrics: Mapping[str, float], checkpoint_dir: Path | None = None, info: Mapping[str, Any] | None = None
    ) -> None:
        from ray import tune

        self.epoch = int(metrics.get("epoch", self.epoch + 1))
        facts, self.node = {**self.node, **(info or {})}, {}
        result = {**metrics, **{f"info/{k}": v for k, v in facts.items()}}
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(result, checkpoint=checkpoint)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune trainable: one trial of the sweep, resumed from its checkpoint when Ray has one."""
    from ray import tune

    from sweep.storage import scratch

    trial_id = tune.get_context().get_trial_id()
    if trial_id in setup.finished:  # it ended before the driver died: its end again, nothing trained twice
        tune.report(dict(setup.finished[trial_id]))
        return
    trials_dir = setup.trials_dir or scratch() / setup.name / "trials"
    work_dir = trials_dir / Path(tune.get_context().get_trial_dir()).name  # tNN, as the trial's Tune folder
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    checkpoint = tune.get_checkpoint()
    node = ray_node()
    if checkpoint is not None:
        resume_from = Path(tempfile.mkdtemp(dir=work_dir, prefix="resume-"))
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_from, dirs_exist_ok=True)
        saved = resume_from / "lifecycle.json"
        if saved.exists():  # a retry (or --resume) goes on from this epoch, not from the start
            node[RESUMED_AFTER] = str(json.loads(saved.read_text())["epoch"])
    entry = setup.trainer
    config = flat_config(config)
    sampled = {k: v for k, v in config.items() if k not in RERUN_KEYS}
    params = TrialParams(
        dataset=setup.dataset,
        model=setup.model,
        hparams=entry.hparams.model_validate({**setup.fixed, **sampled}),
        work_dir=work_dir,
        resume_from=resume_from,
        seed=int(config.get("rerun_seed", setup.seed)),
        threads=setup.threads,
        cache_dir=setup.cache_dir or scratch() / "cache",
        metric=setup.metrics[0] if setup.metrics else "",
        mode=setup.mode,
        checkpoint_every_s=setup.checkpoint_every_s,
        gpu_fraction=setup.gpu_fraction,
    )
    reporter = RayReporter(node)
    import ray

    gpus = ray.get_gpu_ids()
    if gpus:  # Ray placed the trial by its GPU share: training on the CPU instead would be a silent lie
        problem = gpu_problem(gpus, node)
        if problem:
            raise RuntimeError(problem)
        params = dataclasses.replace(params, device="cuda")
    try:
        entry.load().fit(params, reporter)
    except Diverged as e:
        # Ended, not errored: a retry from the last checkpoint would diverge again. The NaN metric
        # makes Optuna record the trial as failed; the reason becomes the run's tag.
        epoch = reporter.epoch + 1
        nan = {name: float("nan") for name in setup.metrics}
        reporter.report({"epoch": epoch, **nan}, info={STOP_REASON: f"diverged in epoch {epoch}: {e}"})
    finally:
        if resume_from is not None:  # the trainer has read it; Ray keeps the checkpoint itself
            shutil.rmtree(resume_from, ignore_errors=True)


def gpu_problem(gpu_ids: list[Any], node: Mapping[str, str], cuda: bool | None = None) -> str | None:
    """Why a trial that Ray gave ``gpu_ids`` cannot use them (CUDA unusable on its node), or None. ``cuda``: whether
    CUDA works here (asked of torch when None)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return None
    where = f"{node.get(HOST, '?')} (Ray node {node.get(NODE_ID, '?')[:12]})"
    return (
        f"Ray gave this trial GPU {','.join(map(str, gpu_ids))} on {where}, but CUDA is not usable there "
        "(no driver, or a CPU-only torch); fix that node or set resources.gpus_per_trial: 0"
    )


def ray_node() -> dict[str, str]:
    """The Ray node and host a trial runs on, as its run's tags."""
    import socket

    import ray

    return {NODE_ID: ray.get_runtime_context().get_node_id(), HOST: socket.gethostname()}


def ended_trials(mlflow: Any, exp_id: str, parent_id: str) -> dict[str, dict[str, Any]]:
    """The trials whose runs say they ended for good: trial id → the last epoch's metrics (what Ray's result of that
    epoch held)."""
    ended: dict[str, dict[str, Any]] = {}
    for run in store.trial_runs(mlflow, exp_id, parent_id):
        tags = run.data.tags
        if ended_for_good(run):
            epoch = int(tags[EPOCHS_RUN])
            metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith(("best_", "test_"))}
            reason = {f"info/{STOP_REASON}": tags[STOP_REASON]} if STOP_REASON in tags else {}
            ended[tags[TRIAL_ID]] = {**metrics, "epoch": float(epoch), **reason}
    return ended


def make_trainable(
    spec: Spec, place: storage.Storage, finished: Mapping[str, Mapping[str, Any]] | None = None
) -> Any:
    """The Ray Tune trainable of the sweep's trials, with their share of the cluster."""
    from ray import tune

    setup = TrialSetup(
        spec.name,
        spec.entry,
        spec.dataset,
        spec.model,
        dict(spec.fixed),
        spec.seed,
        max(1, int(spec.resources.cpus_per_trial)),
        place.trials_dir,
        place.cache_dir,
        tuple(spec.metric.names),
        spec.metric.modes[0],
        # HyperBand pauses trials at each rung and continues them from their last checkpoint
        0 if spec.scheduler.name == "hyperband" else spec.budget.checkpoint_every_s,
        spec.resources.gpus_per_trial if 0 < spec.resources.gpus_per_trial < 1 else 1.0,
        dict(finished or {}),
    )
    return tune.with_resources(
        tune.with_parameters(run_trial, setup=setup),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )
