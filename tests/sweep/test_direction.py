"""The best epoch is decided in one place (:mod:`trainers.direction`): the trial's lifecycle, the searcher, the
tracking callback and the records read back pick the same epoch, for a metric to maximise and one to minimise, when
the first value is NaN (a diverged first epoch) and when a later epoch only ties the best (the first best stays)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest

from sweep.records import improved
from sweep.searcher import BestEpochSearch
from sweep.tracking import MlflowCallback
from trainers.direction import Direction, better
from trainers.lifecycle import Best

CASES = {
    "max": ([math.nan, 0.5, 0.7, 0.7, 0.6], 3),
    "min": ([math.nan, 0.5, 0.3, 0.3, math.inf], 3),
}


def by_lifecycle(values: list[float], mode: str) -> int:
    best = Best("score", mode)
    for epoch, value in enumerate(values, 1):
        best.update({"score": value, "epoch": epoch})
    return best.epoch


def by_searcher(values: list[float], mode: str) -> int:
    search: Any = object.__new__(BestEpochSearch)
    search._metric, search._mode = ["score", "epoch"], [mode, "max"]
    for epoch, value in enumerate(values, 1):
        search._track("t", {"score": value, "epoch": epoch})
    return int(search._bests()["t"]["epoch"])


def by_tracking(values: list[float], mode: str) -> int:
    callback: Any = object.__new__(MlflowCallback)
    callback.metric, callback.mode = "score", mode
    callback._best, callback._improved, callback._nodes = {}, set(), {}
    callback._submit = lambda *args, **kwargs: None  # the journal is not the subject here
    trial, last = SimpleNamespace(trial_id="t", config={}), 0
    for epoch, value in enumerate(values, 1):
        callback.on_trial_result(epoch, [trial], trial, {"score": value, "epoch": epoch})
        if "t" in callback._improved:
            last = epoch
            callback._improved.discard("t")  # as on_checkpoint does once it took the best files
    return last


def by_records(values: list[float], mode: str) -> int:
    held, at = None, 0
    for epoch, value in enumerate(values, 1):
        if improved(value, held, mode):
            held, at = value, epoch
    return at


@pytest.mark.parametrize("mode", sorted(CASES))
def test_every_side_picks_the_same_best_epoch(mode: str) -> None:
    values, expected = CASES[mode]
    picks = {f.__name__: f(values, mode) for f in (by_lifecycle, by_searcher, by_tracking, by_records)}
    assert set(picks.values()) == {expected}, picks


def test_a_direction_is_the_specs_mode() -> None:
    assert Direction.of("max") is Direction.MAXIMIZE and Direction.of("min").sign == -1.0
    assert better(1, None, "min") and not better(math.nan, None, "max") and not better(True, None, "max")
    with pytest.raises(ValueError):
        Direction.of("maximise")
