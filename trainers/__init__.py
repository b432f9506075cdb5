"""Trial bodies. Nothing here imports ray or mlflow.

``TRAINERS`` maps a spec's ``trainer`` name to its settings schemas and its implementation,
which is imported only when a trial runs (so validating a spec never imports torch).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from trainers.base import ListReporter, Reporter, Trainer, TrialParams, TrialResult
from trainers.classifier.config import ClassifierData, ClassifierHParams, ClassifierModel
from trainers.detector.config import DETECTOR_METRICS, DetectorData, DetectorHParams, DetectorModel
from trainers.mmdet.config import MmdetHParams, MmdetModel
from trainers.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class TrainerEntry:
    """A trainer's schemas and where its implementation lives."""

    data: type[BaseModel]
    model: type[BaseModel]
    hparams: type[BaseModel]
    impl: str
    """``module:Class`` of the :class:`Trainer`."""
    evaluate: str | None = None
    """``module:function`` that scores a best-weights file on the test part, when the trainer has one."""
    preflight: str | None = None
    """``module:function(dataset, model)`` run in the driver before any trial: raises on missing data."""
    metrics: tuple[str, ...] = ()
    """The metrics each epoch's report holds, that a spec's ``metric`` may name."""
    servable: str | None = None
    """``module:function(best_weights) -> (module, metadata, input_example)``: the model as others call it."""
    detect: str | None = None
    """``module:function`` that draws a best-weights file's predictions on images (``sweep detect``)."""
    weights_file: str = "best.pt"
    """The best weights' file name (in the trial's folder and its run's ``checkpoints/``)."""

    def load(self) -> Trainer:
        trainer: Trainer = _resolve(self.impl)()
        return trainer

    def served(self) -> Callable[..., Any]:
        if self.servable is None:
            raise UnknownNameError("this trainer's models cannot be served yet")
        return _resolve(self.servable)

    def evaluator(self) -> Callable[..., dict[str, float]]:
        if self.evaluate is None:
            raise UnknownNameError("this trainer has no test evaluation")
        return _resolve(self.evaluate)  # type: ignore[no-any-return]


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


TRAINERS: Registry[TrainerEntry] = Registry("trainer")
TRAINERS.add(
    "classifier",
    TrainerEntry(
        ClassifierData,
        ClassifierModel,
        ClassifierHParams,
        "trainers.classifier.trainer:ClassifierTrainer",
        "trainers.classifier.report:evaluate_checkpoint",
        "trainers.classifier.preflight:preflight",
        ("val_top1", "val_top5", "val_loss", "train_loss"),
        "trainers.serving:classifier",
    ),
)
TRAINERS.add(
    "detector",
    TrainerEntry(
        DetectorData,
        DetectorModel,
        DetectorHParams,
        "trainers.detector.trainer:DetectorTrainer",
        "trainers.detector.report:evaluate_checkpoint",
        "trainers.detector.trainer:preflight",
        DETECTOR_METRICS,
        "trainers.serving:detector",
        "trainers.detector.report:detect_images",
    ),
)
TRAINERS.add(
    "mmdet",
    TrainerEntry(
        DetectorData,
        MmdetModel,
        MmdetHParams,
        "trainers.mmdet.trainer:MmdetTrainer",
        "trainers.mmdet.report:evaluate_checkpoint",
        "trainers.mmdet.trainer:preflight",
        DETECTOR_METRICS[:5] + ("train_loss",),
        detect="trainers.mmdet.report:detect_images",
        weights_file="best.pth",
    ),
)

__all__ = [
    "TRAINERS",
    "ListReporter",
    "Registry",
    "Reporter",
    "Trainer",
    "TrainerEntry",
    "TrialParams",
    "TrialResult",
    "UnknownNameError",
]


def load_plugins() -> None:
    """Trainers that live in other packages: ``SWEEP_TRAINER_MODULES`` names modules (comma-separated) that add
    theirs to :data:`TRAINERS` when imported (the tests' scripted trainer is one)."""
    for module in filter(None, (m.strip() for m in os.environ.get("SWEEP_TRAINER_MODULES", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"warning: SWEEP_TRAINER_MODULES: cannot import {module}: {e}", file=sys.stderr)


load_plugins()
