"""Detection datasets in their real on-disk formats: Pascal VOC (VOCdevkit, or one VOC-layout folder of
your own classes, as annotation tools export it) and COCO-format JSON.

Everything becomes a list of :class:`Record` (image path, boxes, labels, ``difficult`` flags, where the
instance masks are); :class:`DetectionSet` turns records into the tensors torchvision's detectors take.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from trainers.base import PICTURE_SUFFIXES, InputError
from trainers.detector.config import CocoPart, DetectorData


@dataclass(frozen=True)
class Record:
    """One image and its objects. Boxes are ``x1, y1, x2, y2`` in continuous pixel coordinates:
    VOC's 1-based inclusive ``xmin..xmax`` becomes ``xmin - 1 .. xmax``, so a plain IoU equals the
    VOC devkit's ``+1`` IoU."""

    image: Path
    boxes: np.ndarray
    names: tuple[str, ...]
    difficult: np.ndarray
    mask_file: Path | None = None
    """VOC: the SegmentationObject PNG (object ``i`` of the XML is pixel value ``i + 1``)."""
    mask_index: np.ndarray | None = None
    """VOC: each object's value in ``mask_file``."""
    segmentation: tuple[Any, ...] | None = None
    """COCO: each object's polygons or RLE."""
    size: tuple[int, int] = (0, 0)
    """(height, width) as the annotation states it."""

    @property
    def has_masks(self) -> bool:
        return self.mask_file is not None or self.segmentation is not None


@dataclass
class Splits:
    """Train / val (carved from train, seeded) / test records and the class names (label ``i + 1``)."""

    classes: list[str]
    train: list[Record]
    val: list[Record]
    test: list[Record]
    skipped: dict[str, int] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {
            "data.n_train": len(self.train),
            "data.n_val": len(self.val),
            "data.n_test": len(self.test),
            "data.n_classes": len(self.classes),
            **{f"data.n_skipped_{k}": v for k, v in self.skipped.items()},
        }


# ---------------------------------------------------------------------------------------------- VOC


def voc_root(root: Path) -> Path:
    """Accept the VOCdevkit folder or the folder holding it."""
    return root / "VOCdevkit" if (root / "VOCdevkit").is_dir() else root


