"""``trainer: detector`` — train or fine-tune one torchvision detector, reporting VOC and COCO mAP each epoch."""

from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainers.base import InputError, Reporter, Scalar, TrialParams, TrialResult
from trainers.classifier.engine import Precision
from trainers.classifier.trainer import pick_device
from trainers.detector.config import DetectorData, DetectorHParams, DetectorModel, has_masks
from trainers.detector.data import DetectionSet, Record, Splits, collate, load_splits
from trainers.detector.engine import evaluate, train_one_epoch
from trainers.detector.metrics import DetectionEvaluator
from trainers.detector.models import build_detector

DEFAULT_METRIC = "val_map50"
PER_CLASS_FILE = "best_per_class_ap.csv"


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


def preflight(dataset: dict[str, Any], model: dict[str, Any]) -> dict[str, Scalar]:
    """Checks run in the driver before any trial starts: the annotations parse, the parts are not
    empty (with masks for Mask R-CNN), a weights file exists."""
    spec_model = DetectorModel.model_validate(model)
    if spec_model.weights not in ("coco", "imagenet", "none") and not Path(spec_model.weights).expanduser().is_file():
        raise InputError(f"model.weights: file not found: {spec_model.weights}")
    return prepare_parts(DetectorData.model_validate(dataset), has_masks(spec_model.arch)).info


class DetectorTrainer:
    """Implements :class:`trainers.base.Trainer` for object detection and instance segmentation."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        cfg = DetectorData.model_validate(params.dataset)
        spec_model = DetectorModel.model_validate(params.model)
        hp = DetectorHParams.model_validate(params.hparams)
        torch.manual_seed(params.seed)
        torch.set_num_threads(max(1, params.threads))
        device = pick_device(params.device)
        params.work_dir.mkdir(parents=True, exist_ok=True)
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
        metric = params.metric if params.metric.startswith("val_") else DEFAULT_METRIC
        better = (lambda a, b: a < b) if params.mode == "min" and metric == params.metric else (lambda a, b: a > b)
        best_path = params.work_dir / "best.pt"
        state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": 0, "history": [], "iters": 0}
        if params.resume_from is not None:
            state = _restore(params.resume_from, model, optimizer, schedule, warmup, params.work_dir)
        precision = Precision(device, hp.amp)
        info: dict[str, Scalar] = {
            **parts.info,
            "weights.source": weights_id,
            "device": str(device),
            "model.trainable_params": sum(p.numel() for p in trainable),
        }
        meta = {"arch": spec_model.arch, "classes": parts.classes, "hparams": hp.model_dump()}
        start_epoch = int(state["epoch"]) + 1
        for epoch in range(start_epoch, hp.epochs + 1):
            active_warmup = warmup if warmup is not None and warmup.last_epoch < warmup_iters else None
            losses = train_one_epoch(model, train_loader, optimizer, active_warmup, precision, hp.grad_clip)
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
            if metric not in metrics:
                raise InputError(f"metric: the detector reports no '{metric}' (it has {', '.join(sorted(metrics))})")
            if state["best"] is None or better(metrics[metric], state["best"]):
                state.update(best=metrics[metric], best_epoch=epoch)
                _save_weights(best_path, model, meta, metrics)
                _write_rows(params.work_dir / PER_CLASS_FILE, per_class)
            state["epoch"] = epoch
            state["history"].append(metrics)
            if train_set.n_unreadable or val_set.n_unreadable:
                info["data.n_unreadable"] = train_set.n_unreadable + val_set.n_unreadable
            with tempfile.TemporaryDirectory(dir=params.work_dir) as tmp:
                ckpt = Path(tmp)
                _save_state(ckpt, model, optimizer, schedule, warmup, state)
                for name in ("best.pt", PER_CLASS_FILE):
                    shutil.copy(params.work_dir / name, ckpt / name)
                reporter.report(metrics, ckpt, info if epoch == start_epoch or "data.n_unreadable" in info else None)
            if hp.early_stop_patience and epoch - int(state["best_epoch"]) >= hp.early_stop_patience:
                break
        best = next(m for m in state["history"] if m["epoch"] == state["best_epoch"])
        return TrialResult(best_metrics=best, epochs_run=int(state["epoch"]), best_weights=best_path, info=info)


def _write_rows(path: Path, rows: list[dict[str, float | str]]) -> None:
    with path.with_suffix(".tmp").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    path.with_suffix(".tmp").replace(path)


def _save_weights(path: Path, model: nn.Module, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    """The weights plus what is needed to rebuild the model: loads with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_state": state, **meta, "metrics": metrics}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _save_state(
    ckpt: Path, model: nn.Module, optimizer: Any, schedule: Any, warmup: Any, state: dict[str, Any]
) -> None:
    blob = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "warmup": warmup.state_dict() if warmup is not None else None,
        "state": state,
    }
    torch.save(blob, ckpt / "state.pt")


def _restore(
    ckpt: Path, model: nn.Module, optimizer: Any, schedule: Any, warmup: Any, work_dir: Path
) -> dict[str, Any]:
    blob = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    schedule.load_state_dict(blob["schedule"])
    if warmup is not None and blob["warmup"] is not None:
        warmup.load_state_dict(blob["warmup"])
    for name in ("best.pt", PER_CLASS_FILE):
        shutil.copy(ckpt / name, work_dir / name)
    state: dict[str, Any] = blob["state"]
    return state
