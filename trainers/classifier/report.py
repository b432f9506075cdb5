"""Score a trained classifier on the test part: the numbers and files a report needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from trainers.classifier import loader
from trainers.classifier.config import ClassifierData
from trainers.classifier.data import load_splits
from trainers.classifier.engine import Precision, evaluate
from trainers.classifier.trainer import load_classifier
from trainers.lifecycle import pick_device


def evaluate_checkpoint(
    weights: Path,
    dataset: dict,
    out_dir: Path,
    cache_dir: Path | None = None,
    model_spec: dict | None = None,
    hparams: dict | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    """Top-1, top-5, mean per-class accuracy and loss on the test part; per-class precision / recall /
    F1 (``per_class.csv``) and the confusion matrix (``confusion.csv``, ``confusion.png``) in ``out_dir``.
    (``model_spec`` and ``hparams``: the checkpoint holds what this trainer needs.)"""
    cfg = ClassifierData.model_validate(dataset)
    model, blob = load_classifier(weights)
    splits = load_splits(cfg)
    if blob["classes"] != splits.classes:
        raise ValueError(
            f"the checkpoint's classes do not match the dataset's ({len(blob['classes'])} vs {len(splits.classes)})"
        )
    images, ok = loader.decoded(splits, cfg.image_size, cache_dir)
    test = splits.test[ok[splits.test]]
    device = pick_device("auto")
    model.to(device)
    loss, logits, target = evaluate(
        model, loader.cached_batches(images, splits.labels, test, batch_size, False, 0), Precision(device, True)
    )
    preds, y = torch.from_numpy(logits), torch.from_numpy(target)
    n = len(splits.classes)
    metrics = {
        "test_top1": multiclass_accuracy(preds, y, n, average="micro").item(),
        "test_top5": multiclass_accuracy(preds, y, n, average="micro", top_k=min(5, n)).item(),
        "test_mean_class_acc": multiclass_accuracy(preds, y, n, average="macro").item(),
        "test_loss": loss,
        "test_n": float(len(test)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = pd.DataFrame(
        {
            "class": splits.classes,
            "precision": multiclass_precision(preds, y, n, average=None).numpy(),
            "recall": multiclass_recall(preds, y, n, average=None).numpy(),
            "f1": multiclass_f1_score(preds, y, n, average=None).numpy(),
            "support": np.bincount(target, minlength=n),
        }
    )
    per_class.to_csv(out_dir / "per_class.csv", index=False)
    confusion = multiclass_confusion_matrix(preds, y, n).numpy()
    pd.DataFrame(confusion, index=splits.classes, columns=splits.classes).to_csv(out_dir / "confusion.csv")
    _plot_confusion(confusion, splits.classes, out_dir / "confusion.png")
    return metrics


def _plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = min(20, max(4, len(classes) * 0.25 + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    rows = confusion.sum(axis=1, keepdims=True).clip(min=1)
    im = ax.imshow(confusion / rows, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=90)
        ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def features(
    weights: Path, dataset: dict, cache_dir: Path | None = None, limit: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Penultimate-layer features (the input of the classification head) of the test part, at most ``limit``
    images drawn with ``seed``; with their labels and the class names: what a t-SNE map is drawn from."""
    from trainers.classifier.models import head_name

    cfg = ClassifierData.model_validate(dataset)
    model, blob = load_classifier(weights)
    splits = load_splits(cfg)
    images, ok = loader.decoded(splits, cfg.image_size, cache_dir)
    test = splits.test[ok[splits.test]]
    if len(test) > limit:
        test = np.sort(np.random.default_rng(seed).choice(test, limit, replace=False))
    captured: list[torch.Tensor] = []
    head = model.get_submodule(head_name(model))
    hook = head.register_forward_hook(lambda module, args, out: captured.append(args[0].flatten(1).cpu()))
    try:
        device = pick_device("auto")
        model.to(device)
        evaluate(model, loader.cached_batches(images, splits.labels, test, 256, False, 0), Precision(device, True))
    finally:
        hook.remove()
    return torch.cat(captured).numpy(), splits.labels[test], list(blob["classes"])
