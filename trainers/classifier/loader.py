"""Batches for training: from the shared decoded cache, or by decoding files every epoch.

The cache holds every image decoded and resized once per sweep as uint8 in a memory-mapped file;
all trials and all epochs read it, and augmentation runs on tensors (on the GPU when there is one).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from trainers.base import InputError
from trainers.classifier.config import ClassifierHParams
from trainers.classifier.data import Splits, decode, readable

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def cache_key(splits: Splits, size: int) -> str:
    listing = (
        [str(s) for s in splits.sources]
        if splits.array is None
        else [hashlib.sha256(splits.array.tobytes()).hexdigest()]
    )
    return hashlib.sha256(json.dumps([size, listing]).encode()).hexdigest()[:20]


def decoded(splits: Splits, size: int, cache_dir: Path | None) -> tuple[torch.Tensor, np.ndarray]:
    """All images as a uint8 (N, 3, size, size) tensor and a mask of the readable ones.

    With ``cache_dir`` the tensor is a memory-mapped file built once (by whichever trial gets the
    lock first) and shared by every later trial; a corrupt image is a zero image, masked out.
    """
    if cache_dir is None:
        return _decode_all(splits, size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(splits, size)
    data, ok = cache_dir / f"{key}.u8", cache_dir / f"{key}.ok.npy"
    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ok.exists():
            images, mask = _decode_all(splits, size)
            _atomic_write(data, images.numpy().tobytes())
            np.save(ok.with_suffix(".tmp.npy"), mask)
            os.replace(ok.with_suffix(".tmp.npy"), ok)
    shape = (len(splits.sources), 3, size, size)
    mapped = np.memmap(data, dtype=np.uint8, mode="c", shape=shape)  # copy-on-write: shared pages, writable view
    return torch.from_numpy(mapped), np.load(ok)


def _decode_all(splits: Splits, size: int) -> tuple[torch.Tensor, np.ndarray]:
    images = torch.zeros((len(splits.sources), 3, size, size), dtype=torch.uint8)
    mask = np.zeros(len(splits.sources), dtype=bool)
    for i in range(len(splits.sources)):
        img = readable(splits, i, size)
        if img is not None:
            images[i], mask[i] = img, True
    return images, mask


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def augmenter(hp: ClassifierHParams, size: int) -> v2.Compose | None:
    """The training augmentation on float tensors, or None when every option is off."""
    steps: list[v2.Transform] = []
    if hp.random_resized_crop:
        steps.append(v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True))
    if hp.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if hp.color_jitter:
        j = hp.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if hp.rotation:
        steps.append(v2.RandomRotation(hp.rotation))
    return v2.Compose(steps) if steps else None


def to_input(batch: torch.Tensor, device: torch.device, augment: v2.Compose | None) -> torch.Tensor:
    """uint8 images → normalised float on ``device``, augmented per sample."""
    x = batch.to(device, non_blocking=True).float().div_(255)
    if augment is not None:
        x = torch.stack([augment(img) for img in x])
    return (x - MEAN.to(device)) / STD.to(device)


def cached_batches(
    images: torch.Tensor, labels: np.ndarray, idx: np.ndarray, batch_size: int, shuffle: bool, seed: int
) -> Batches:
    """Batches of (uint8 images, labels) from the decoded tensor; a new order each call when shuffling."""
    target = torch.from_numpy(labels)
    epoch = [0]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = idx
        if shuffle:
            order = idx[np.random.default_rng((seed, epoch[0])).permutation(len(idx))]
            epoch[0] += 1
        for start in range(0, len(order), batch_size):
            sel = torch.from_numpy(order[start : start + batch_size])
            yield images[sel], target[sel]

    return batches


class DecodingDataset(Dataset[tuple[torch.Tensor, int]]):
    """The usual path: decode and resize a file each time an item is read, then ``augment`` it (uint8), in the
    DataLoader's worker processes."""

    def __init__(self, splits: Splits, idx: np.ndarray, size: int, augment: v2.Compose | None = None) -> None:
        self.splits, self.idx, self.size, self.augment = splits, idx, size, augment

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.idx[i])
        image = decode(self.splits, j, self.size)
        return (self.augment(image) if self.augment is not None else image), int(self.splits.labels[j])


def decoding_batches(
    splits: Splits,
    idx: np.ndarray,
    size: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    augment: v2.Compose | None = None,
) -> Batches:
    """Batches through a DataLoader that decodes files every epoch (no cache); ``augment`` runs in its workers
    (persistent across epochs), beside the decoding, not in the training process."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        DecodingDataset(splits, idx, size, augment),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=gen,
        persistent_workers=workers > 0,
    )
    return lambda: iter(loader)


def require_images(mask: np.ndarray, splits: Splits) -> None:
    for part in ("train", "val"):
        if not mask[getattr(splits, part)].any():
            raise InputError(f"dataset: no readable images in the {part} part")
