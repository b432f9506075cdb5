"""The life of one trial, written once and composed by every trainer.

A trainer keeps only what is its own (model, data, optimizer, one epoch of training and scoring);
:class:`Lifecycle` does the rest the same way for all of them: the device, the best epoch by the
sweep's metric and mode, the best files written once per improvement, the full state checkpointed
(at each new best and every ``checkpoint_every_s``, never after the last epoch) and restored after a
kill (best-so-far and history included), the per-epoch report, early stopping, and
:class:`DivergenceGuard`, the check that ends a trial whose loss is NaN or exploded.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.base import Diverged, InputError, Reporter, Scalar, TrialParams, TrialResult, link_or_copy
from trainers.direction import better

if TYPE_CHECKING:  # torch is imported where it is used: a trainer without a network (tests) never pays for it
    import torch

STATE_FILE, TORCH_STATE = "lifecycle.json", "state.pt"
EXPLOSION_FACTOR = 1e3
"""A training loss this many times the first batch's (at least 1) is divergence, not a bad epoch."""


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start(params: TrialParams) -> torch.device:
    """Seed, thread count, work folder and GPU memory share of a trial; returns the device it trains on."""
    import torch

    torch.manual_seed(params.seed)
    torch.set_num_threads(max(1, params.threads))
    params.work_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(params.device)
    if device.type == "cuda" and 0 < params.gpu_fraction < 1:
        torch.cuda.set_per_process_memory_fraction(params.gpu_fraction, device)
    return device


class DivergenceGuard:
    """Raises :class:`Diverged` when a batch's loss is not finite, or exceeds ``factor`` times the first
    batch's loss: a loss of 4e9 at chance accuracy is a diverged trial, not a completed one."""

    def __init__(self, factor: float = EXPLOSION_FACTOR) -> None:
        self.factor = factor
        self.reference: float | None = None

    def check(self, loss: float, seen: int, terms: Callable[[], str] | None = None) -> None:
        """``loss`` of the batch after ``seen`` images; ``terms`` describes its parts in the message."""
        if not math.isfinite(loss):
            raise Diverged(f"non-finite training loss ({terms() if terms else loss}) after {seen} images")
        if self.reference is None:
            self.reference = max(loss, 1.0)
        elif loss > self.factor * self.reference:
            raise Diverged(
                f"training loss exploded ({terms() if terms else f'{loss:.4g}'}, over {self.factor:.0f}x the "
                f"first batch's {self.reference:.3g}) after {seen} images"
            )


@dataclass
class Best:
    """The best epoch so far by one metric and its direction."""

    metric: str
    mode: str
    value: float | None = None
    epoch: int = 0

    def update(self, metrics: Mapping[str, float]) -> bool:
        """Take an epoch's metrics; True when they are the new best."""
        if self.metric not in metrics:
            have = ", ".join(sorted(k for k in metrics if k != "epoch"))
            raise InputError(f"metric: the trainer reports no '{self.metric}' (it reports {have})")
        value = float(metrics[self.metric])
        if better(value, self.value, self.mode):
            self.value, self.epoch = value, int(metrics["epoch"])
            return True
        return False


