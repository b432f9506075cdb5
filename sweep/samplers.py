"""Optuna samplers by name, and Ray Tune schedulers by name: builders in explicit tables."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainers.registry import Registry

if TYPE_CHECKING:
    import optuna
    from ray.tune.schedulers import TrialScheduler

    from sweep.spec import Spec

SAMPLERS: Registry[Callable[[Spec], optuna.samplers.BaseSampler]] = Registry("sampler")
SCHEDULERS: Registry[Callable[[Spec], TrialScheduler]] = Registry("scheduler")


def build_sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    return picklable(SAMPLERS.get(spec.sampler.name)(spec))


def build_scheduler(spec: Spec) -> TrialScheduler:
    return SCHEDULERS.get(spec.scheduler.name)(spec)


class PicklableLock:
    """A ``threading.Lock`` that pickles (as a new, unlocked one). Ray Tune pickles the searcher, and with it the
    sampler, into its experiment state (for ``--resume``); optuna 5.1's genetic samplers hold a plain lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()


def picklable(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """``sampler`` with its thread lock (if it has one) replaced by a :class:`PicklableLock`."""
    if isinstance(getattr(sampler, "_thread_lock", None), type(threading.Lock())):
        sampler._thread_lock = PicklableLock()  # type: ignore[attr-defined]
    return sampler


def _startup(spec: Spec) -> dict[str, Any]:
    n = spec.sampler.n_startup_trials
    return {} if n is None else {"n_startup_trials": n}


@SAMPLERS.register("tpe")
def _tpe(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    # multivariate + group: TPE models conditional (define-by-run) parameters jointly per sub-space.
    return optuna.samplers.TPESampler(seed=spec.sampler.seed, multivariate=True, group=True, **_startup(spec))


@SAMPLERS.register("random")
def _random(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=spec.sampler.seed)


@SAMPLERS.register("grid")
def _grid(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    space = {name: p.grid() for name, p in spec.search.items()}
    return optuna.samplers.GridSampler(space, seed=spec.sampler.seed)  # type: ignore[arg-type]


@SAMPLERS.register("cmaes")
def _cmaes(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=spec.sampler.seed, **_startup(spec))


@SAMPLERS.register("qmc")
def _qmc(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.QMCSampler(seed=spec.sampler.seed)


@SAMPLERS.register("gp")
def _gp(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=spec.sampler.seed, **_startup(spec))


@SAMPLERS.register("nsga2")
def _nsga2(spec: Spec) -> optuna.samplers.BaseSampler:
    import optuna

    return picklable(optuna.samplers.NSGAIISampler(seed=spec.sampler.seed))


@SCHEDULERS.register("asha")
def _asha(spec: Spec) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=spec.max_epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


@SCHEDULERS.register("hyperband")
def _hyperband(spec: Spec) -> TrialScheduler:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(
        time_attr="training_iteration", max_t=spec.max_epochs, reduction_factor=spec.scheduler.reduction_factor
    )


@SCHEDULERS.register("median")
def _median(spec: Spec) -> TrialScheduler:
    from ray.tune.schedulers import MedianStoppingRule

    s = spec.scheduler
    return MedianStoppingRule(
        time_attr="training_iteration", grace_period=s.grace_period, min_samples_required=s.min_samples_required
    )


@SCHEDULERS.register("fifo")
def _fifo(spec: Spec) -> TrialScheduler:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()
