"""``trainer: classifier`` — fine-tune or train from scratch one image classifier, reporting each epoch."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainers.base import InputError, Reporter, Scalar, TrialParams, TrialResult
from trainers.classifier import loader
from trainers.classifier.config import ClassifierData, ClassifierHParams, ClassifierModel
from trainers.classifier.data import Splits, load_splits
from trainers.classifier.engine import Accumulation, Precision, evaluate, topk, train_one_epoch
from trainers.classifier.models import build_model
from trainers.classifier.transfer import apply_unfreeze, param_groups, train_mode


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(hp: ClassifierHParams, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(
            groups, momentum=hp.momentum, nesterov=hp.nesterov and hp.momentum > 0, weight_decay=hp.weight_decay
        )
    cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, weight_decay=hp.weight_decay)


def make_schedule(hp: ClassifierHParams, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule, with an optional linear warm-up in front."""
    sched = torch.optim.lr_scheduler
    main_epochs = max(1, hp.epochs - hp.warmup_epochs)
    main: sched.LRScheduler
    if hp.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_epochs)
    elif hp.schedule == "step":
        main = sched.StepLR(optimizer, step_size=hp.step_size, gamma=hp.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if not hp.warmup_epochs:
        return main
    warm = sched.LinearLR(optimizer, start_factor=1.0 / (hp.warmup_epochs + 1), total_iters=hp.warmup_epochs)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[hp.warmup_epochs])


@dataclass
class _Data:
    splits: Splits
    train: loader.Batches
    val: loader.Batches
    info: dict[str, int | str]


def prepare_data(cfg: ClassifierData, hp: ClassifierHParams, seed: int, cache_dir: Path | None) -> _Data:
    """Splits and batch sources; the decoded cache unless ``cache: false``."""
    splits = load_splits(cfg)
    info: dict[str, int | str] = {**splits.sizes(), "data.split_seed": cfg.seed, "data.cached": str(cfg.cache)}
    size = cfg.image_size
    if cfg.cache:
        images, ok = loader.decoded(splits, size, cache_dir)
        loader.require_images(ok, splits)
        info["data.n_skipped"] = int((~ok).sum())
        train_idx, val_idx = splits.train[ok[splits.train]], splits.val[ok[splits.val]]
        return _Data(
            splits,
            loader.cached_batches(images, splits.labels, train_idx, hp.batch_size, True, seed),
            loader.cached_batches(images, splits.labels, val_idx, hp.batch_size, False, seed),
            info,
        )
    return _Data(
        splits,
        loader.decoding_batches(splits, splits.train, size, hp.batch_size, True, seed, hp.num_workers),
        loader.decoding_batches(splits, splits.val, size, hp.batch_size, False, seed, hp.num_workers),
        info,
    )


def preflight(dataset: dict[str, Any], model: dict[str, Any]) -> dict[str, int]:
    """Checks run in the driver before any trial starts: the data is there and not empty, a weights
    file exists. Returns the split sizes."""
    splits = load_splits(ClassifierData.model_validate(dataset))
    spec_model = ClassifierModel.model_validate(model)
    if spec_model.weights not in ("imagenet", "none") and not Path(spec_model.weights).expanduser().is_file():
        raise InputError(f"model.weights: file not found: {spec_model.weights}")
    for part in ("train", "val"):
        if not len(getattr(splits, part)):
            raise InputError(f"dataset: the {part} part is empty; use more images or another val_fraction")
    return splits.sizes()


