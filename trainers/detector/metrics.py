"""Detection metrics: Pascal VOC AP@0.5 (the VOC2007 11-point and the VOC2010+ area method) and COCO
mAP@[.5:.95] for boxes and masks (pycocotools, through torchmetrics).

Predictions and targets are lists, one dict per image, as torchvision's detectors return them
(``boxes`` ``[N, 4]`` xyxy, ``scores``, ``labels``, optionally ``masks``); targets carry ``difficult``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torchvision.ops import box_iou

Detections = Sequence[dict[str, torch.Tensor]]


def voc_ap(recall: np.ndarray, precision: np.ndarray, eleven_point: bool) -> float:
    """Area under one class's precision/recall curve, as the VOC devkit computes it."""
    if eleven_point:  # VOC2007: mean of the best precision at recall >= 0, 0.1, ..., 1
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # the precision envelope
    changes = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[changes + 1] - r[changes]) * p[changes + 1]))


@dataclass(frozen=True)
class ClassCurve:
    """One class's ranked detections scored against the ground truth."""

    recall: np.ndarray
    precision: np.ndarray
    n_positives: int


def class_curve(preds: Detections, targets: Detections, label: int, iou_thresh: float = 0.5) -> ClassCurve:
    """Rank every detection of ``label`` by score and match it greedily to the best-overlapping ground
    truth: a match above the threshold is a true positive once, a second match is a false positive, and a
    match to a ``difficult`` object counts as neither (the VOC protocol)."""
    scores, hits = [], []
    n_pos = 0
    for pred, tgt in zip(preds, targets, strict=True):
        gt_mask = tgt["labels"] == label
        gt_boxes = tgt["boxes"][gt_mask].float()
        difficult = tgt.get("difficult", torch.zeros(len(tgt["labels"]), dtype=torch.bool))[gt_mask]
        n_pos += int((~difficult).sum())
        mine = pred["labels"] == label
        order = torch.argsort(pred["scores"][mine], descending=True, stable=True)
        boxes, image_scores = pred["boxes"][mine][order].float(), pred["scores"][mine][order]
        taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
        iou = box_iou(boxes, gt_boxes) if len(gt_boxes) and len(boxes) else None
        for k in range(len(boxes)):
            hit = 0.0
            if iou is not None:
                best, j = iou[k].max(0)
                if best >= iou_thresh:
                    if difficult[j]:
                        continue
                    hit = 0.0 if taken[j] else 1.0
                    taken[j] = True
            scores.append(float(image_scores[k]))
            hits.append(hit)
    order_all = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits)[order_all]) if hits else np.zeros(0)
    fp = np.cumsum(1 - np.asarray(hits)[order_all]) if hits else np.zeros(0)
    recall = tp / max(n_pos, 1)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return ClassCurve(recall, precision, n_pos)


def voc_map(preds: Detections, targets: Detections, num_classes: int) -> dict[str, np.ndarray]:
    """Per-class AP@0.5 by both VOC methods (``area``, ``11point``; NaN for a class with no positives)
    and each class's number of non-difficult objects (``n_gt``). Labels run from 1 to ``num_classes``."""
    area, eleven, n_gt = [], [], []
    for label in range(1, num_classes + 1):
        curve = class_curve(preds, targets, label)
        empty = curve.n_positives == 0
        area.append(np.nan if empty else voc_ap(curve.recall, curve.precision, eleven_point=False))
        eleven.append(np.nan if empty else voc_ap(curve.recall, curve.precision, eleven_point=True))
        n_gt.append(curve.n_positives)
    return {"area": np.asarray(area), "11point": np.asarray(eleven), "n_gt": np.asarray(n_gt)}


class DetectionEvaluator:
    """Accumulates an evaluation pass image by image (masks go to pycocotools as RLE at once, so a large
    validation set does not hold dense masks) and computes every metric at the end."""

    def __init__(self, classes: Sequence[str], masks: bool, per_class: bool = False) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.classes, self.masks, self.per_class = list(classes), masks, per_class
        iou_types: tuple[Literal["bbox", "segm"], ...] = ("bbox", "segm") if masks else ("bbox",)
        self.coco = MeanAveragePrecision(iou_type=iou_types, class_metrics=per_class, backend="pycocotools")
        self.preds: list[dict[str, torch.Tensor]] = []
        self.targets: list[dict[str, torch.Tensor]] = []

    def update(self, preds: Detections, targets: Detections) -> None:
        """Add a batch; difficult objects go to COCO evaluation as crowd regions, which it ignores as VOC does."""
        coco_preds, coco_targets = [], []
        for pred, tgt in zip(preds, targets, strict=True):
            boxes = {k: pred[k].detach().cpu() for k in ("boxes", "scores", "labels")}
            difficult = tgt.get("difficult", torch.zeros(len(tgt["labels"]), dtype=torch.bool)).cpu()
            truth = {"boxes": tgt["boxes"].cpu(), "labels": tgt["labels"].cpu(), "difficult": difficult}
            self.preds.append(boxes)
            self.targets.append(truth)
            p, t = dict(boxes), {"boxes": truth["boxes"], "labels": truth["labels"], "iscrowd": difficult.long()}
            if self.masks:
                h, w = tgt["masks"].shape[-2:]
                p["masks"] = (
                    (pred["masks"].detach().cpu().reshape(-1, h, w) > 0.5)
                    if len(pred["masks"])
                    else (torch.zeros((0, h, w), dtype=torch.bool))
                )
                t["masks"] = tgt["masks"].cpu().bool()
            coco_preds.append(p)
            coco_targets.append(t)
        self.coco.update(coco_preds, coco_targets)

    def compute(self, prefix: str = "val") -> tuple[dict[str, float], list[dict[str, float | str]]]:
        """The metrics (``{prefix}_map50``: VOC area method, ``_map50_11pt``: VOC2007 11-point,
        ``_map``: COCO mAP@[.5:.95], ``_map75``, ``_coco_map50``, ``_mask_map``) and, with ``per_class``,
        one row per class."""
        voc = voc_map(self.preds, self.targets, len(self.classes))
        coco = self.coco.compute()
        box = "bbox_" if self.masks else ""

        def mean(values: np.ndarray) -> float:
            return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0

        metrics = {
            f"{prefix}_map50": mean(voc["area"]),
            f"{prefix}_map50_11pt": mean(voc["11point"]),
            f"{prefix}_map": max(0.0, float(coco[f"{box}map"])),  # -1 is the library's "nothing to score"
            f"{prefix}_map75": max(0.0, float(coco[f"{box}map_75"])),
            f"{prefix}_coco_map50": max(0.0, float(coco[f"{box}map_50"])),
        }
        if self.masks:
            metrics[f"{prefix}_mask_map"] = max(0.0, float(coco["segm_map"]))
        return metrics, self._rows(voc, coco, box) if self.per_class else []

    def _rows(
        self, voc: dict[str, np.ndarray], coco: dict[str, torch.Tensor], box: str
    ) -> list[dict[str, float | str]]:
        coco_ap = dict.fromkeys(range(1, len(self.classes) + 1), float("nan"))
        labels = coco["classes"].reshape(-1).tolist()
        coco_ap.update(zip(labels, coco[f"{box}map_per_class"].reshape(-1).tolist(), strict=True))
        return [
            {
                "class": name,
                "ap50": float(voc["area"][i]),
                "ap50_11pt": float(voc["11point"][i]),
                "ap": coco_ap[i + 1] if coco_ap[i + 1] >= 0 else float("nan"),
                "n_gt": int(voc["n_gt"][i]),
            }
            for i, name in enumerate(self.classes)
        ]
