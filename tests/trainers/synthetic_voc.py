"""A Pascal VOC dataset written by the tests in the real on-disk layout: coloured shapes on textured
backgrounds, XML annotations with ``difficult`` flags, palette SegmentationObject / SegmentationClass PNGs
(object ``i`` is pixel value ``i + 1``, outlines 255 as in VOC) for part of the images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


@dataclass
class Truth:
    """What was drawn, per image id: boxes (VOC 1-based inclusive), names, difficult flags."""

    boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    difficult: dict[str, list[bool]] = field(default_factory=dict)
    segmented: set[str] = field(default_factory=set)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency noise plus stripes: texture the detector has to learn to ignore."""
    coarse = rng.uniform(60, 200, (size // 16 + 1, size // 16 + 1, 3))
    img = np.kron(coarse, np.ones((16, 16, 1)))[:size, :size]
    yy, xx = np.mgrid[:size, :size]
    angle = rng.uniform(0, np.pi)
    stripes = 25 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / rng.uniform(2, 5))
    return np.clip(img + stripes[..., None] + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, name: str, box: tuple[int, int, int, int], fill: object) -> None:
    x0, y0, x1, y1 = box
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _palette() -> list[int]:
    pal = [0] * 768
    for i in range(1, 21):
        pal[3 * i : 3 * i + 3] = [(i * 67) % 256, (i * 131) % 256, (i * 197) % 256]
    pal[765:768] = [224, 224, 192]  # VOC's colour of the 255 "void" outline
    return pal


def make_voc(
    root: Path, n_trainval: int = 48, n_test: int = 12, size: int = 128, seed: int = 0, year: str = "2007"
) -> Truth:
    """Write ``root/VOCdevkit/VOC{year}``; return what was drawn."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / f"VOC{year}"
    for sub in (
        "Annotations",
        "JPEGImages",
        "ImageSets/Main",
        "ImageSets/Segmentation",
        "SegmentationObject",
        "SegmentationClass",
    ):
        (base / sub).mkdir(parents=True, exist_ok=True)
    truth = Truth()
    ids = [f"{year}_{i:06d}" for i in range(n_trainval + n_test)]
    for image_id in ids:
        img = Image.fromarray(_background(rng, size))
        inst = Image.new("P", (size, size), 0)
        cls_map = Image.new("P", (size, size), 0)
        draw, inst_draw, cls_draw = ImageDraw.Draw(img), ImageDraw.Draw(inst), ImageDraw.Draw(cls_map)
        boxes, names, difficult, taken = [], [], [], np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(size // 5, size // 2.5))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            if taken[y0 : y0 + side, x0 : x0 + side].any():
                continue
            taken[y0 : y0 + side, x0 : x0 + side] = True
            name = CLASSES[int(rng.integers(len(CLASSES)))]
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            _draw(draw, name, box, colour)
            _draw(inst_draw, name, box, len(boxes) + 1)
            _draw(cls_draw, name, box, CLASSES.index(name) + 1)
            mask = np.asarray(inst) == len(boxes) + 1
            ys, xs = np.nonzero(mask)
            boxes.append((int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1))
            names.append(name)
            difficult.append(bool(rng.random() < 0.1))
        img.save(base / "JPEGImages" / f"{image_id}.jpg", quality=92)
        truth.boxes[image_id], truth.names[image_id], truth.difficult[image_id] = boxes, names, difficult
        if rng.random() < 0.75:
            for m in (inst, cls_map):
                outline = np.asarray(m).copy()
                edge = np.zeros_like(outline, bool)
                edge[:-1] |= outline[:-1] != outline[1:]
                edge[:, :-1] |= outline[:, :-1] != outline[:, 1:]
                outline[edge & (outline == 0)] = 255
                out = Image.fromarray(outline, mode="P")
                out.putpalette(_palette())
                out.save(base / ("SegmentationObject" if m is inst else "SegmentationClass") / f"{image_id}.png")
            truth.segmented.add(image_id)
        (base / "Annotations" / f"{image_id}.xml").write_text(
            _xml(image_id, size, boxes, names, difficult, image_id in truth.segmented)
        )
    (base / "ImageSets/Main/trainval.txt").write_text("\n".join(ids[:n_trainval]) + "\n")
    (base / "ImageSets/Main/test.txt").write_text("\n".join(ids[n_trainval:]) + "\n")
    seg = [i for i in ids if i in truth.segmented]
    (base / "ImageSets/Segmentation/trainval.txt").write_text("\n".join(seg) + "\n")
    return truth


def _xml(image_id: str, size: int, boxes: list, names: list, difficult: list, segmented: bool) -> str:
    objects = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for b, n, d in zip(boxes, names, difficult, strict=True)
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
        f"<source><database>sweep tests</database></source>"
        f"<size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
        f"<segmented>{int(segmented)}</segmented>{objects}</annotation>"
    )
