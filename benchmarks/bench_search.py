"""Search efficiency: `sweep run` strategies against the full grid of the same space, on digits, over several seeds.

The space is the seeds' kind of grid: lr × optimizer × weight decay (36 points), each trial up to E epochs. The grid
runs every point to the end (FIFO); random search runs a third of the points to the end (no early stopping); each
`sweep` strategy (a sampler and an early-stopping scheduler) runs the trial budget it is given. Every trial of a
configuration trains the same way in every run (same seed), so the grid's best is the bar. From Ray's per-epoch
results (``tune/*/result.json``) in the order they happened: the epochs (and seconds) each strategy spent until one
of its trials came within ``--within`` of the grid's best, and the best it reached within a fifth of the grid's epochs.

    .venv/bin/python -m benchmarks.bench_search --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.publish import demo_sweep, machine, publish

METRIC = "val_top1"


@dataclass(frozen=True)
class Strategy:
    name: str
    overrides: tuple[str, ...]


@dataclass
class Trace:
    """One sweep's epochs in the order they were reported: (seconds since start, trial, epoch, value)."""

    wall: float
    events: list[tuple[float, str, int, float]]

    @property
    def epochs(self) -> int:
        return len(self.events)

    def best(self, within_epochs: int | None = None) -> float:
        events = self.events[:within_epochs] if within_epochs is not None else self.events
        return max((v for *_, v in events), default=float("nan"))

    def reach(self, target: float) -> tuple[int, float] | None:
        """Epochs and seconds spent until a reported value was ``target`` or better."""
        for i, (t, _, _, v) in enumerate(self.events):
            if v >= target - 1e-12:
                return i + 1, t
        return None


