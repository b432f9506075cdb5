"""``trainer: detector`` — train or fine-tune one torchvision detector, reporting VOC and COCO mAP each epoch."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader

from trainers import lifecycle
from trainers.base import InputError, Reporter, Scalar, TrialParams, TrialResult, typed
from trainers.classifier.engine import Precision
from trainers.detector.config import DetectorData, DetectorHParams, DetectorModel, has_masks
from trainers.detector.data import DetectionSet, Record, Splits, collate, load_splits
from trainers.detector.engine import evaluate, train_one_epoch
from trainers.detector.metrics import DetectionEvaluator
from trainers.detector.models import build_detector, weights_url
from trainers.lifecycle import DivergenceGuard, Histograms, Lifecycle, load_parts, save_atomic, save_parts
from trainers.weights import check_file, hub_file

DEFAULT_METRIC = ("val_map50", "max")
BEST_FILE, PER_CLASS_FILE = "best.pt", "best_per_class_ap.csv"


def make_optimizer(hp: DetectorHParams, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=hp.lr, weight_decay=hp.weight_decay)


def make_schedule(hp: DetectorHParams, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule; the warm-up is a separate per-iteration one, as in torchvision's references."""
    sched = torch.optim.lr_scheduler
    if hp.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=hp.epochs)
    if hp.schedule == "step":
        return sched.MultiStepLR(optimizer, milestones=hp.milestones, gamma=hp.gamma)
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


def mask_records(records: list[Record]) -> list[Record]:
    return [r for r in records if r.has_masks]


@dataclass
class _Parts:
    classes: list[str]
    train: list[Record]
    val: list[Record]
    info: dict[str, Scalar]


def prepare_parts(cfg: DetectorData, masks: bool) -> _Parts:
    """Train / val records (only those with instance masks when the model needs them) and their sizes."""
    splits: Splits = load_splits(cfg)
    train, val = (mask_records(splits.train), mask_records(splits.val)) if masks else (splits.train, splits.val)
    info: dict[str, Scalar] = {**splits.sizes(), "data.split_seed": cfg.seed}
    if masks:
        info |= {"data.n_train_masks": len(train), "data.n_val_masks": len(val)}
    for part, records in (("train", train), ("val", val)):
        if not records:
            needs = " with instance masks (SegmentationObject)" if masks else ""
            raise InputError(f"dataset: the {part} part has no image{needs}; use more images or another val_fraction")
    return _Parts(splits.classes, train, val, info)


def preflight(
    dataset: BaseModel | Mapping[str, Any], model: BaseModel | Mapping[str, Any], weights: Sequence[str] = ()
) -> dict[str, Scalar]:
    """Checks run in the driver before any trial starts: the annotations parse, the parts are not
    empty (with masks for Mask R-CNN), every weights source the trials may use loads."""
    dataset, model = typed(DetectorData, dataset), typed(DetectorModel, model)
    info = prepare_parts(dataset, has_masks(model.arch)).info
    for source in weights or (model.weights,):
        if source in ("coco", "imagenet"):
            check_file(hub_file(weights_url(model.arch, source)))
        elif source != "none":
            check_file(source)
    return info


class DetectorTrainer:
    """Implements :class:`trainers.base.Trainer` for object detection and instance segmentation."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        cfg = typed(DetectorData, params.dataset)
        spec_model = typed(DetectorModel, params.model)
        hp = typed(DetectorHParams, params.hparams)
        device = lifecycle.start(params)
        life = Lifecycle(params, reporter, (BEST_FILE, PER_CLASS_FILE), DEFAULT_METRIC)
        masks = has_masks(spec_model.arch)
        parts = prepare_parts(cfg, masks)
        model, weights_id = build_detector(spec_model.arch, hp.weights or spec_model.weights, len(parts.classes), hp)
        model.to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(hp, trainable)
        schedule = make_schedule(hp, optimizer)
        train_set = DetectionSet(parts.train, parts.classes, True, masks, hp.hflip, cfg.train_difficult)
        val_set = DetectionSet(parts.val, parts.classes, False, masks)
        loader_args: dict[str, Any] = {"collate_fn": collate, "num_workers": hp.num_workers}
        train_loader = DataLoader(
            train_set, hp.batch_size, shuffle=True, generator=torch.Generator().manual_seed(params.seed), **loader_args
        )
        val_loader = DataLoader(val_set, hp.batch_size, shuffle=False, **loader_args)
        warmup_iters = min(hp.warmup_iters, len(train_loader) * hp.epochs)
        warmup = (
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.001, total_iters=warmup_iters)
            if warmup_iters
            else None
        )
        state = {"model": model, "optimizer": optimizer, "schedule": schedule, "warmup": warmup}
        resumed = life.resume(params.resume_from)
        if resumed is not None:
            load_parts(resumed, state)
        precision = Precision(device, hp.amp)
        guard = DivergenceGuard()
        histograms = Histograms(params.work_dir, hp.log_histograms)
        info: dict[str, Scalar] = {
            **parts.info,
            "weights.source": weights_id,
            "device": str(device),
            "model.trainable_params": sum(p.numel() for p in trainable),
        }
        meta = {"arch": spec_model.arch, "classes": parts.classes, "hparams": hp.model_dump()}

        for epoch in life.epochs(hp.epochs):
            active_warmup = warmup if warmup is not None and warmup.last_epoch < warmup_iters else None
            losses = train_one_epoch(model, train_loader, optimizer, active_warmup, precision, hp.grad_clip, guard)
            histograms.write(model, epoch)
            schedule.step()
            evaluator = DetectionEvaluator(parts.classes, masks, per_class=True)
            speed = evaluate(model, val_loader, evaluator, precision)
            scores, per_class = evaluator.compute("val")
            metrics = {
                "epoch": epoch,
                **losses,
                **scores,
                "lr": optimizer.param_groups[0]["lr"],
                "infer_img_per_s": speed,
            }
            if train_set.n_unreadable or val_set.n_unreadable:
                info["data.n_unreadable"] = train_set.n_unreadable + val_set.n_unreadable

            def save_best(m: dict[str, float] = metrics, rows: list = per_class) -> None:
                _save_weights(params.work_dir / BEST_FILE, model, meta, m)
                write_rows(params.work_dir / PER_CLASS_FILE, rows)

            life.end_epoch(metrics, save_best, save_parts(state), info)
            if life.stale(hp.early_stop_patience):
                break
        return life.result(info)


def write_rows(path: Path, rows: list[dict[str, float | str]]) -> None:
    with path.with_suffix(".tmp").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    path.with_suffix(".tmp").replace(path)


def _save_weights(path: Path, model: nn.Module, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    """The weights plus what is needed to rebuild the model: loads with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic(path, {"model_state": state, **meta, "metrics": metrics})
