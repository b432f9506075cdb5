"""The report's figures, drawn with matplotlib (and Optuna's matplotlib plots): each function writes one PNG
with a title, labelled axes (units where there are any) and a legend where lines need one."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sweep.records import trial_number

DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def curves(histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], metric: str, path: Path) -> Path:
    """Validation metric and losses per epoch of the top trials: ``{trial: {metric: [(epoch, value)]}}``."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (trial, series) in enumerate(histories.items()):
        color = f"C{i % 10}"
        if metric in series:
            left.plot(*zip(*series[metric], strict=True), marker="o", ms=3, color=color, label=trial)
        for loss, style in (("train_loss", "--"), ("val_loss", "-")):
            if series.get(loss):
                right.plot(*zip(*series[loss], strict=True), style, color=color, label=f"{trial} {loss}")
    left.set(title=f"{metric} per epoch, best trials", xlabel="epoch", ylabel=metric)
    right.set(title="loss per epoch (dashed: train, solid: val)", xlabel="epoch", ylabel="loss")
    left.legend(fontsize=7, loc="best")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def grouped_curves(groups: Mapping[str, Sequence[tuple[int, float]]], metric: str, key: str, path: Path) -> Path:
    """The best trial's curve of each group (pretrained vs scratch when ``weights`` was searched)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (group, series) in enumerate(groups.items()):
        ax.plot(*zip(*series, strict=True), marker="o", ms=3, color=f"C{i}", label=f"{key}={group}")
    ax.set(title=f"{metric} per epoch, best trial of each {key}", xlabel="epoch", ylabel=metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def optuna_plot(kind: str, study: Any, path: Path, **kwargs: Any) -> Path:
    """One of Optuna's matplotlib plots (optimization history, param importances, parallel coordinates); trials on
    the history's axis are named as everywhere else, ``tNN`` (Optuna's number + 1), not Optuna's 0-based numbers."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    from optuna.visualization import matplotlib as vm

    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        ax = getattr(vm, f"plot_{kind}")(study, **kwargs)
        fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).get_figure()
        fig.set_size_inches(9, 4.8)
        for a in fig.axes:
            if kind == "optimization_history":
                a.xaxis.set_major_locator(MaxNLocator(integer=True))
                a.xaxis.set_major_formatter(FuncFormatter(_tnn))
                a.set_xlabel("trial")
            for label in a.get_xticklabels():
                label.set_rotation(30)
                label.set_horizontalalignment("right")
        _save(fig, path)
    plt.style.use("default")  # Optuna's plots switch the global style to ggplot; the next figure is ours
    return path


def _tnn(x: float, _: Any = None) -> str:
    """An axis position of Optuna's trial number as the trial's name (``t01`` for number 0)."""
    number = int(round(x))
    return trial_number(number + 1) if number >= 0 and abs(x - number) < 1e-6 else ""


def confusion(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    plt = _plt()
    side = min(14, max(4.5, len(classes) * 0.35 + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    rows = matrix.sum(axis=1, keepdims=True).clip(min=1)
    im = ax.imshow(matrix / rows, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 40:
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.grid(False)
    ax.set(title="confusion matrix, test part", xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    return _save(fig, path)


def tsne(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path, seed: int = 0) -> Path:
    """A t-SNE map of penultimate-layer features, one colour per class."""
    from sklearn.manifold import TSNE

    plt = _plt()
    perplexity = max(2.0, min(30.0, (len(features) - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for c, name in enumerate(classes):
        keep = labels == c
        if keep.any():
            ax.scatter(points[keep, 0], points[keep, 1], s=9, color=cmap(c % cmap.N), label=name)
    ax.set(title="t-SNE of the best model's penultimate features, test part", xlabel="t-SNE 1", ylabel="t-SNE 2")
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best", title="class")
    return _save(fig, path)


def per_class_ap(rows: Sequence[Mapping[str, Any]], column: str, path: Path) -> Path:
    """Per-class AP bars of the best detector."""
    plt = _plt()
    names = [str(r["class"]) for r in rows]
    values = [float(r[column]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.2))
    ax.bar(names, values, color="C0")
    ax.set(title=f"per-class {column} of the best detector", xlabel="class", ylabel=f"{column} (0–1)", ylim=(0, 1))
    ax.tick_params(axis="x", rotation=45)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return _save(fig, path)


def page(images: Sequence[Path], titles: Sequence[str], title: str, path: Path) -> Path:
    """Several pictures on one page (first-stage proposals beside final predictions)."""
    from PIL import Image

    plt = _plt()
    fig, axes = plt.subplots(len(images), 1, figsize=(10, 3.6 * len(images)), squeeze=False)
    for ax, image, name in zip(axes[:, 0], images, titles, strict=True):
        ax.imshow(np.asarray(Image.open(image).convert("RGB")))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)
