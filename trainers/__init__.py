"""Trial bodies. Nothing here imports ray or mlflow.

``TRAINERS`` maps a spec's ``trainer`` name to its settings schemas and its implementation,
which is imported only when a trial runs (so validating a spec never imports torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel

from trainers.base import ListReporter, Reporter, Trainer, TrialParams, TrialResult
from trainers.classifier.config import ClassifierData, ClassifierHParams, ClassifierModel
from trainers.registry import Registry, UnknownNameError


@dataclass(frozen=True)
class TrainerEntry:
    """A trainer's schemas and where its implementation lives."""

    data: type[BaseModel]
    model: type[BaseModel]
    hparams: type[BaseModel]
    impl: str
    """``module:Class`` of the :class:`Trainer`."""

    def load(self) -> Trainer:
        module, _, cls = self.impl.partition(":")
        trainer: Trainer = getattr(importlib.import_module(module), cls)()
        return trainer


TRAINERS: Registry[TrainerEntry] = Registry("trainer")
TRAINERS.add(
    "classifier",
    TrainerEntry(ClassifierData, ClassifierModel, ClassifierHParams, "trainers.classifier.trainer:ClassifierTrainer"),
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
