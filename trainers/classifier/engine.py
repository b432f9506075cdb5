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


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    precision: Precision,
    augment: v2.Compose | None,
    grad_clip: float = 0.0,
) -> float:
    """Train on every batch once; return the mean loss. Raise on a non-finite loss."""
    device = precision.device
    total, count = 0.0, 0
    for images, target in batches():
        x, y = to_input(images, device, augment), target.to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            loss = loss_fn(model(x), y)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"non-finite training loss ({loss.item()}) after {count} images")
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        if grad_clip:
            precision.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


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
