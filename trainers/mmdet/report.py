"""An mmdet trial's best checkpoint on the test part, and on any images: inference in the mmdet environment
(the worker's test mode), scored and drawn on our side with the same metrics and pictures as the
torchvision backend."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from trainers.base import InputError, typed
from trainers.detector.config import DetectorData
from trainers.detector.data import Record, load_splits, read_image
from trainers.detector.metrics import DetectionEvaluator
from trainers.detector.report import draw_predictions
from trainers.mmdet.config import MmdetHParams, MmdetModel
from trainers.mmdet.trainer import WORKER, _python, targets_of, write_coco


def predict(
    weights: Path, model: MmdetModel, hparams: MmdetHParams, records: list[Record], classes: list[str], work: Path
) -> list[dict[str, torch.Tensor]]:
    """Predictions of checkpoint ``weights`` on ``records`` (in their order): boxes, scores, 1-based labels."""
    work.mkdir(parents=True, exist_ok=True)
    write_coco(records, classes, work / "images.json", keep_difficult=True)
    job = {
        "mode": "test",
        "checkpoint": str(weights),
        "config": model.config,
        "weights": "none",
        "work_dir": str(work),
        "train_ann": str(work / "images.json"),
        "val_ann": str(work / "images.json"),
        "classes": classes,
        "hparams": hparams.model_dump(),
        "seed": 0,
    }
    (work / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # an mmengine checkpoint a trial of this sweep wrote
    done = subprocess.run(
        [_python(model), str(WORKER), str(work / "job.json")], cwd=work, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"the mmdet worker exited with {done.returncode}: {tail}")
    found = sorted(json.loads((work / "predictions.json").read_text()), key=lambda p: p["image_id"])
    return [
        {
            "boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(p["scores"], dtype=torch.float32),
            "labels": torch.tensor(p["labels"], dtype=torch.int64) + 1,
        }
        for p in found
    ]


def evaluate_checkpoint(
    weights: Path,
    dataset: Mapping[str, Any],
    out_dir: Path,
    cache_dir: Path | None = None,
    model_spec: Mapping[str, Any] | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """VOC AP@0.5 (both methods) and COCO mAP of the checkpoint on the test part; ``per_class_ap.csv``."""
    cfg = typed(DetectorData, dataset)
    if cfg.test is None:
        raise InputError("dataset.test: this sweep's dataset names no test part")
    splits = load_splits(cfg)
    if not splits.test:
        raise InputError("dataset.test: the test part has no image")
    with tempfile.TemporaryDirectory() as tmp:
        preds = predict(
            weights,
            typed(MmdetModel, model_spec),
            typed(MmdetHParams, hparams or {}),
            splits.test,
            splits.classes,
            Path(tmp),
        )
    evaluator = DetectionEvaluator(splits.classes, masks=False, per_class=True)
    evaluator.update(preds, targets_of(splits.test, splits.classes))
    metrics, rows = evaluator.compute("test")
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out_dir / "per_class_ap.csv", index=False)
    return {**metrics, "test_n": float(len(splits.test))}


def detect_images(
    weights: Path,
    images: Sequence[Path],
    out_dir: Path,
    score_thresh: float = 0.5,
    with_proposals: bool = False,
    top_k: int = 50,
    model_spec: Mapping[str, Any] | None = None,
    hparams: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Draw the checkpoint's predictions on each image (``NAME.png``, the image's own size)."""
    from torchvision.io import write_png

    if with_proposals:
        raise InputError("--proposals: the mmdet backend draws its final predictions only")
    classes = load_splits(typed(DetectorData, dataset)).classes
    records = []
    for path in images:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as e:
            raise InputError(f"--images: cannot decode {path}: {e}") from None
        empty = np.zeros((0, 4), dtype=np.float32)
        records.append(Record(path, empty, (), np.zeros(0, dtype=bool), size=(height, width)))
    with tempfile.TemporaryDirectory() as tmp:
        preds = predict(
            weights, typed(MmdetModel, model_spec), typed(MmdetHParams, hparams or {}), records, classes, Path(tmp)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, pred in zip(images, preds, strict=True):
        target = out_dir / f"{path.stem}.png"
        write_png(draw_predictions(read_image(path), pred, classes, score_thresh), str(target))
        written.append(target)
    return written