class Lifecycle:
    """Epoch bookkeeping of one trial. ``best_files`` are the files (in the work folder) that the trainer
    writes for its best epoch; the first is the best weights."""

    def __init__(
        self,
        params: TrialParams,
        reporter: Reporter,
        best_files: Sequence[str],
        default_metric: tuple[str, str],
    ) -> None:
        metric, mode = (params.metric, params.mode) if params.metric else default_metric
        self.best = Best(metric, mode)
        self.work_dir, self.reporter, self.best_files = params.work_dir, reporter, tuple(best_files)
        self.every_s = params.checkpoint_every_s
        self.total = 0
        """The trial's planned epochs (set by :meth:`epochs`); 0 = unknown, every checkpoint holds the state."""
        self._saved_at = time.monotonic()
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.extra: dict[str, Scalar] = {}
        """Small trainer state that must survive a resume (e.g. the out-of-memory accumulation)."""
        self._sent: dict[str, Scalar] | None = None

    def resume(self, ckpt: Path | None) -> Path | None:
        """Continue from a checkpoint this lifecycle saved: epoch, history, best-so-far and the best files
        come back. Returns ``ckpt`` so the trainer restores its own state from it."""
        if ckpt is None:
            return None
        saved = json.loads((ckpt / STATE_FILE).read_text())
        self.epoch, self.history, self.extra = int(saved["epoch"]), saved["history"], saved["extra"]
        best = saved["best"]
        if (best["metric"], best["mode"]) == (self.best.metric, self.best.mode):
            self.best = Best(**best)
        for name in self.best_files:
            if (ckpt / name).exists():
                link_or_copy(ckpt / name, self.work_dir / name)
        return ckpt if saved.get("state", True) else None  # a finished trial's last checkpoint: nothing to load

    def epochs(self, total: int) -> range:
        """The epochs still to run."""
        self.total = total
        return range(self.epoch + 1, total + 1)

    def end_epoch(
        self,
        metrics: Mapping[str, float],
        save_best: Callable[[], None],
        save_state: Callable[[Path], None],
        info: Mapping[str, Scalar] | None = None,
    ) -> bool:
        """Record one epoch: on a new best ``save_best()`` writes the best files. The epoch is reported with the
        metrics, and with a checkpoint folder when a resume or the tracking store can use one: on a new best (the
        best files, linked, not copied) and when ``checkpoint_every_s`` has passed since the last one; the full
        state (``save_state(folder)``) in each, except after the last planned epoch, which nothing resumes.
        ``info`` is reported when it changed. True when the epoch is the best."""
        improved = self.best.update(metrics)
        if improved:
            save_best()
        self.epoch = int(metrics["epoch"])
        self.history.append(dict(metrics))
        facts = dict(info or {})
        changed = facts != self._sent
        self._sent = facts
        final = bool(self.total) and self.epoch >= self.total
        due = self.every_s <= 0 or time.monotonic() - self._saved_at >= self.every_s
        if not improved and (final or not due):
            self.reporter.report(metrics, None, facts if changed else None)
            return improved
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            ckpt = Path(tmp)
            if not final:
                save_state(ckpt)
                self._saved_at = time.monotonic()
            state = {
                "epoch": self.epoch,
                "history": self.history,
                "extra": self.extra,
                "best": asdict(self.best),
                "state": not final,
            }
            (ckpt / STATE_FILE).write_text(json.dumps(state))
            for name in self.best_files:
                if (self.work_dir / name).exists():
                    link_or_copy(self.work_dir / name, ckpt / name)
            self.reporter.report(metrics, ckpt, facts if changed else None)
        return improved

    def stale(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs (0 = never) without a new best."""
        return bool(patience) and self.epoch - self.best.epoch >= patience

    def result(self, info: Mapping[str, Scalar]) -> TrialResult:
        best = next((m for m in self.history if int(m["epoch"]) == self.best.epoch), self.history[-1])
        return TrialResult(dict(best), self.epoch, self.work_dir / self.best_files[0], dict(info))


def save_parts(parts: Mapping[str, Any]) -> Callable[[Path], None]:
    """A ``save_state`` for :meth:`Lifecycle.end_epoch`: the state dicts of ``parts`` (model, optimizer,
    schedulers; None for an absent one) in the checkpoint folder's ``state.pt``."""

    def save(folder: Path) -> None:
        import torch

        torch.save({k: v.state_dict() if v is not None else None for k, v in parts.items()}, folder / TORCH_STATE)

    return save


def load_parts(folder: Path, parts: Mapping[str, Any]) -> None:
    """Restore ``parts`` from a folder :func:`save_parts` wrote (``weights_only=True``)."""
    import torch

    blob = torch.load(folder / TORCH_STATE, map_location="cpu", weights_only=True)
    for key, part in parts.items():
        if part is not None and blob.get(key) is not None:
            part.load_state_dict(blob[key])


def save_atomic(path: Path, blob: object) -> None:
    """``torch.save`` to a temporary name, then rename: a reader never sees half a file."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


class Histograms:
    """Weight and gradient histograms of every trainable parameter, each epoch, as TensorBoard event files in
    the trial's ``tb/`` folder (``fixed.log_histograms: true``): the parameter-gradient distributions a report
    monitors. Gradients are the last batch's of the epoch."""

    def __init__(self, work_dir: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(work_dir / "tb"))

    def write(self, model: torch.nn.Module, epoch: int) -> None:
        if self.writer is None:
            return
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), epoch)
                if param.grad is not None:
                    self.writer.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), epoch)
        self.writer.flush()
