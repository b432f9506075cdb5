"""Errors a user can act on. The CLI prints them as one line each and exits with code 2."""

from __future__ import annotations

from collections.abc import Sequence

from trainers.base import UserError


class SweepError(UserError):
    """An error in what the user asked of the orchestration (spec, names, paths, the tracking store)."""


class SpecError(SweepError):
    """Every problem found in a spec, each with its YAML path."""

    def __init__(self, problems: Sequence[str], source: str = "spec") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        if count == 1:  # one problem, one line
            super().__init__(f"{source}: {self.problems[0]}")
            return
        super().__init__(f"{source}: {count} problems" + "".join(f"\n  {p}" for p in self.problems))
