"""Trial overhead: N trials of small_cnn on digits as a plain Python loop over the trainer, and as `sweep run`
(warm workers, the default; and a fresh worker per trial), measured in one run and interleaved; then where the
sweep's time goes, phase by phase (``benchmarks/phases.py``), and the same for trials of about a minute.

    .venv/bin/python -m benchmarks.bench_overhead --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.publish import demo_sweep, machine, publish

ROOT = Path(__file__).resolve().parents[1]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.02, 0.005, 0.05, 0.2]


@dataclass(frozen=True)
class Setting:
    trials: int
    epochs: int
    image_size: int = 32
    batch_size: int = 64

    @property
    def lrs(self) -> list[float]:
        return (LRS * (self.trials // len(LRS) + 1))[: self.trials]


@dataclass
class Run:
    wall: float
    marks: dict[str, list[float]]
    """Phase name → the times (s since the process started) it was marked, in order."""


def plain_loop(s: Setting) -> Run:
    """The trainer called in a loop in one process: the floor any orchestration adds to."""
    code = (
        "import json, sys, tempfile, time; t0 = time.perf_counter(); from pathlib import Path\n"
        "from trainers import TRAINERS, ListReporter, TrialParams\n"
        "trainer = TRAINERS.get('classifier').load(); marks = {'imported': [time.perf_counter() - t0]}\n"
        "cache = Path(tempfile.mkdtemp())  # decoded once, shared by the trials, as in a sweep\n"
        f"for lr in {s.lrs}:\n"
        "    with tempfile.TemporaryDirectory() as d:\n"
        "        marks.setdefault('trial <', []).append(time.perf_counter() - t0)\n"
        f"        params = TrialParams({{'name': 'digits', 'image_size': {s.image_size}}}, {{'arch': 'small_cnn'}},\n"
        f"            {{'epochs': {s.epochs}, 'lr': lr, 'batch_size': {s.batch_size}}}, Path(d), cache_dir=cache)\n"
        "        trainer.fit(params, ListReporter())\n"
        "        marks.setdefault('done <', []).append(time.perf_counter() - t0)\n"
        "print(json.dumps(marks))\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return Run(time.perf_counter() - start, json.loads(done.stdout.splitlines()[-1]))


def sweep_run(s: Setting, reuse: bool) -> Run:
    """`sweep run` on the demo spec with the loop's trials (grid over lr, FIFO, one at a time), its phases marked."""
    overrides = [
        f"budget.trials={s.trials}",
        "budget.max_concurrent=1",
        f"fixed.epochs={s.epochs}",
        f"fixed.batch_size={s.batch_size}",
        f"dataset.image_size={s.image_size}",
        "model.arch=small_cnn",
        "scheduler.name=fifo",
        "sampler={name: grid, seed: 0}",
        f"search={{lr: {{type: categorical, choices: {s.lrs}}}}}",
        f"resources.reuse_workers={str(reuse).lower()}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        marks = Path(tmp) / "marks.json"
        start = time.perf_counter()
        demo_sweep(overrides, Path(tmp), runner=("benchmarks.phases", str(marks)))
        wall = time.perf_counter() - start
        found: dict[str, list[float]] = {}
        for name, t in json.loads(marks.read_text()):
            found.setdefault(name, []).append(t)
        return Run(wall, found)


def span(run: Run, begin: str, end: str, i: int = 0) -> float:
    return run.marks[end][i] - run.marks[begin][i]


def trial_times(run: Run) -> list[float]:
    return [d - s for s, d in zip(run.marks["trial <"], run.marks["done <"], strict=True)]


def breakdown(sweep: Run, loop: Run) -> list[str]:
    """Where the sweep's wall time goes, beside the loop's."""
    trials, loop_trials = trial_times(sweep), trial_times(loop)
    typical, loop_typical = statistics.median(trials[1:] or trials), statistics.median(loop_trials[1:] or loop_trials)
    first_extra = trials[0] - typical
    gaps = sum(b - a for a, b in zip(sweep.marks["done <"], sweep.marks["trial <"][1:], strict=False))
    rows = [
        (
            "Python start and `sweep` imported",
            sweep.marks["imported"][0],
            f"loop: start + trainer imported {loop.marks['imported'][0]:.2f}",
        ),
        ("preflight: trainer imported, data and weights checked", span(sweep, "preflight <", "preflight >"), ""),
        ("tracking store opened (created on a first sweep)", span(sweep, "store <", "store >"), ""),
        ("Optuna study storage", span(sweep, "study <", "study >"), ""),
        ("Ray start (local instance)", span(sweep, "ray <", "ray >"), ""),
        (
            "until the first trial starts (Tune set-up, first worker process)",
            sweep.marks["trial <"][0] - sweep.marks["fit <"][0],
            "",
        ),
        ("first trial beyond a typical one (worker imports torch, decoded cache built)", first_extra, ""),
        (
            f"{len(trials)} trials at the typical trial's time",
            typical * len(trials),
            f"loop: {len(loop_trials)} × {loop_typical:.2f} s",
        ),
        ("between trials (next trial placed in the warm worker)", gaps, f"{gaps / max(1, len(trials) - 1):.3f} s each"),
        (
            "after the last trial (tracking records drained, parent summary)",
            sweep.marks["fit >"][0] - sweep.marks["done <"][-1],
            "",
        ),
        ("Ray shutdown", span(sweep, "shutdown <", "shutdown >"), ""),
        (
            "best-trials table read from the store and printed",
            sweep.marks["exit"][0] - sweep.marks["shutdown >"][0],
            "",
        ),
        ("interpreter exit", sweep.wall - sweep.marks["exit"][0], ""),
    ]
    return [
        "| phase of `sweep run` | s | note |",
        "|---|---:|---|",
        *[f"| {name} | {value:.2f} | {note} |" for name, value, note in rows],
        f"| **total (wall)** | **{sweep.wall:.2f}** | loop: {loop.wall:.2f} |",
    ]


def measure(s: Setting, rounds: int, fresh: bool) -> tuple[dict[str, Run], list[str]]:
    runs: dict[str, list[Run]] = {"plain loop": [], "sweep run (warm workers, default)": []}
    if fresh:
        runs["sweep run, fresh worker per trial"] = []
    for _ in range(rounds):  # interleaved, so a slow moment of the machine hits every variant
        runs["plain loop"].append(plain_loop(s))
        runs["sweep run (warm workers, default)"].append(sweep_run(s, reuse=True))
        if fresh:
            runs["sweep run, fresh worker per trial"].append(sweep_run(s, reuse=False))
    best = {name: min(v, key=lambda r: r.wall) for name, v in runs.items()}
    loop, sweep = best["plain loop"], best["sweep run (warm workers, default)"]
    ray_fixed = span(sweep, "ray <", "ray >") + span(sweep, "shutdown <", "shutdown >")
    per_trial = (sweep.wall - ray_fixed - loop.wall) / s.trials
    table = [
        "| variant | wall (s) | vs plain loop |",
        "|---|---:|---:|",
        *[f"| {name} | {r.wall:.1f} | {r.wall / loop.wall:.2f}× |" for name, r in best.items()],
        "",
        f"Beyond Ray's own start and stop ({ray_fixed:.1f} s), `sweep run` adds **{per_trial:.2f} s per trial** "
        f"to the loop; a typical trial: {statistics.median(trial_times(loop)):.2f} s in the loop.",
    ]
    return best, table


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 one-epoch trials, once: checks that it works")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--minute-trials", type=int, default=5, help="trials of about a minute (0: skip that part)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        short, rounds, minute = Setting(3, 1, image_size=12, batch_size=128), 1, None
    else:
        short, rounds = Setting(10, 3), args.rounds
        minute = Setting(args.minute_trials, 50) if args.minute_trials else None
    best, table = measure(short, rounds, fresh=not args.quick)
    body = [
        f"{short.trials} trials of small_cnn on digits ({short.image_size} px, batch {short.batch_size}), "
        f"{short.epochs} epochs each, one at a time (grid over lr, FIFO), start-up included; best of {rounds} "
        "interleaved runs.",
        "",
        *table,
        "",
        "Where the time goes (the best warm-worker run, each phase clocked by `benchmarks/phases.py`):",
        "",
        *breakdown(best["sweep run (warm workers, default)"], best["plain loop"]),
    ]
    if minute:
        long, long_table = measure(minute, 1, fresh=False)
        loop, sweep = long["plain loop"], long["sweep run (warm workers, default)"]
        body += [
            "",
            f"Trials of about a minute: {minute.trials} trials × {minute.epochs} epochs "
            f"({statistics.median(trial_times(loop)):.0f} s each in the loop), once:",
            "",
            *long_table,
            "",
            f"`sweep run` overhead on these: **{(sweep.wall / loop.wall - 1) * 100:.1f}%** of the loop's wall time.",
        ]
    command = ".venv/bin/python -m benchmarks.bench_overhead" + (" --quick" if args.quick else "")
    if not args.quick and (args.rounds, args.minute_trials) != (2, 5):
        command += f" --rounds {args.rounds} --minute-trials {args.minute_trials}"
    publish("Trial overhead (`benchmarks/bench_overhead.py`)", command, machine("CPU only"), body, args.out)


if __name__ == "__main__":
    main()
