"""Which way a metric improves, decided in one place for every side of a sweep (the trial's lifecycle, the searcher,
the tracking callback, the records read back): Optuna's ``StudyDirection`` habit, spelled as the spec spells it."""

from __future__ import annotations

import enum
import math


class Direction(enum.Enum):
    """A metric's direction; its value is the spec's ``mode``."""

    MAXIMIZE = "max"
    MINIMIZE = "min"

    @classmethod
    def of(cls, mode: str | Direction) -> Direction:
        """The direction of a spec's ``mode`` ("max" or "min")."""
        return mode if isinstance(mode, Direction) else cls(mode)

    @property
    def sign(self) -> float:
        """+1 where larger is better, -1 where smaller is: ``sign * value`` is always maximised."""
        return 1.0 if self is Direction.MAXIMIZE else -1.0

    def better(self, value: object, than: float | None) -> bool:
        """Whether ``value`` is a new best over ``than`` (None: nothing yet). Only a finite number can be: a NaN or
        infinite value (a diverged epoch) never is, even first."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return than is None or (value > than if self is Direction.MAXIMIZE else value < than)


def better(value: object, than: float | None, mode: str | Direction) -> bool:
    """:meth:`Direction.better` for a spec's ``mode``."""
    return Direction.of(mode).better(value, than)