class ClassifierTrainer:
    """Implements :class:`trainers.base.Trainer` for image classification."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        cfg = ClassifierData.model_validate(params.dataset)
        spec_model = ClassifierModel.model_validate(params.model)
        hp = ClassifierHParams.model_validate(params.hparams)
        torch.manual_seed(params.seed)
        torch.set_num_threads(max(1, params.threads))
        device = pick_device(params.device)
        params.work_dir.mkdir(parents=True, exist_ok=True)
        data = prepare_data(cfg, hp, params.seed, params.cache_dir)
        classes = data.splits.classes
        model, weights_id = build_model(spec_model.arch, hp.weights or spec_model.weights, len(classes))
        model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        groups = param_groups(model, spec_model.arch, hp.lr, hp.backbone_lr_mult, hp.unfreeze)
        optimizer = make_optimizer(hp, groups)
        schedule = make_schedule(hp, optimizer)
        best_path = params.work_dir / "best.pt"
        state: dict[str, Any] = {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": [], "accumulate": 1}
        if params.resume_from is not None:
            state = _restore(params.resume_from, model, optimizer, schedule, best_path)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        precision = Precision(device, hp.amp)
        augment = loader.augmenter(hp, cfg.image_size)
        info: dict[str, Scalar] = {**data.info, "weights.source": weights_id, "device": str(device)}
        meta = {"arch": spec_model.arch, "classes": classes, "image_size": cfg.image_size}
        acc = Accumulation(steps=int(state.get("accumulate", 1)), min_micro_batch=hp.min_micro_batch)
        start_epoch = int(state["epoch"]) + 1
        for epoch in range(start_epoch, hp.epochs + 1):
            apply_unfreeze(model, spec_model.arch, "head" if epoch <= hp.head_only_epochs else hp.unfreeze)
            train_mode(model)
            retries = acc.retries
            train_loss = train_one_epoch(model, data.train, optimizer, loss_fn, precision, augment, hp.grad_clip, acc)
            if acc.retries > retries:  # out of memory: said once, in the trial's tags and log
                info.update({"oom.accumulate": acc.steps, "oom.micro_batch": hp.batch_size // acc.steps})
                print(
                    f"out of memory: batch {hp.batch_size} now runs as {acc.steps} micro-batches of "
                    f"{hp.batch_size // acc.steps} (same effective batch)",
                    flush=True,
                )
            state["accumulate"] = acc.steps
            schedule.step()
            val_loss, logits, target = evaluate(model, data.val, precision)
            metrics = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_top1": topk(logits, target, 1),
                "val_top5": topk(logits, target, 5),
                "lr": optimizer.param_groups[0]["lr"],
            }
            if metrics["val_top1"] > state["best"]:
                state.update(best=metrics["val_top1"], best_epoch=epoch)
                _save_weights(best_path, model, meta, metrics)
            state["epoch"] = epoch
            state["history"].append(metrics)
            with tempfile.TemporaryDirectory(dir=params.work_dir) as tmp:
                ckpt = Path(tmp)
                _save_state(ckpt, model, optimizer, schedule, state)
                shutil.copy(best_path, ckpt / "best.pt")
                first = epoch == start_epoch  # a fresh or resumed run's first report carries the facts
                reporter.report(metrics, ckpt, info if first or acc.retries > retries else None)
            if hp.early_stop_patience and epoch - int(state["best_epoch"]) >= hp.early_stop_patience:
                break
        best = max(state["history"], key=lambda m: m["val_top1"])
        return TrialResult(best_metrics=best, epochs_run=int(state["epoch"]), best_weights=best_path, info=info)


def _save_weights(path: Path, model: nn.Module, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    """The weights plus what is needed to rebuild the model: loads with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_state": state, **meta, "metrics": metrics}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _save_state(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
) -> None:
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "state": state,
        },
        ckpt / "state.pt",
    )


def _restore(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    best_path: Path,
) -> dict[str, Any]:
    blob = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    schedule.load_state_dict(blob["schedule"])
    state: dict[str, Any] = blob["state"]
    shutil.copy(ckpt / "best.pt", best_path)
    return state


def load_classifier(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a classifier from a best-weights file this trainer wrote (``weights_only=True``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model, _ = build_model(blob["arch"], "none", len(blob["classes"]))
    model.load_state_dict(blob["model_state"])
    return model.eval(), blob
