"""Errors a user can act on. The CLI prints them as one line each and exits with code 2."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

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


_FULL = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or what it was raised from, is a full disk: ENOSPC or EDQUOT, SQLite's "database or disk is
    full", or a worker's error (Ray relays it as text) that says so."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(error) for words in _FULL):
            return True
        error = error.__cause__ or error.__context__
    return False


def out_of_space(folder: os.PathLike | str, margin: int = 1 << 20) -> bool:
    """Whether the disk of ``folder`` has less than ``margin`` bytes left: what explains an error that does not say
    why (Ray reading back the empty error file of a trial that failed on the full disk)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < margin
    except OSError:
        return False


class Fault(NamedTuple):
    """Why a sweep stopped itself before its end (:func:`sweep.interrupts.stop_for`), and what lets ``--resume``
    go on."""

    reason: str
    fix: str

    @classmethod
    def full_disk(cls, folder: os.PathLike | str) -> Fault:
        return cls(no_space(folder), "free some")

    @classmethod
    def store_gone(cls, reason: str) -> Fault:
        return cls(reason, "once it answers")


def no_space(folder: os.PathLike | str) -> str:
    """One line naming the full disk: the folder written to and what is left on its file system."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        left = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB left"
    except OSError:
        left = "full"
    return f"no space left on the disk of {folder} ({left})"
