"""The contract between the orchestrator and the body of one trial.

A trainer never imports ray or mlflow: it receives typed parameters and a ``Reporter``
and can be run from a plain Python session or a test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Scalar = int | float | str | bool


@dataclass(frozen=True)
class TrialParams:
    """Everything one trial needs, resolved: no defaults are filled in downstream."""

    dataset: Mapping[str, Any]
    """The spec's ``dataset`` block (name, root, image size, split options)."""
    model: Mapping[str, Any]
    """The spec's ``model`` block (architecture and weights source)."""
    hparams: Mapping[str, Any]
    """Fixed settings merged with the values the sampler chose for this trial."""
    work_dir: Path
    """A directory private to this trial (scratch files, best weights)."""
    resume_from: Path | None = None
    """A checkpoint directory this trial reported earlier; continue from it."""
    seed: int = 0
    """Seeds torch, numpy and the data order of this trial."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""
    threads: int = 1
    """CPU threads torch may use (the trial's CPU share)."""
    cache_dir: Path | None = None
    """Where decoded datasets are shared between the trials of a sweep; None keeps them in memory."""
    metric: str = ""
    """The metric the sweep optimizes (``mode`` says which way): the trainer keeps its best weights by it
    when it reports it; empty means the trainer's own choice."""
    mode: str = "max"


@dataclass
class TrialResult:
    """What a trial ends with: its best metrics and where its best weights are."""

    best_metrics: dict[str, float]
    epochs_run: int
    best_weights: Path | None = None
    info: dict[str, Scalar] = field(default_factory=dict)


@runtime_checkable
class Reporter(Protocol):
    """Receives a trial's progress; the orchestrator decides what to do with it."""

    def report(
        self,
        metrics: Mapping[str, float],
        checkpoint_dir: Path | None = None,
        info: Mapping[str, Scalar] | None = None,
    ) -> None:
        """Report one epoch's ``metrics`` (must include ``epoch``).

        ``checkpoint_dir`` holds the state to resume from after this epoch; ``info`` carries
        once-per-trial facts (data sizes, weight provenance) that become tags.
        The orchestrator may stop the trial here (early stopping) by raising.
        """
        ...


@runtime_checkable
class Trainer(Protocol):
    """One kind of trial body (classifier, detector, ...)."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        """Train, report every epoch, return the best result. Raise on failure."""
        ...


class ListReporter:
    """A reporter that keeps everything in memory: for tests and plain-Python runs."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.checkpoints: list[Path | None] = []
        self.info: dict[str, Scalar] = {}

    def report(
        self,
        metrics: Mapping[str, float],
        checkpoint_dir: Path | None = None,
        info: Mapping[str, Scalar] | None = None,
    ) -> None:
        self.metrics.append(dict(metrics))
        self.checkpoints.append(checkpoint_dir)
        self.info.update(info or {})


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite: the trial ends (no retry would fare better) with this reason."""


class InputError(ValueError):
    """A problem with what the user gave a trainer (data, weights, settings): shown as one line."""
