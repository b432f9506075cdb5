"""Score a trained detector on the test part, and draw what it sees."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainers.base import InputError
from trainers.classifier.engine import Precision
from trainers.detector.config import DetectorData, has_masks
from trainers.detector.data import DetectionSet, collate, load_splits, read_image
from trainers.detector.engine import evaluate, foreground
from trainers.detector.metrics import DetectionEvaluator
from trainers.detector.models import load_detector
from trainers.detector.trainer import mask_records
from trainers.lifecycle import pick_device


def evaluate_checkpoint(
    weights: Path,
    dataset: dict,
    out_dir: Path,
    cache_dir: Path | None = None,
    model_spec: dict | None = None,
    hparams: dict | None = None,
    batch_size: int = 4,
) -> dict[str, float]:
    """VOC AP@0.5 (both methods), COCO mAP (boxes, and masks for Mask R-CNN) and inference speed on the
    test part; per-class AP in ``out_dir/per_class_ap.csv``. (``model_spec`` and ``hparams``: the checkpoint holds
    what this backend needs.)"""
    cfg = DetectorData.model_validate(dataset)
    if cfg.test is None:
        raise InputError("dataset.test: this sweep's dataset names no test part")
    model, blob = load_detector(weights)
    splits = load_splits(cfg)
    masks = has_masks(blob["arch"])
    test = mask_records(splits.test) if masks else splits.test
    if not test:
        raise InputError("dataset.test: the test part has no image" + (" with instance masks" if masks else ""))
    device = pick_device("auto")
    model.to(device)
    evaluator = DetectionEvaluator(blob["classes"], masks, per_class=True)
    loader = DataLoader(DetectionSet(test, blob["classes"], False, masks), batch_size, collate_fn=collate)
    speed = evaluate(model, loader, evaluator, Precision(device, True))
    metrics, rows = evaluator.compute("test")
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out_dir / "per_class_ap.csv", index=False)
    return {**metrics, "test_infer_img_per_s": speed, "test_n": float(len(test))}


# ------------------------------------------------------------------------------------------ pictures


@torch.inference_mode()
def proposals(model: nn.Module, image: torch.Tensor, top_k: int) -> torch.Tensor:
    """The first stage's top-``top_k`` proposals (RPN, ranked by objectness) in the image's coordinates."""
    images, _ = model.transform([image])  # type: ignore[operator]
    features = model.backbone(images.tensors)  # type: ignore[operator]
    if isinstance(features, torch.Tensor):  # a single-map backbone, as GeneralizedRCNN wraps it
        features = OrderedDict([("0", features)])
    boxes, _ = model.rpn(images, features)  # type: ignore[operator]
    # the RPN returns its post-NMS boxes sorted by objectness; undo the resize
    scaled = model.transform.postprocess([{"boxes": boxes[0][:top_k]}], images.image_sizes, [image.shape[-2:]])  # type: ignore[operator,union-attr]
    return scaled[0]["boxes"]


def draw_predictions(
    image: torch.Tensor, pred: dict[str, torch.Tensor], classes: Sequence[str], score_thresh: float
) -> torch.Tensor:
    """Boxes, class names and scores (and masks) over a uint8 ``[3, H, W]`` image."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = pred["scores"] >= score_thresh
    out = image
    if "masks" in pred and keep.any():
        out = draw_segmentation_masks(out, pred["masks"][keep].squeeze(1) > 0.5, alpha=0.45)
    labels = [
        f"{classes[int(lbl) - 1]} {s:.2f}" for lbl, s in zip(pred["labels"][keep], pred["scores"][keep], strict=True)
    ]
    return draw_bounding_boxes(out, pred["boxes"][keep], labels=labels, colors="yellow", width=2)


@torch.inference_mode()
def detect_images(
    weights: Path,
    images: Sequence[Path],
    out_dir: Path,
    score_thresh: float = 0.5,
    with_proposals: bool = False,
    top_k: int = 50,
    model_spec: dict | None = None,
    hparams: dict | None = None,
    dataset: dict | None = None,
) -> list[Path]:
    """Draw the detector's predictions on each image (``NAME.png``, the image's own size); with
    ``with_proposals``, the first stage's top-k proposals beside the predictions (``NAME_proposals.png``).
    (``model_spec``, ``hparams``, ``dataset``: the checkpoint holds what this backend needs.)"""
    from torchvision.io import write_png
    from torchvision.utils import draw_bounding_boxes

    model, blob = load_detector(weights)
    if with_proposals and not hasattr(model, "rpn"):
        raise InputError(f"--proposals: {blob['arch']} has no proposal stage (only the R-CNNs do)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        try:
            image = read_image(path)
        except (RuntimeError, OSError) as e:
            raise InputError(f"--images: cannot decode {path}: {e}") from None
        pred = foreground(model([image.float() / 255])[0])  # type: ignore[operator]
        drawn = draw_predictions(image, pred, blob["classes"], score_thresh)
        target = out_dir / f"{path.stem}.png"
        write_png(drawn, str(target))
        written.append(target)
        if with_proposals:
            boxes = proposals(model, image.float() / 255, top_k)
            left = draw_bounding_boxes(image, boxes, colors="cyan", width=1)
            pair = torch.cat([left, torch.full((3, image.shape[1], 8), 255, dtype=torch.uint8), drawn], dim=2)
            target = out_dir / f"{path.stem}_proposals.png"
            write_png(pair, str(target))
            written.append(target)
    return written
