"""Trial overhead: N short trials (small_cnn on digits) as a plain Python loop over the trainer, and as
`sweep run` with and without warm workers (``resources.reuse_workers``), measured in one run, each twice.

    .venv/bin/python benchmarks/bench_overhead.py --trials 6 --epochs 3 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from publish import machine, publish

ROOT = Path(__file__).resolve().parents[1]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.02, 0.005, 0.05, 0.2]


def plain_loop(trials: int, epochs: int) -> float:
    """The trainer called in a loop in one process: the floor any orchestration adds to."""
    code = (
        "import sys, tempfile, time; from pathlib import Path\n"
        "from trainers import TRAINERS, ListReporter, TrialParams\n"
        "t = time.perf_counter(); trainer = TRAINERS.get('classifier').load()\n"
        f"for lr in {LRS[:trials]}:\n"
        "    with tempfile.TemporaryDirectory() as d:\n"
        "        params = TrialParams({'name': 'digits', 'image_size': 12}, {'arch': 'small_cnn'},\n"
        f"            {{'epochs': {epochs}, 'lr': lr, 'batch_size': 128}}, Path(d))\n"
        "        trainer.fit(params, ListReporter())\n"
        "print(time.perf_counter() - t)\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return time.perf_counter() - start  # start-up (imports) included, as for `sweep run`


def sweep_run(trials: int, epochs: int, reuse: bool) -> float:
    overrides = [
        f"budget.trials={trials}",
        "budget.max_concurrent=1",
        f"fixed.epochs={epochs}",
        "fixed.batch_size=128",
        "dataset.image_size=12",
        "model.arch=small_cnn",
        "scheduler.name=fifo",
        "sampler={name: grid, seed: 0}",
        f"search={{lr: {{type: categorical, choices: {LRS[:trials]}}}}}",
        f"resources.reuse_workers={str(reuse).lower()}",
    ]
    cmd = [sys.executable, "-m", "sweep", "run", str(ROOT / "search_spaces" / "demo.yaml")]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([*cmd, *[a for o in overrides for a in ("--set", o)]], cwd=tmp, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs: dict[str, list[float]] = {
        "plain loop": [],
        "sweep run, fresh worker per trial": [],
        "sweep run, warm workers": [],
    }
    for _ in range(2):  # interleaved, so a slow moment of the machine hits every variant
        runs["plain loop"].append(plain_loop(args.trials, args.epochs))
        runs["sweep run, fresh worker per trial"].append(sweep_run(args.trials, args.epochs, reuse=False))
        runs["sweep run, warm workers"].append(sweep_run(args.trials, args.epochs, reuse=True))
    base = min(runs["plain loop"])
    publish(
        "Trial overhead (`benchmarks/bench_overhead.py`)",
        f".venv/bin/python benchmarks/bench_overhead.py --trials {args.trials} --epochs {args.epochs}",
        machine("CPU only")
        + f" {args.trials} trials of small_cnn on digits (12 px), {args.epochs} epochs each, one at a time "
        "(grid over lr, FIFO); start-up included; best of two interleaved runs.",
        [
            "| variant | wall (s) | vs plain loop |",
            "|---|---:|---:|",
            *[f"| {name} | {min(v):.1f} | {min(v) / base:.2f}× |" for name, v in runs.items()],
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
