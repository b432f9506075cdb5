"""The searcher: Ray Tune's OptunaSearch, telling Optuna each trial's best epoch rather than its last.

The other objectives of a multi-objective sweep are told at the primary metric's best epoch, as the
trial runs' ``best_<metric>`` say them. A diverged trial is told NaN, which Optuna records as failed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from sweep import records
from sweep.errors import Fault, disk_full
from sweep.interrupts import stop_for
from sweep.tags import STATE, TNN, TRIAL_ID
from trainers.direction import better


class BestEpochSearch(OptunaSearch):
    """OptunaSearch whose trials are told the objectives at their best epoch by the primary metric.

    Each Optuna trial carries the sweep's name for it (user attribute ``sweep.trial``: ``tNN``, its number in
    launch order, as in MLflow and the progress lines), its Ray trial id (``sweep.trial_id``) and how it ended
    (``sweep.state``: completed, stopped_early, diverged). A trial the scheduler stopped early stays COMPLETE,
    told its best epoch: Optuna's importance evaluators and plots read COMPLETE trials only, and a stopped trial's
    best epoch is a real result of its configuration. The study's objectives are named after the metrics."""

    def __init__(self, *args: Any, max_epochs: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        try:
            config = super().suggest(trial_id)
        except Exception as e:
            if not disk_full(e):
                raise
            stop_for(Fault.full_disk(self._storage_path()))  # no new trial; the sweep stops, resumable
            return None
        if trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(TRIAL_ID, trial_id)
            records.NUMBERS[trial_id] = ot_trial.number + 1
            ot_trial.set_user_attr(TNN, records.trial_number(ot_trial.number + 1))
            if self._ot_study is not None and self._ot_study.metric_names is None:
                self._ot_study.set_metric_names([m for m, _ in self._objectives()])
        return config  # type: ignore[no-any-return]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self._told(trial_id):
            return
        super().on_trial_result(trial_id, result)
        self._track(trial_id, result)

    def _told(self, trial_id: str) -> bool:
        """Whether the study holds the trial's end already (it ended before a killed driver's last saved state,
        which ``--resume`` restores): telling it again would be Optuna's UpdateFinishedTrialError."""
        trial = self._ot_trials.get(trial_id)
        if trial is None or self._ot_study is None:
            return False
        stored = self._ot_study._storage.get_trial(trial._trial_id)
        return bool(stored.state.is_finished())

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if self._told(trial_id):
            self._ot_trials.pop(trial_id, None)
            self._bests().pop(trial_id, None)
            return
        # Ray hands the result that ends a trial (the scheduler's stop, the last epoch) only to this method.
        if result is not None:
            self._track(trial_id, result)
        best = self._bests().pop(trial_id, None)
        last = (result or {}).get(self._objectives()[0][0])
        diverged = isinstance(last, float) and math.isnan(last)
        if result is not None and best and not diverged:
            result = {**result, **best}
        if result is not None and not error and trial_id in self._ot_trials:
            planned = int(records.flat_config(result.get("config") or {}).get("epochs", self.max_epochs))
            state = records.end_state(int(result.get("epoch", 0)), planned, diverged)
            self._ot_trials[trial_id].set_user_attr(STATE, state)
        try:
            super().on_trial_complete(trial_id, result, error)
        except Exception as e:
            if not disk_full(e):
                raise
            stop_for(Fault.full_disk(self._storage_path()))  # the study learns it on --resume (the records say)

    def _storage_path(self) -> str:
        """Where the study is kept, for a message: its SQLite file's folder, or its database."""
        url = str(getattr(self._ot_study._storage, "url", "") if self._ot_study is not None else "")
        return str(Path(url.removeprefix("sqlite:///")).parent) if url.startswith("sqlite:///") else url or "study"

    def _objectives(self) -> list[tuple[str, str]]:
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        modes = self._mode if isinstance(self._mode, list) else [self._mode] * len(metrics)
        return [(str(m), str(d)) for m, d in zip(metrics, modes, strict=True)]

    def _bests(self) -> dict[str, dict[str, float]]:
        """Trial id → the objectives at its best epoch so far; pickled with the searcher (kept by --resume)."""
        if not hasattr(self, "_best_epochs"):
            self._best_epochs: dict[str, dict[str, float]] = {}
        return self._best_epochs

    def _track(self, trial_id: str, result: dict[str, Any]) -> None:
        (metric, mode), *_ = self._objectives()
        value = result.get(metric)
        if better(value, self._bests().get(trial_id, {}).get(metric), mode):
            self._bests()[trial_id] = {m: result[m] for m, _ in self._objectives() if m in result}
