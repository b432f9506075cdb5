"""`sweep` with a clock on each phase: ``python -m benchmarks.phases MARKS.json run SPEC [--set ...]`` runs the
CLI as usual and writes, to MARKS.json, when each phase began and ended (seconds since the process started):
imports, preflight, tracking store, study, Ray start, each trial's start and end, the end of the sweep."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
MARKS: list[tuple[str, float]] = []


def mark(name: str) -> None:
    MARKS.append((name, time.perf_counter() - T0))


def clocked(func: Any, label: str) -> Any:
    """``func`` with ``label <`` and ``label >`` marked around every call."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} <")
        try:
            return func(*args, **kwargs)
        finally:
            mark(f"{label} >")

    return wrapper


def timed(owner: Any, attr: str, label: str) -> None:
    """Mark ``label <`` and ``label >`` around every call of ``owner.attr``."""
    setattr(owner, attr, clocked(getattr(owner, attr), label))


def main() -> None:
    out = Path(sys.argv[1])
    from sweep import cli, cluster, runner, store
    from trainers import TrainerEntry

    mark("imported")
    capability = TrainerEntry.capability

    def timed_preflight(entry: TrainerEntry, name: str) -> Any:  # the trainer's data check, import and call
        return clocked(capability(entry, name), "preflight") if name == "preflight" else capability(entry, name)

    TrainerEntry.capability = timed_preflight  # type: ignore[assignment,method-assign]
    timed(store, "client", "store")
    timed(runner, "_study_storage", "study")
    timed(cluster, "stop_ray", "shutdown")
    start_ray = runner.start_ray

    def start_and_watch(*args: Any, **kwargs: Any) -> None:
        mark("ray <")
        start_ray(*args, **kwargs)
        mark("ray >")
        import ray.tune

        from sweep import progress

        timed(ray.tune.Tuner, "fit", "fit")
        timed(progress.ProgressCallback, "on_trial_start", "trial")
        timed(progress.ProgressCallback, "on_trial_complete", "done")

    runner.start_ray = start_and_watch  # type: ignore[assignment]
    main = cli.main

    def main_and_save(argv: Any = None) -> int:
        code = main(argv)
        out.write_text(json.dumps([*MARKS, ("exit", time.perf_counter() - T0)]))
        return code

    cli.main = main_and_save  # type: ignore[assignment]
    sys.argv = ["sweep", *sys.argv[2:]]
    cli.entry()  # as the `sweep` command ends


if __name__ == "__main__":
    main()
