"""One epoch of detector training, and one evaluation pass (``train_one_epoch`` / ``evaluate``, as in
torchvision's detection references)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from torch import nn

from trainers.classifier.engine import Precision
from trainers.detector.metrics import DetectionEvaluator
from trainers.lifecycle import DivergenceGuard

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def _to(device: torch.device, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> Batch:
    return [i.to(device, non_blocking=True) for i in images], [
        {k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets
    ]


def _terms(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    warmup: torch.optim.lr_scheduler.LRScheduler | None,
    precision: Precision,
    grad_clip: float = 0.0,
    guard: DivergenceGuard | None = None,
) -> dict[str, float]:
    """Train on every batch once; return the mean of the total loss and of each of its terms
    (``train_loss``, ``train_loss_rpn_box_reg``, ...). Raise :class:`Diverged` on a non-finite or
    exploded loss (``guard``)."""
    model.train()
    guard = guard or DivergenceGuard()
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for images, targets in batches:
        if not images:  # every image of the batch was unreadable
            continue
        images, targets = _to(precision.device, images, targets)
        with precision.autocast():
            losses = model(images, targets)
        loss = sum(losses.values())
        value = float(loss.item())  # type: ignore[union-attr]
        guard.check(value, count, partial(_terms, losses))
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        if grad_clip:
            precision.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        if warmup is not None:
            warmup.step()
        n = len(images)
        sums["train_loss"] += value * n
        for k, v in losses.items():
            sums[f"train_{k}"] += float(v.item()) * n
        count += n
    return {k: v / max(count, 1) for k, v in sums.items()}


def foreground(pred: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop label 0: RetinaNet, FCOS and SSD keep a background slot in their class logits that an
    untrained head can still rank."""
    keep = pred["labels"] > 0
    return {k: (v[keep].float() if v.is_floating_point() else v[keep]) for k, v in pred.items()}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    evaluator: DetectionEvaluator,
    precision: Precision,
) -> float:
    """Predict every batch into ``evaluator``; return the model's speed in images per second (forward
    passes only, not decoding or scoring)."""
    model.eval()
    seconds, images_seen = 0.0, 0
    for images, targets in batches:
        if not images:
            continue
        images, targets = _to(precision.device, images, targets)
        start = time.perf_counter()
        with precision.autocast():
            preds = model(images)
        if precision.device.type == "cuda":
            torch.cuda.synchronize(precision.device)
        seconds += time.perf_counter() - start
        images_seen += len(images)
        evaluator.update([foreground(p) for p in preds], targets)
    return images_seen / seconds if seconds else 0.0
