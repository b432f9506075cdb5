"""Errors a user can act on. The CLI prints them as one line each and exits with code 2."""

from __future__ import annotations

from collections.abc import Sequence


class SweepError(Exception):
    """Base of every error that is the user's to fix (bad input, missing files, wrong names)."""


class SpecError(SweepError):
    """Every problem found in a spec, each with its YAML path."""

    def __init__(self, problems: Sequence[str], source: str = "spec") -> None:
        self.problems = list(problems)
        self.source = source
        count = len(self.problems)
        head = f"{source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))
