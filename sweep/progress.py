"""Live progress of a sweep: one line whenever a trial starts, ends or improves the best."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ray.tune import Callback

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


class ProgressCallback(Callback):
    """Prints ``[name] done/total · running · errored · best metric (trial)`` to the terminal."""

    def __init__(self, name: str, metric: str, mode: str, total: int, stream: TextIO | None = None) -> None:
        self.name, self.metric, self.mode, self.total = name, metric, mode, total
        self.stream = stream
        self._last = 0.0
        self._start = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None}

    def _best(self, trials: list[Trial]) -> tuple[float, str] | None:
        scored = [(t.metric_analysis.get(self.metric, {}).get(self.mode), t.trial_id) for t in trials]
        scored = [(v, t) for v, t in scored if isinstance(v, (int, float)) and math.isfinite(v)]
        if not scored:
            return None
        return max(scored) if self.mode == "max" else min(scored)

    def line(self, trials: list[Trial]) -> str:
        counts = {s: sum(t.status == s for t in trials) for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        best = self._best(trials)
        best_text = f"best {self.metric}={best[0]:.4f} ({best[1]})" if best else f"best {self.metric}=–"
        elapsed = time.monotonic() - self._start
        return (
            f"[{self.name}] {counts['TERMINATED']}/{self.total} done · {counts['RUNNING']} running · "
            f"{counts['ERROR']} errored · {best_text} · {elapsed:.0f}s"
        )

    def _print(self, trials: list[Trial], event: str = "") -> None:
        stream = self.stream or sys.stdout
        print(self.line(trials) + (f" · {event}" if event else ""), file=stream, flush=True)
        self._last = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        from sweep.runner import flat_config

        values = flat_config(trial.config).items()
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)
        self._print(trials, f"started {trial.trial_id}: {config}")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if time.monotonic() - self._last > 15:
            self._print(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        epochs = (trial.last_result or {}).get("epoch", 0)
        reason = (trial.last_result or {}).get("info/sweep.stop_reason")
        if reason:
            self._print(trials, f"stopped {trial.trial_id}: {reason}")
            return
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "–"
        self._print(trials, f"finished {trial.trial_id} after {epochs} epochs, {self.metric}={shown}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        from sweep.tracking import error_line

        self._print(trials, f"errored {trial.trial_id}: {error_line(trial)}")
