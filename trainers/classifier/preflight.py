"""The checks the driver runs before a classifier sweep starts. Light on purpose: the data is listed and split
(no image decoded) and torch is imported only to load-check a weights file, so a sweep's driver pays neither
torch's import nor its teardown when its trials train from scratch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from trainers.base import InputError, typed
from trainers.classifier.config import ClassifierData, ClassifierModel
from trainers.classifier.data import load_splits


def preflight(
    dataset: BaseModel | Mapping[str, Any], model: BaseModel | Mapping[str, Any], weights: Sequence[str] = ()
) -> dict[str, int]:
    """Checks run in the driver before any trial starts: the data is there, has two classes or more and no
    empty one, both parts hold images; every weights source the trials may use (``weights``, default the
    model's) loads. Returns the split sizes."""
    dataset, model = typed(ClassifierData, dataset), typed(ClassifierModel, model)
    splits = load_splits(dataset)
    for part in ("train", "val"):
        if not len(getattr(splits, part)):
            raise InputError(f"dataset: the {part} part is empty; use more images or another val_fraction")
    for source in weights or (model.weights,):
        if source == "none":
            continue
        from trainers.classifier.models import imagenet_url
        from trainers.weights import check_file, hub_file

        check_file(hub_file(imagenet_url(model.arch)) if source == "imagenet" else source)
    return splits.sizes()
