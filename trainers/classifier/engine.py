"""One epoch of training and one evaluation pass."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from trainers.classifier.loader import Batches, to_input
from trainers.lifecycle import DivergenceGuard


@dataclass
class Precision:
    """Mixed precision on CUDA: bf16 where the GPU has it, fp16 with loss scaling otherwise."""

    device: torch.device
    enabled: bool

    def __post_init__(self) -> None:
        self.enabled = self.enabled and self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self) -> torch.autocast | nullcontext[None]:
        return torch.autocast("cuda", dtype=self.dtype) if self.enabled else nullcontext()


@dataclass
class Accumulation:
    """Gradient accumulation that grows when memory runs out: each batch is split into ``steps``
    micro-batches whose gradients add up, so the effective batch size never changes."""

    steps: int = 1
    min_micro_batch: int = 1
    """Below this micro-batch size an out-of-memory error is final."""
    retries: int = 0

    def grow(self, batch_size: int, error: Exception) -> None:
        if batch_size // (self.steps * 2) < self.min_micro_batch:
            raise error
        self.steps *= 2
        self.retries += 1


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    precision: Precision,
    augment: v2.Compose | None,
    grad_clip: float = 0.0,
    accumulation: Accumulation | None = None,
    guard: DivergenceGuard | None = None,
) -> float:
    """Train on every batch once; return the mean loss. Raise :class:`Diverged` on a non-finite or
    exploded loss (``guard``).

    On an out-of-memory error the batch is redone in twice as many micro-batches (``accumulation``).
    """
    acc = accumulation or Accumulation()
    guard = guard or DivergenceGuard()
    total, count = 0.0, 0
    for images, target in batches():
        while True:
            try:
                loss = _step(model, images, target, optimizer, loss_fn, precision, augment, grad_clip, acc.steps)
                break
            except torch.OutOfMemoryError as e:
                optimizer.zero_grad(set_to_none=True)
                if precision.device.type == "cuda":
                    torch.cuda.empty_cache()
                acc.grow(len(target), e)
        guard.check(loss, count)
        total += loss * len(target)
        count += len(target)
    return total / max(count, 1)


def _step(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    precision: Precision,
    augment: v2.Compose | None,
    grad_clip: float,
    steps: int,
) -> float:
    """One optimizer step over a batch, as ``steps`` micro-batches; returns the batch's mean loss."""
    device = precision.device
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for imgs, tgt in zip(images.chunk(steps), target.chunk(steps), strict=True):
        x, y = to_input(imgs, device, augment), tgt.to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            loss = loss_fn(model(x), y) * (len(y) / len(target))
        if not math.isfinite(loss.item()):
            return float("nan")
        precision.scaler.scale(loss).backward()
        total += loss.item()
    if grad_clip:
        precision.scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return total


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, precision: Precision) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, the logits and the targets over every batch."""
    model.eval()
    device = precision.device
    logits, targets = [], []
    for images, target in batches():
        x = to_input(images, device, None)
        with precision.autocast():
            logits.append(model(x).float().cpu())
        targets.append(target)
    out, y = torch.cat(logits), torch.cat(targets)
    loss = nn.functional.cross_entropy(out, y).item()
    return loss, out.numpy(), y.numpy()


def topk(logits: np.ndarray, target: np.ndarray, k: int) -> float:
    """Fraction of samples whose target is among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((best == target[:, None]).any(axis=1).mean())
