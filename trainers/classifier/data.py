"""Datasets in their real on-disk layouts, split by the protocols the field uses.

Every dataset becomes a list of sources (file paths, or indices into an in-memory array) with labels,
split into train / val / test. Images are decoded and resized by :func:`decode`, the one function
both the cached and the uncached path use, so the two give bit-identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from trainers.base import InputError
from trainers.classifier.config import ClassifierData
from trainers.registry import Registry

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CALTECH101_URL = "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip"
CUB200_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"


@dataclass(frozen=True)
class Splits:
    """Sources and labels of each part; ``test`` is never seen by the search."""

    classes: list[str]
    sources: list[str | int]
    labels: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    array: np.ndarray | None = None
    """In-memory images (N, H, W) or (N, H, W, 3) uint8, when sources are indices."""

    def sizes(self) -> dict[str, int]:
        return {
            "data.n_train": len(self.train),
            "data.n_val": len(self.val),
            "data.n_test": len(self.test),
            "data.n_classes": len(self.classes),
        }


def decode(splits: Splits, index: int, size: int) -> torch.Tensor:
    """Image ``index`` as a uint8 (3, size, size) tensor: shorter side resized to ``size``, centre crop.

    Raises ``OSError`` for an unreadable or corrupt file.
    """
    source = splits.sources[index]
    if splits.array is not None:
        img = Image.fromarray(splits.array[int(source)])
    else:
        with Image.open(Path(str(source))) as f:
            f.load()
            img = f
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    import torch  # here, not at import: the driver's preflight splits the data without torch

    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


DATASETS: Registry = Registry("dataset")


def load_splits(cfg: ClassifierData) -> Splits:
    """List, label and split the dataset ``cfg`` names; raise :class:`InputError` when it is missing or empty."""
    classes, sources, labels, test_mask, array = DATASETS.get(cfg.name)(cfg)
    if not sources:
        raise InputError(f"dataset.root: no images found for '{cfg.name}' in {cfg.root}")
    labels = np.asarray(labels, dtype=np.int64)
    idx = np.arange(len(sources))
    trainval, test = idx[~test_mask], idx[test_mask]
    _check_classes(classes, labels[trainval], cfg)
    train, val = _stratified(trainval, labels[trainval], cfg.val_fraction, cfg.seed)
    return Splits(classes, sources, labels, np.sort(train), np.sort(val), np.sort(test), array)


def _check_classes(classes: list[str], labels: np.ndarray, cfg: ClassifierData) -> None:
    """A classifier needs two classes or more, each with training images: an empty class folder would be
    a class no trial can learn, and one class trains to a meaningless top-1 of 1.0."""
    counts = np.bincount(labels, minlength=len(classes))
    empty = [classes[c] for c in np.flatnonzero(counts == 0)]
    if empty:
        shown = ", ".join(f"'{c}'" for c in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise InputError(
            f"dataset.root: {len(empty)} class folder{'s' if len(empty) > 1 else ''} without training images in "
            f"{cfg.root}: {shown}; add images or remove the folder"
        )
    if len(classes) < 2:
        raise InputError(f"dataset.root: one class only ('{classes[0]}') in {cfg.root}; a classifier needs two or more")


def _stratified(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    a, b = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.asarray(a), np.asarray(b)


@DATASETS.register("digits")
def _digits(cfg: ClassifierData) -> tuple:
    """scikit-learn's 1,797 8×8 handwritten digits (0–16 grey levels), 20% stratified test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    array = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    _, test = _stratified(np.arange(len(labels)), labels, 0.2, cfg.seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[test] = True
    return [str(i) for i in range(10)], list(range(len(labels))), labels, mask, array


