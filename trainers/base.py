"""The contract between the orchestrator and the body of one trial.

A trainer never imports ray or mlflow: it receives typed parameters and a ``Reporter``
and can be run from a plain Python session or a test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar, runtime_checkable

from pydantic import AfterValidator, BaseModel

M = TypeVar("M", bound=BaseModel)
UserPath = Annotated[str, AfterValidator(os.path.expanduser)]
"""A path a user writes in a spec: ``~`` is expanded where it is parsed, once."""
Scalar = int | float | str | bool


@dataclass(frozen=True)
class TrialParams:
    """Everything one trial needs, resolved: no defaults are filled in downstream."""

    dataset: BaseModel | Mapping[str, Any]
    """The spec's ``dataset`` block (name, root, image size, split options), as the trainer's typed block."""
    model: BaseModel | Mapping[str, Any]
    """The spec's ``model`` block (architecture and weights source), as the trainer's typed block."""
    hparams: BaseModel | Mapping[str, Any]
    """Fixed settings merged with the values the sampler chose for this trial, as the trainer's typed
    parameters (a plain mapping is validated by the trainer, for use from Python)."""
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
    checkpoint_every_s: float = 0
    """Checkpoint the full state at least this often (0: every epoch); a new best is always checkpointed."""
    gpu_fraction: float = 1.0
    """The trial's share of its GPU (``resources.gpus_per_trial`` below 1). Ray places by it but does not limit
    memory; the trial caps its CUDA memory to this share so that trials packed on one GPU cannot starve each other."""


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
    """The training loss became NaN, infinite or exploded: the trial ends (no retry would fare better) with
    this reason."""


class UserError(Exception):
    """Base of every error that is the user's to fix (bad input, missing files, wrong names): the CLI
    prints it as one line and exits with code 2. ``sweep.errors.SweepError`` derives from it too."""


class InputError(UserError, ValueError):
    """A problem with what the user gave a trainer (data, weights, settings): shown as one line."""


def typed(cls: type[M], value: object) -> M:
    """``value`` as the settings block ``cls``: passed through when the spec already parsed it (a sweep),
    validated when it is a plain mapping (a trainer called from Python)."""
    return value if isinstance(value, cls) else cls.model_validate(value)


PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""The picture files a detector reads (VOC's JPEGImages, `sweep detect --images`)."""


def find_images(folder: Path, flag: str = "--images") -> list[Path]:
    """Every picture under ``folder``; none (or no folder) is one line naming ``flag``."""
    if not folder.is_dir():
        raise InputError(f"{flag}: folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICTURE_SUFFIXES)
    if not images:
        raise InputError(f"{flag}: no image ({', '.join(PICTURE_SUFFIXES)}) in {folder}")
    return images


def link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (instant, no copy), or a copy across file systems."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy(src, dest)
