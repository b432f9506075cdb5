"""Live progress of a sweep: one line whenever a trial starts, ends or improves the best."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ray.tune import Callback

from sweep import records
from sweep.records import flat_config
from sweep.tags import STOP_REASON

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

    def _value(self, trial: Trial) -> float | None:
        """The trial's value at its best epoch so far (Ray keeps each metric's max and min over the epochs)."""
        value = trial.metric_analysis.get(self.metric, {}).get(self.mode)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def _best(self, trials: list[Trial]) -> tuple[float, str] | None:
        scored = [(v, name(trials, t)) for t in trials if (v := self._value(t)) is not None]
        if not scored:
            return None
        return max(scored) if self.mode == "max" else min(scored)

    def line(self, trials: list[Trial], ending: Trial | None = None, status: str = "TERMINATED") -> str:
        """The counts, with ``ending`` (whose end Ray is announcing) counted in ``status`` already."""
        states = [status if t is ending else t.status for t in trials]
        counts = {s: states.count(s) for s in ("TERMINATED", "RUNNING", "ERROR", "PENDING")}
        best = self._best(trials)
        best_text = f"best {self.metric}={best[0]:.4f} ({best[1]})" if best else f"best {self.metric}=–"
        elapsed = time.monotonic() - self._start
        return (
            f"[{self.name}] {counts['TERMINATED']}/{self.total} done · {counts['RUNNING']} running · "
            f"{counts['ERROR']} errored · {best_text} · {elapsed:.0f}s"
        )

    def _print(self, trials: list[Trial], event: str = "", ending: Trial | None = None, status: str = "") -> None:
        stream = self.stream or sys.stdout
        print(self.line(trials, ending, status) + (f" · {event}" if event else ""), file=stream, flush=True)
        self._last = time.monotonic()

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        values = flat_config(trial.config).items()
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)
        self._print(trials, f"started {name(trials, trial)}: {config}")

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if time.monotonic() - self._last > 15:
            self._print(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        reason = (trial.last_result or {}).get(f"info/{STOP_REASON}")
        if reason:
            self._print(trials, f"stopped {name(trials, trial)}: {reason}", trial, "TERMINATED")
            return
        value = self._value(trial)
        shown = f"{value:.4f}" if value is not None else "–"
        event = f"finished {name(trials, trial)} after {epochs} epochs, best {self.metric}={shown}"
        self._print(trials, event, trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        from sweep.tracking import error_line

        self._print(trials, f"errored {name(trials, trial)}: {error_line(trial)}", trial, "ERROR")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self._print(trials, "sweep ended")


def name(trials: list[Trial], trial: Trial) -> str:
    """The trial's ``tNN``: its number in launch order (Ray keeps its trials in creation order, across a resume),
    as MLflow's run names, ``status``, the export and the Optuna study call it; a re-run's run name (``t09 seed
    2``)."""
    config = flat_config(trial.config)
    if "rerun_of_run" in config:
        return records.run_name(0, config)
    return records.trial_number(records.number_of(trial.trial_id, trials.index(trial) + 1 if trial in trials else 0))