def parse_voc_xml(path: Path) -> tuple[str | None, tuple[int, int], list[tuple[str, list[float], bool]]]:
    """(filename, (height, width), [(name, [x1, y1, x2, y2], difficult)]) of one annotation file."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    hw = (0, 0)
    if size is not None:
        hw = (int(float(size.findtext("height", "0"))), int(float(size.findtext("width", "0"))))
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"an object without <bndbox> in {path}")
        xmin, ymin, xmax, ymax = (float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(((obj.findtext("name") or "").strip(), [xmin - 1, ymin - 1, xmax, ymax], difficult))
    return root.findtext("filename"), hw, objects


def _voc_part(root: Path, part: str, where: str) -> tuple[Path, list[str]]:
    """The folder of a part and its image ids."""
    year, _, image_set = part.rpartition("-")
    base = root / f"VOC{year}" if year else root
    if image_set == "all" and not year:
        ids = sorted(p.stem for p in (base / "Annotations").glob("*.xml"))
        if not ids:
            raise InputError(f"{where}: no annotation files in {base / 'Annotations'}")
        return base, ids
    listing = base / "ImageSets" / "Main" / f"{image_set}.txt"
    if not listing.is_file():
        raise InputError(f"{where}: '{part}' needs {listing}, which does not exist")
    return base, [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]


def _find_image(base: Path, image_id: str, filename: str | None) -> Path | None:
    folder = base / "JPEGImages"
    candidates = ([folder / filename] if filename else []) + [folder / (image_id + s) for s in PICTURE_SUFFIXES]
    return next((p for p in candidates if p.is_file()), None)


def load_voc_part(root: Path, part: str, where: str, skipped: dict[str, int]) -> list[Record]:
    base, ids = _voc_part(voc_root(root), part, where)
    records = []
    for image_id in ids:
        try:
            filename, hw, objects = parse_voc_xml(base / "Annotations" / f"{image_id}.xml")
        except (OSError, ET.ParseError, ValueError):
            skipped["annotation"] = skipped.get("annotation", 0) + 1
            continue
        image = _find_image(base, image_id, filename)
        if image is None:
            skipped["image"] = skipped.get("image", 0) + 1
            continue
        mask = base / "SegmentationObject" / f"{image_id}.png"
        records.append(
            Record(
                image=image,
                boxes=np.asarray([o[1] for o in objects], dtype=np.float32).reshape(-1, 4),
                names=tuple(o[0] for o in objects),
                difficult=np.asarray([o[2] for o in objects], dtype=bool),
                mask_file=mask if mask.is_file() else None,
                mask_index=np.arange(1, len(objects) + 1) if mask.is_file() else None,
                size=hw,
            )
        )
    return records


def download_voc(root: Path, parts: Sequence[str]) -> None:
    """Fetch the VOC releases the parts name into ``root`` (the VOCdevkit folder) with torchvision."""
    from torchvision.datasets import VOCDetection

    for part in parts:
        year, _, image_set = part.rpartition("-")
        if year and not (root / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
            VOCDetection(str(root.parent), year=year, image_set=image_set, download=True)


# --------------------------------------------------------------------------------------------- COCO


def _resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def load_coco_part(root: Path, part: CocoPart, where: str, skipped: dict[str, int]) -> list[Record]:
    ann_file, images = _resolve(root, part.annotations), _resolve(root, part.images)
    try:
        data = json.loads(ann_file.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
        for ann in data.get("annotations", []):
            by_image[ann["image_id"]].append(ann)
    except FileNotFoundError:
        raise InputError(f"{where}.annotations: file not found: {ann_file}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{where}.annotations: {ann_file} is not COCO-format JSON ({e!r})") from None
    records = []
    for img in data["images"]:
        path = images / img["file_name"]
        if not path.is_file():
            skipped["image"] = skipped.get("image", 0) + 1
            continue
        anns = [a for a in by_image[img["id"]] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32)
        segs = tuple(a.get("segmentation") for a in anns)
        records.append(
            Record(
                image=path,
                boxes=boxes.reshape(-1, 4),
                names=tuple(names[a["category_id"]] for a in anns),
                difficult=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                segmentation=segs if anns and all(s for s in segs) else None,
                size=(int(img.get("height", 0)), int(img.get("width", 0))),
            )
        )
    return records


# ------------------------------------------------------------------------------------------- splits


def _load_part(cfg: DetectorData, part: str | CocoPart, where: str, skipped: dict[str, int]) -> list[Record]:
    root = Path(cfg.root).expanduser()
    if isinstance(part, CocoPart):
        return load_coco_part(root, part, where, skipped)
    return load_voc_part(root, part, where, skipped)


def load_splits(cfg: DetectorData) -> Splits:
    """Read the annotations of every part; carve the validation images from the training ones."""
    root = Path(cfg.root).expanduser()
    if cfg.name == "voc" and cfg.download:
        download_voc(voc_root(root), [p for p in [*cfg.train, cfg.test] if isinstance(p, str)])
    if not root.is_dir():
        raise InputError(f"dataset.root: folder not found: {root}")
    skipped: dict[str, int] = {}
    train = [r for i, p in enumerate(cfg.train) for r in _load_part(cfg, p, f"dataset.train[{i}]", skipped)]
    test = _load_part(cfg, cfg.test, "dataset.test", skipped) if cfg.test is not None else []
    classes = list(cfg.classes) if cfg.classes else sorted({n for r in train for n in r.names})
    if not classes:
        raise InputError(f"dataset: no annotated object in the training part under {root}")
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    n_val = max(1, round(cfg.val_fraction * len(train))) if len(train) > 1 else 0
    val_idx, train_idx = set(order[:n_val].tolist()), order[n_val:]
    return Splits(
        classes,
        [train[i] for i in sorted(train_idx.tolist())],
        [train[i] for i in sorted(val_idx)],
        test,
        skipped,
    )


# ---------------------------------------------------------------------------------------- tensors


def read_image(path: Path) -> torch.Tensor:
    """uint8 ``[3, H, W]``; raises on a corrupt or truncated file."""
    return decode_image(str(path), mode=ImageReadMode.RGB)


def instance_masks(record: Record, keep: np.ndarray, height: int, width: int) -> torch.Tensor:
    """``[N, H, W]`` uint8 masks of the kept objects."""
    if record.mask_file is not None and record.mask_index is not None:
        ids = np.asarray(Image.open(record.mask_file))
        return torch.from_numpy(np.stack([ids == v for v in record.mask_index[keep]]).astype(np.uint8))
    if record.segmentation is None:
        raise ValueError(f"{record.image} has no instance masks")
    from pycocotools import mask as coco_mask

    masks = []
    for seg in (s for s, k in zip(record.segmentation, keep, strict=True) if k):
        rles = coco_mask.frPyObjects(seg, height, width) if isinstance(seg, list) else seg
        m = coco_mask.decode(rles)
        masks.append(m.max(axis=2) if m.ndim == 3 else m)
    return torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, height, width))


class DetectionSet(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]] | None]):
    """Records as ``(image float [3, H, W] in 0..1, target)``, the form torchvision's detectors take.

    ``train=True`` drops ``difficult`` objects (unless kept) and applies the augmentation; for
    evaluation the target keeps them with ``difficult`` set, as the VOC protocol needs. A record whose
    image cannot be decoded yields ``None`` (counted, and left out by :func:`collate`).
    """

    def __init__(
        self,
        records: Sequence[Record],
        classes: Sequence[str],
        train: bool,
        masks: bool = False,
        hflip: bool = False,
        keep_difficult: bool = False,
    ) -> None:
        self.records, self.train, self.masks = list(records), train, masks
        self.index = {name: i + 1 for i, name in enumerate(classes)}
        self.keep_difficult = keep_difficult or not train
        self.augment = v2.RandomHorizontalFlip(0.5) if train and hflip else None
        self.n_unreadable = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        record = self.records[i]
        try:
            image = read_image(record.image)
        except (RuntimeError, OSError):
            self.n_unreadable += 1
            return None
        known = np.asarray([n in self.index for n in record.names], dtype=bool)
        keep = known & (self.keep_difficult | ~record.difficult) if len(record.names) else known
        h, w = image.shape[-2:]
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(record.boxes[keep]), format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor(
                [self.index[n] for n, k in zip(record.names, keep, strict=True) if k], dtype=torch.int64
            ),
            "difficult": torch.from_numpy(record.difficult[keep]),
            "image_id": torch.tensor(i),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(instance_masks(record, keep, h, w))
        if self.augment is not None:
            image, target = self.augment(image, target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4)
        if self.masks:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return image.float() / 255, target


def collate(batch: Sequence[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    kept = [b for b in batch if b is not None]
    return [b[0] for b in kept], [b[1] for b in kept]


def test_pictures(dataset: dict, n: int) -> list[Path]:
    """The first ``n`` pictures of the test part (the report draws the best model's detections on them)."""
    return [record.image for record in load_splits(DetectorData.model_validate(dataset)).test[:n]]