def space(quick: bool) -> dict[str, dict]:
    if quick:
        return {
            "lr": {"type": "categorical", "choices": [0.003, 0.1]},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
        }
    return {
        "lr": {"type": "categorical", "choices": [0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
        "weight_decay": {"type": "categorical", "choices": [1.0e-5, 1.0e-3, 1.0e-1]},
    }


def points(search: dict[str, dict]) -> int:
    n = 1
    for p in search.values():
        n *= len(p["choices"])
    return n


def run(name: str, search: dict[str, dict], epochs: int, image_size: int, overrides: Sequence[str]) -> Trace:
    """`sweep run` of the demo spec on ``search``; its per-epoch results from Ray's result files."""
    base = [
        f"name={name}",
        f"search={json.dumps(search)}",
        f"fixed.epochs={epochs}",
        f"dataset.image_size={image_size}",
        "model.arch=small_cnn",
        "budget.max_concurrent=2",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        demo_sweep([*base, *overrides], Path(tmp))
        wall = time.time() - start
        events = []
        for result in (Path(tmp) / "results" / name / "tune").glob("*/result.json"):
            for line in result.read_text().splitlines():
                row = json.loads(line)
                if METRIC in row and row[METRIC] == row[METRIC]:  # NaN: a diverged trial's last report
                    events.append((float(row["timestamp"]) - start, result.parent.name, int(row["epoch"]), row[METRIC]))
        events.sort()
        return Trace(wall, events)


def strategies(n_points: int, quick: bool, seed: int) -> list[Strategy]:
    trials = max(2, n_points * 2 // 3)

    def tpe(startup: int) -> str:
        return f"sampler={{name: tpe, seed: {seed}, n_startup_trials: {startup}}}"

    found = [
        Strategy(
            "random, no early stopping",
            (
                f"sampler={{name: random, seed: {seed}}}",
                "scheduler.name=fifo",
                f"budget.trials={max(2, n_points // 3)}",
            ),
        ),
        Strategy(
            "TPE (4 startup) + ASHA (grace 1, rf 3)",
            (
                tpe(4),
                "scheduler={name: asha, grace_period: 1, reduction_factor: 3}",
                f"budget.trials={trials}",
            ),
        ),
    ]
    if quick:
        return found
    asha = "scheduler={{name: asha, grace_period: {g}, reduction_factor: {r}}}"
    return found + [
        Strategy(
            "TPE (8 startup) + ASHA (grace 1, rf 3)",
            (tpe(8), asha.format(g=1, r=3), f"budget.trials={trials}"),
        ),
        Strategy(
            "TPE (4 startup) + ASHA (grace 1, rf 4)",
            (tpe(4), asha.format(g=1, r=4), f"budget.trials={trials}"),
        ),
        Strategy(
            "TPE (4 startup) + ASHA (grace 2, rf 3)",
            (tpe(4), asha.format(g=2, r=3), f"budget.trials={trials}"),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 grid points, 2 epochs, 1 seed: checks that it works")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--within", type=float, default=0.005, help="of the grid's best (0.005 = half a point)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    seeds, epochs = (1, 2) if args.quick else (args.seeds, args.epochs)
    search = space(args.quick)
    n = points(search)
    grid = run(
        "grid",
        search,
        epochs,
        args.image_size,
        ("sampler={name: grid, seed: 0}", "scheduler.name=fifo", f"budget.trials={n}"),
    )
    bar, budget = grid.best(), max(1, grid.epochs // 5)
    per_point: dict[str, float] = {}
    for _, trial, _, value in grid.events:
        per_point[trial] = max(value, per_point.get(trial, value))
    at_bar = sum(v >= bar - args.within - 1e-12 for v in per_point.values())
    rows = [
        "| strategy | seeds reaching | epochs to reach (median) | vs grid's epochs | seconds to reach (median) "
        f"| best within {budget} epochs (mean) | epochs run (mean) | best (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        # a grid knows which point is best only when it has run them all
        f"| grid, every point to the end | 1/1 | {grid.epochs} | 100% | {grid.wall:.0f} | {grid.best(budget):.4f} | "
        f"{grid.epochs} | {bar:.4f} |",
    ]
    names = [s.name for s in strategies(n, args.quick, 0)]
    traces: dict[str, list[Trace]] = {name: [] for name in names}
    for seed in range(seeds):  # interleaved: a slow moment of the machine hits every strategy
        for strategy in strategies(n, args.quick, seed):
            traces[strategy.name].append(run(f"s{seed}", search, epochs, args.image_size, strategy.overrides))
    ratios: dict[str, float] = {}
    for name, runs in traces.items():
        reached = [r for r in (t.reach(bar - args.within) for t in runs) if r is not None]
        if reached:
            e = statistics.median(r[0] for r in reached)
            sec = statistics.median(r[1] for r in reached)
            ratios[name] = e / grid.epochs
            cells = f"{e:.0f} | {e / grid.epochs:.0%} | {sec:.0f}"
        else:
            cells = "– | – | –"
        rows.append(
            f"| {name} | {len(reached)}/{seeds} | {cells} | {statistics.mean(t.best(budget) for t in runs):.4f} | "
            f"{statistics.mean(t.epochs for t in runs):.0f} | {statistics.mean(t.best() for t in runs):.4f} |"
        )
    winner = min(ratios, key=lambda k: ratios[k]) if ratios else "none reached the bar"
    dims = " × ".join(f"{k} ({len(v['choices'])})" for k, v in search.items())
    body = [
        f"Space: {dims} = {n} points; small_cnn on "
        f"digits at {args.image_size} px, up to {epochs} epochs per trial, 2 trials at a time; {seeds} seed(s) per "
        f"strategy (the sampler's seed). Bar: the grid's best {METRIC} {bar:.4f}, reached when a trial reports "
        f"{bar - args.within:.4f} or better (within {args.within * 100:g} point); {at_bar} of the {n} grid points "
        "reach it. Epochs and seconds are counted from the sweep's start to the first report at the bar; a grid "
        "knows its best only after its last point.",
        "",
        *rows,
        "",
        f"Cheapest to the bar (median epochs): **{winner}**"
        + (f", {ratios[winner]:.0%} of the grid's epochs." if ratios else "."),
    ]
    command = ".venv/bin/python -m benchmarks.bench_search" + (" --quick" if args.quick else "")
    publish(
        "Search efficiency vs. the grid (`benchmarks/bench_search.py`)", command, machine("CPU only"), body, args.out
    )


if __name__ == "__main__":
    main()
