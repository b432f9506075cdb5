"""A best-weights file as a model someone can call: images in, predictions out, preprocessing inside.

``sweep promote`` logs these with MLflow's PyTorch flavour; nothing here imports MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from trainers.classifier.loader import MEAN, STD


class ImageClassifier(nn.Module):
    """RGB images ``[N, 3, H, W]`` of any size with values 0–255 (uint8 or float) → class logits ``[N, C]``.
    The preprocessing the classifier trained with is inside: the centre square, resized to the training size
    (as :func:`trainers.classifier.data.decode` resizes the shorter side and crops), then the normalisation."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.register_buffer("mean", MEAN.reshape(1, 3, 1, 1).clone())
        self.register_buffer("std", STD.reshape(1, 3, 1, 1).clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        side = torch.sym_min(h, w)  # not min(): that would fix, when exported, which side is the shorter
        top, left = (h - side) // 2, (w - side) // 2
        # index_select, not a slice: an exported slice would fix whether it covers the whole side
        rows = torch.arange(side, device=images.device) + top
        cols = torch.arange(side, device=images.device) + left
        square = images.index_select(-2, rows).index_select(-1, cols).float()
        x = F.interpolate(square, size=(self.size, self.size), mode="bilinear", antialias=True) / 255
        return self.model((x - self.mean) / self.std)  # type: ignore[no-any-return]


class ImageDetector(nn.Module):
    """RGB images ``[N, 3, H, W]`` with values 0–255 → one dict per image: ``boxes`` (x1, y1, x2, y2 in pixels),
    ``labels`` (1-based class indices; 0 is background), ``scores``, and ``masks`` for Mask R-CNN."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.model([img.float() / 255 for img in images])  # type: ignore[no-any-return]


def classifier(weights: Path) -> tuple[nn.Module, dict[str, Any], np.ndarray]:
    """The classifier of a best-weights file, what it needs said about it, and an input example."""
    from trainers.classifier.trainer import load_classifier

    model, blob = load_classifier(weights)
    size = int(blob["image_size"])
    meta = {
        "arch": blob["arch"],
        "classes": list(blob["classes"]),
        "image_size": size,
        "input": "RGB 0-255, N x 3 x H x W, any size: the centre square is resized to image_size",
    }
    # two images, and sides unlike each other and the batch: an exported program would fix a dimension of 1 as
    # a constant, and dimensions of equal size as equal
    return ImageClassifier(model, size).eval(), meta, np.zeros((2, 3, size + 3, size + 5), dtype=np.float32)


def detector(weights: Path) -> tuple[nn.Module, dict[str, Any], np.ndarray]:
    """The detector of a best-weights file, what it needs said about it, and an input example."""
    from trainers.detector.models import load_detector

    model, blob = load_detector(weights)
    meta = {"arch": blob["arch"], "classes": list(blob["classes"]), "input": "RGB 0-255, N x 3 x H x W"}
    return ImageDetector(model).eval(), meta, np.zeros((1, 3, 128, 128), dtype=np.float32)
