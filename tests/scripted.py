"""A trainer for the tests of orchestration (resume, outages, the cluster, errors, refusals), not of learning.

Its metrics follow a script of the sampled parameters and the epoch (a learning curve whose height peaks at
``lr = 0.01``); it trains no network and imports no torch, but every epoch goes through the real
:class:`trainers.lifecycle.Lifecycle`: best files, checkpoints, restore after a kill, early stopping and the
report take the path a real trainer's take. Faults are parameters: an epoch that takes ``epoch_s`` seconds,
an exception in epoch ``fail_at``, a loss that diverges in ``diverge_at``, a worker that dies (``os._exit``) in
``exit_at`` on its first attempt.

Registered as ``scripted`` when this module is imported: the tests' conftest imports it, and a ``sweep``
process of a test names it in ``SWEEP_TRAINER_MODULES``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from trainers import TRAINERS, Reporter, TrainerEntry, TrialParams, TrialResult
from trainers.base import Diverged, typed
from trainers.lifecycle import Lifecycle

METRICS = ("val_top1", "val_top5", "val_loss", "train_loss")
WEIGHTS = "best.pt"
TRAINED = "trained.log"
"""One line per epoch the trial trained, in its work folder."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScriptedData(_Strict):
    name: str = "scripted"
    classes: int = 10


class ScriptedModel(_Strict):
    arch: str = "scripted"
    weights: str = "none"


class ScriptedHParams(_Strict):
    epochs: int = 3
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    epoch_s: float = 0.0
    """Seconds each epoch takes (a test that kills a sweep needs it still running)."""
    fail_at: int = 0
    """Raise in this epoch: the trial errors (Ray retries it up to budget.max_failures)."""
    diverge_at: int = 0
    """The training loss becomes NaN in this epoch."""
    exit_at: int = 0
    """The worker process dies in this epoch, on the trial's first attempt only (a retry goes on)."""
    peak_at: int = 0
    """The metrics get worse after this epoch (0: they improve to the end), so the last epochs are no new best."""
    fail_once_at: int = 0
    """Raise in this epoch on the trial's first attempt only (a retry or --resume goes on from its checkpoint)."""


def curve(hp: ScriptedHParams, epoch: int, seed: int = 0) -> dict[str, float]:
    """The scripted epoch: accuracy rises with the epochs towards a ceiling set by the learning rate (and, by a
    few tenths of a point, the seed: repeats with new seeds spread as real ones do)."""
    noise = 0.004 * ((seed * 2654435761) % 1000) / 1000
    height = math.exp(-((math.log10(hp.lr) + 2.0) ** 2) / 2) * (0.95 if hp.optimizer == "adamw" else 0.9) + noise
    at = min(epoch, hp.peak_at) if hp.peak_at else epoch
    top1 = 0.1 + (height - 0.1) * (1 - math.exp(-at / 1.5)) if height > 0.1 else 0.1
    top1 -= 0.01 * (epoch - at)
    loss = 2.3 * (1 - top1) + (0.3 if hp.optimizer == "adamw" else 0.05)  # adamw: higher, but less sure
    return {"val_top1": top1, "val_top5": min(1.0, top1 + 0.3), "val_loss": loss, "train_loss": loss * 0.9}


class ScriptedTrainer:
    """:class:`trainers.Trainer` whose epochs are :func:`curve`."""

    def fit(self, params: TrialParams, reporter: Reporter) -> TrialResult:
        hp = typed(ScriptedHParams, params.hparams)
        params.work_dir.mkdir(parents=True, exist_ok=True)
        life = Lifecycle(params, reporter, [WEIGHTS], ("val_top1", "max"))
        resumed = life.resume(params.resume_from) is not None or life.epoch > 0
        info = {"data.n_classes": typed(ScriptedData, params.dataset).classes, "weights.source": "none"}
        for epoch in life.epochs(hp.epochs):
            time.sleep(hp.epoch_s)
            if epoch == hp.exit_at and not resumed:
                os._exit(3)
            if epoch == hp.fail_at or (epoch == hp.fail_once_at and not resumed):
                raise RuntimeError(f"scripted failure in epoch {epoch}")
            if epoch == hp.diverge_at:
                raise Diverged(f"non-finite training loss (nan) after {epoch * hp.batch_size} images")
            metrics = {"epoch": float(epoch), **curve(hp, epoch, params.seed), "lr": hp.lr}
            with open(params.work_dir / TRAINED, "a") as log:  # what a test reads to see nothing trained twice
                log.write(f"{epoch}\n")

            def save_best(metrics: dict[str, float] = metrics) -> None:
                tmp = params.work_dir / f"{WEIGHTS}.tmp"
                tmp.write_text(json.dumps({"epoch": metrics["epoch"], "metrics": metrics}))
                tmp.replace(params.work_dir / WEIGHTS)

            def save_state(folder: Path, epoch: int = epoch) -> None:
                (folder / "state.json").write_text(json.dumps({"epoch": epoch, "seed": params.seed}))

            life.end_epoch(metrics, save_best, save_state, info)
        return life.result(info)


def best_weights(path: Path) -> dict:
    """What a scripted trial's ``best.pt`` holds: its best epoch and that epoch's metrics."""
    return json.loads(Path(path).read_text())


if "scripted" not in TRAINERS:
    TRAINERS.add(
        "scripted",
        TrainerEntry(ScriptedData, ScriptedModel, ScriptedHParams, "tests.scripted:ScriptedTrainer", metrics=METRICS),
    )
