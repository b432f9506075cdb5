"""Shared decoded cache vs. per-epoch PIL decoding, on generated JPEGs of Caltech-101-like sizes.

Measures, in one run on one machine so the ratios compare like with like:
- data loading images/s (decode + resize + to normalised tensor), per epoch, for both paths;
- the cache's one-time build cost (paid once per sweep, shared by every trial);
- training images/s of resnet18 (scratch, all layers) at 64 and 112 px for both paths.

    .venv/bin/python -m benchmarks.bench_data --images 600 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.publish import machine, publish
from trainers.classifier import loader
from trainers.classifier.config import ClassifierData
from trainers.classifier.data import load_splits
from trainers.classifier.engine import Precision, train_one_epoch
from trainers.classifier.models import build_model


def make_jpegs(root: Path, n: int, classes: int = 10, seed: int = 0) -> None:
    """Photos from scikit-image, randomly cropped and resized to Caltech-101's typical 200–300 px sides."""
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = Image.fromarray(photos[i % len(photos)])
        w, h = photo.size
        cw, ch = rng.integers(w // 3, w), rng.integers(h // 3, h)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        size = (int(rng.integers(200, 301)), int(rng.integers(150, 301)))
        img = photo.crop((int(x), int(y), int(x + cw), int(y + ch))).resize(size)
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"image_{i:04d}.jpg", quality=90)


def loading_rate(batches: loader.Batches, epochs: int = 2) -> float:
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in batches():
            loader.to_input(images, torch.device("cpu"), None)
            count += len(images)
    return count / (time.perf_counter() - start)


def training_rate(batches: loader.Batches, size: int, n_classes: int) -> float:
    torch.manual_seed(0)
    model, _ = build_model("resnet18", "none", n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    seen = sum(len(y) for _, y in batches())  # count without training
    start = time.perf_counter()
    train_one_epoch(model, batches, opt, torch.nn.CrossEntropyLoss(), Precision(torch.device("cpu"), False), None)
    return seen / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="60 images at 64 px: checks that it works")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.sizes = 60, [64]
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        make_jpegs(root, args.images)
        for size in args.sizes:
            cfg = ClassifierData(name="imagefolder", root=str(root), image_size=size, val_fraction=0.2)
            splits = load_splits(cfg)
            idx = np.sort(np.concatenate([splits.train, splits.val, splits.test]))
            start = time.perf_counter()
            images, _ = loader.decoded(splits, size, Path(tmp) / f"cache{size}")
            build_s = time.perf_counter() - start
            cached = loader.cached_batches(images, splits.labels, idx, 32, True, 0)
            decoding = loader.decoding_batches(splits, idx, size, 32, True, 0, 0)
            load_cached, load_decoding = loading_rate(cached), loading_rate(decoding)
            # Interleaved, best of two: the first epoch of a process pays warm-up costs.
            train_cached = train_decoding = 0.0
            for _ in range(2):
                train_cached = max(train_cached, training_rate(cached, size, len(splits.classes)))
                train_decoding = max(train_decoding, training_rate(decoding, size, len(splits.classes)))
            rows.append((size, build_s, load_decoding, load_cached, train_decoding, train_cached))
    lines = [
        "| px | cache build, once (s) | load img/s: PIL per epoch | load img/s: cache | ratio "
        "| resnet18 train img/s: PIL | resnet18 train img/s: cache | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, build_s, ld, lc, td, tc in rows:
        lines.append(
            f"| {size} | {build_s:.1f} | {ld:.0f} | {lc:.0f} | {lc / ld:.1f}× | {td:.1f} | {tc:.1f} | {tc / td:.2f}× |"
        )
    command = ".venv/bin/python -m benchmarks.bench_data" + (" --quick" if args.quick else f" --images {args.images}")
    detail = f"torch {torch.__version__}, {args.threads} threads, {args.images} JPEGs of 200–300 px sides"
    publish(
        "Shared decoded cache vs. per-epoch PIL decoding (`benchmarks/bench_data.py`)",
        command,
        machine(detail),
        [*lines, "", *NOTES],
        args.out,
    )


NOTES = [
    "- *load img/s*: decode (JPEG → PIL), resize and crop, to a normalised float tensor, per epoch. The",
    "  PIL path does this for every image every epoch (DataLoader, 0 workers: a trial's one CPU); the",
    "  cache reads uint8 from a memory-mapped file built once per sweep and shared by all its trials.",
    "- *cache build*: the one-time decode of every image, paid by the first trial of a sweep only.",
    "- *train img/s*: one epoch of resnet18 (scratch, all layers, SGD) fed by each path, best of two",
    "  interleaved runs. On this CPU the model dominates at larger sizes, so the gain there is smaller; on a",
    "  GPU, where the model step is fast, the loading rate is the ceiling.",
]

if __name__ == "__main__":
    main()
