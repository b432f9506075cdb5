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
from typing import Any, ClassVar

from pydantic import BaseModel

from trainers.base import ListReporter, Reporter, Trainer, TrialParams, TrialResult
from trainers.classifier.config import ClassifierData, ClassifierHParams, ClassifierModel
from trainers.detector.config import DETECTOR_METRICS, DetectorData, DetectorHParams, DetectorModel
from trainers.mmdet.config import MmdetHParams, MmdetModel
from trainers.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class TrainerEntry:
    """A trainer's schemas, where its implementation lives and what else it can do: each capability is a
    ``module:function`` imported only when used (validating a spec imports no torch), None where the trainer has
    none. ``sweep`` asks the entry (:meth:`capability`) and never branches on a trainer's name, so a new trainer is
    its package plus one registration."""

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
    features: str | None = None
    """``module:function(weights, dataset, cache_dir) -> (features, labels, classes)``: the best model's
    penultimate-layer features on the test part (the report's t-SNE map)."""
    test_pictures: str | None = None
    """``module:function(dataset, n) -> [Path]``: test pictures the report draws the best model's detections on
    (with ``detect``)."""
    proposals: bool = False
    """``detect`` can draw the first stage's proposals beside the final predictions."""

    CAPABILITIES: ClassVar[dict[str, str]] = {
        "evaluate": "test evaluation (sweep evaluate)",
        "preflight": "data check before the sweep",
        "servable": "servable model (sweep promote)",
        "detect": "detections to draw (sweep detect)",
        "features": "feature extraction",
        "test_pictures": "test pictures",
    }
    """Each capability and what it is called in a message."""

    def load(self) -> Trainer:
        trainer: Trainer = _resolve(self.impl)()
        return trainer

    def has(self, capability: str) -> bool:
        return getattr(self, capability) is not None

    def capability(self, name: str) -> Callable[..., Any]:
        """The function behind capability ``name``; a trainer without it is one line saying so."""
        if name not in self.CAPABILITIES:
            raise ValueError(f"no trainer capability '{name}' ({', '.join(self.CAPABILITIES)})")
        path = getattr(self, name)
        if path is None:
            raise UnknownNameError(f"this trainer has no {self.CAPABILITIES[name]}")
        return _resolve(path)  # type: ignore[no-any-return]

    def served(self) -> Callable[..., Any]:
        return self.capability("servable")

    def evaluator(self) -> Callable[..., dict[str, float]]:
        return self.capability("evaluate")


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
        features="trainers.classifier.report:features",
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
        test_pictures="trainers.detector.data:test_pictures",
        proposals=True,
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
        test_pictures="trainers.detector.data:test_pictures",
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
