"""A sweep's record, ``results/NAME/sweep.json``: written once when the sweep starts, read by every command that
works on it afterwards (resume, evaluate, promote, rerun, report, sync, tensorboard, the study).

It holds what MLflow and the Optuna study do not: which parent run is the sweep's, the spec it ran with (and its
digest, so ``--resume`` refuses a changed one), and where its tracking store and study are (without credentials).
This module is its only reader and writer: a missing or unreadable record is one error naming the sweeps that do
exist in that results folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import SweepError

if TYPE_CHECKING:
    from sweep.spec import Spec

RECORD_FILE = "sweep.json"


@dataclass(frozen=True)
class SweepRecord:
    parent_run_id: str
    experiment_id: str
    spec_hash: str
    tracking_uri: str
    """The tracking store's URI as written (a password in it redacted to ``***``)."""
    study: str | None
    """The Optuna study's storage URL (redacted likewise); None for a sweep from before studies were kept."""
    spec: Mapping[str, Any] = field(default_factory=dict)
    """The spec as the user wrote it (with ``--set`` applied): :meth:`parsed` validates it again."""

    def parsed(self) -> Spec:
        from sweep.spec import parse_spec

        return parse_spec(dict(self.spec))

    def write(self, folder: Path) -> None:
        """Into ``folder``/sweep.json, whole or not at all (a crash mid-write leaves the old record or none)."""
        path = folder / RECORD_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(path)


def record_path(name: str, results: Path) -> Path:
    return results / name / RECORD_FILE


def find_record(name: str, results: Path) -> SweepRecord | None:
    """The record of sweep ``name`` in ``results``, or None where it has none (yet)."""
    path = record_path(name, results)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return SweepRecord(
            parent_run_id=str(data["parent_run_id"]),
            experiment_id=str(data["experiment_id"]),
            spec_hash=str(data["spec_hash"]),
            tracking_uri=str(data.get("tracking_uri", "")),
            study=data.get("study") or None,
            spec=dict(data.get("spec") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise SweepError(f"{path}: not a sweep record ({what}); it is written when a sweep starts") from None


def load_record(name: str, results: Path) -> SweepRecord:
    """The record of sweep ``name`` in ``results``; none is one line naming the sweeps that are there."""
    record = find_record(name, results)
    if record is None:
        raise SweepError(f"no sweep '{name}' in {results}: {known(results)}")
    return record


def known(results: Path) -> str:
    """The sweeps in a results folder, for an error message."""
    names = sorted(p.parent.name for p in results.glob(f"*/{RECORD_FILE}")) if results.is_dir() else []
    none = "no sweep has run there (run one with `sweep run SPEC`, or name another folder with --results)"
    return listing(names, none)


def listing(names: list[str], none: str) -> str:
    """``the sweeps there are a, b and 3 more`` for an error message; ``none`` where there are none."""
    if not names:
        return none
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"the sweeps there are {shown}"