def _class_folders(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise InputError(f"dataset.root: {what} folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"dataset.root: {root} has no class folders")
    return folders


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@DATASETS.register("imagefolder")
def _imagefolder(cfg: ClassifierData) -> tuple:
    """``root/<class>/*.jpg``, or ``root/train/<class>`` + ``root/test/<class>`` when both exist."""
    root = Path(cfg.root or "")
    parts = {"train": root / "train", "test": root / "test"}
    if all(p.is_dir() for p in parts.values()):
        classes = [f.name for f in _class_folders(parts["train"], "train")]
        sources, labels, mask = [], [], []
        for part, folder in parts.items():
            for label, name in enumerate(classes):
                files = _images(folder / name) if (folder / name).is_dir() else []
                sources += files
                labels += [label] * len(files)
                mask += [part == "test"] * len(files)
        return classes, sources, labels, np.asarray(mask, dtype=bool), None
    folders = _class_folders(root, "imagefolder")
    sources, labels = _listed(folders)
    test_mask = np.zeros(len(labels), dtype=bool)
    if labels:
        test_mask[_stratified(np.arange(len(labels)), np.asarray(labels), 0.2, cfg.seed)[1]] = True
    return [f.name for f in folders], sources, labels, test_mask, None


def _listed(folders: list[Path]) -> tuple[list[Path], list[int]]:
    sources: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        files = _images(folder)
        sources += files
        labels += [label] * len(files)
    return sources, labels


@DATASETS.register("caltech101")
def _caltech101(cfg: ClassifierData) -> tuple:
    """``101_ObjectCategories/<class>/*.jpg``; ``train_per_class`` or stratified ``train_fraction``."""
    root = Path(cfg.root or "")
    if cfg.download and not _find(root, "101_ObjectCategories"):
        from torchvision.datasets import Caltech101

        Caltech101(str(root), download=True)
    tree = _find(root, "101_ObjectCategories")
    if tree is None:
        raise InputError(f"dataset.root: no 101_ObjectCategories folder in {root} (set download: true to fetch it)")
    folders = [
        f for f in _class_folders(tree, "101_ObjectCategories") if cfg.keep_background or f.name != "BACKGROUND_Google"
    ]
    sources, labels = _listed(folders)
    rng = np.random.default_rng(cfg.seed)
    mask = np.ones(len(labels), dtype=bool)
    labels_arr = np.asarray(labels)
    for c in range(len(folders)):
        members = rng.permutation(np.flatnonzero(labels_arr == c))
        n = cfg.protocol.train_per_class or round(len(members) * (cfg.protocol.train_fraction or 0))
        mask[members[:n]] = False
    return [f.name for f in folders], sources, labels, mask, None


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "caltech101" / name, root / "CUB_200_2011" / name):
        if candidate.is_dir() or candidate.is_file():
            return candidate
    return None


@DATASETS.register("cub200")
def _cub200(cfg: ClassifierData) -> tuple:
    """CUB-200-2011 with its official ``train_test_split.txt``."""
    root = Path(cfg.root or "")
    if cfg.download and not _find(root, "images.txt"):
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CUB200_URL, str(root))
    listing = _find(root, "images.txt")
    if listing is None:
        raise InputError(f"dataset.root: no CUB_200_2011/images.txt in {root} (set download: true to fetch it)")
    base = listing.parent
    images = dict(line.split() for line in _lines(base / "images.txt"))
    label_of = {k: int(v) - 1 for k, v in (line.split() for line in _lines(base / "image_class_labels.txt"))}
    is_train = {k: v == "1" for k, v in (line.split() for line in _lines(base / "train_test_split.txt"))}
    classes = [line.split(maxsplit=1)[1] for line in _lines(base / "classes.txt")]
    ids = sorted(images, key=int)
    sources = [base / "images" / images[i] for i in ids]
    return classes, sources, [label_of[i] for i in ids], np.asarray([not is_train[i] for i in ids]), None


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise InputError(f"dataset.root: CUB-200-2011 file missing: {path}") from None


def readable(splits: Splits, index: int, size: int) -> torch.Tensor | None:
    """:func:`decode`, or ``None`` for a corrupt or unreadable image (counted and skipped)."""
    try:
        return decode(splits, index, size)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
