"""``trainer: classifier`` — fine-tune or train from scratch one image classifier, reporting each epoch."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from trainers import lifecycle
from trainers.base import Reporter, Scalar, TrialParams, TrialResult, typed
from trainers.classifier import loader
from trainers.classifier.config import ClassifierData, ClassifierHParams, ClassifierModel
from trainers.classifier.data import Splits, load_splits
from trainers.classifier.engine import Accumulation, Precision, evaluate, topk, train_one_epoch
from trainers.classifier.models import build_model
from trainers.classifier.transfer import apply_unfreeze, param_groups, train_mode
from trainers.lifecycle import DivergenceGuard, Histograms, Lifecycle, load_parts, save_atomic, save_parts

BEST_FILE = "best.pt"
DEFAULT_METRIC = ("val_top1", "max")


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
    augment: v2.Compose | None
    """The augmentation the training step applies (None when the data loader's workers apply it)."""


def prepare_data(cfg: ClassifierData, hp: ClassifierHParams, seed: int, cache_dir: Path | None) -> _Data:
    """Splits and batch sources; the decoded cache unless ``cache: false``."""
    splits = load_splits(cfg)
    info: dict[str, int | str] = {**splits.sizes(), "data.split_seed": cfg.seed, "data.cached": str(cfg.cache)}
    size = cfg.image_size
    augment = loader.augmenter(hp, size)
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
            augment,
        )
    in_workers = hp.num_workers > 0  # beside the decoding, off the training process
    train = loader.decoding_batches(
        splits, splits.train, size, hp.batch_size, True, seed, hp.num_workers, augment if in_workers else None
    )
    val = loader.decoding_batches(splits, splits.val, size, hp.batch_size, False, seed, hp.num_workers)
    return _Data(splits, train, val, info, None if in_workers else augment)


class ClassifierTrainer:
    """Implements :class:`trainers.base.Trainer` for image classification."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        cfg = typed(ClassifierData, params.dataset)
        spec_model = typed(ClassifierModel, params.model)
        hp = typed(ClassifierHParams, params.hparams)
        device = lifecycle.start(params)
        life = Lifecycle(params, reporter, (BEST_FILE,), DEFAULT_METRIC)
        data = prepare_data(cfg, hp, params.seed, params.cache_dir)
        classes = data.splits.classes
        model, weights_id = build_model(spec_model.arch, hp.weights or spec_model.weights, len(classes))
        model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        groups = param_groups(model, spec_model.arch, hp.lr, hp.backbone_lr_mult, hp.unfreeze)
        optimizer = make_optimizer(hp, groups)
        schedule = make_schedule(hp, optimizer)
        state = {"model": model, "optimizer": optimizer, "schedule": schedule}
        resumed = life.resume(params.resume_from)
        if resumed is not None:
            load_parts(resumed, state)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
        precision = Precision(device, hp.amp)
        info: dict[str, Scalar] = {**data.info, "weights.source": weights_id, "device": str(device)}
        meta = {"arch": spec_model.arch, "classes": classes, "image_size": cfg.image_size}
        acc = Accumulation(steps=int(life.extra.get("accumulate", 1)), min_micro_batch=hp.min_micro_batch)
        guard = DivergenceGuard()
        histograms = Histograms(params.work_dir, hp.log_histograms)
        best_path = params.work_dir / BEST_FILE

        for epoch in life.epochs(hp.epochs):
            apply_unfreeze(model, spec_model.arch, "head" if epoch <= hp.head_only_epochs else hp.unfreeze)
            train_mode(model)
            retries = acc.retries
            train_loss = train_one_epoch(
                model, data.train, optimizer, loss_fn, precision, data.augment, hp.grad_clip, acc, guard
            )
            if acc.retries > retries:  # out of memory: said once, in the trial's tags and log
                info.update({"oom.accumulate": acc.steps, "oom.micro_batch": hp.batch_size // acc.steps})
                print(
                    f"out of memory: batch {hp.batch_size} now runs as {acc.steps} micro-batches of "
                    f"{hp.batch_size // acc.steps} (same effective batch)",
                    flush=True,
                )
            life.extra["accumulate"] = acc.steps
            histograms.write(model, epoch)
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
            life.end_epoch(metrics, partial(_save_weights, best_path, model, meta, metrics), save_parts(state), info)
            if life.stale(hp.early_stop_patience):
                break
        return life.result(info)


def _save_weights(path: Path, model: nn.Module, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    """The weights plus what is needed to rebuild the model: loads with ``weights_only=True``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_atomic(path, {"model_state": state, **meta, "metrics": metrics})


def load_classifier(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a classifier from a best-weights file this trainer wrote (``weights_only=True``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model, _ = build_model(blob["arch"], "none", len(blob["classes"]))
    model.load_state_dict(blob["model_state"])
    return model.eval(), blob
