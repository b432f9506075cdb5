"""How long `sweep export` takes on a large store: a sweep of N trials × E epochs written as the sweep's
journal writes it (per-epoch metrics, best_<metric>, tags), read back by ``load_table`` in bulk, compared in
the same run with reading every trial's metric history (what the table needed before).

    .venv/bin/python -m benchmarks.bench_export --trials 1000 --epochs 50 --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.publish import machine, publish
from sweep import store
from sweep.export import load_table

METRICS = ("val_top1", "val_loss", "train_loss", "lr")


def build(uri: str, trials: int, epochs: int) -> None:
    from mlflow.entities import Metric, Param, RunTag

    mlflow = store.client(uri)
    exp = store.experiment_id(mlflow, "bench", uri)
    tags = {"sweep.role": "parent", "sweep.name": "bench", "sweep.metric": "val_top1", "sweep.mode": "max"}
    parent = mlflow.create_run(exp, run_name="bench", tags={**tags, "sweep.searched": "lr,optimizer"}).info.run_id
    for t in range(trials):
        lr = 10 ** (-4 + 3 * t / trials)
        run = mlflow.create_run(exp, run_name=f"t{t + 1:04d}", tags={"mlflow.parentRunId": parent}).info.run_id
        values = [min(0.99, 0.5 + 0.01 * e + 0.1 * (t % 7) / 7) for e in range(1, epochs + 1)]
        metrics = [Metric(m, v, 0, e) for e, v in enumerate(values, 1) for m in METRICS]
        best = max(values)
        metrics += [
            Metric("best_val_top1", best, 0, values.index(best) + 1),
            Metric("best_epoch", values.index(best) + 1, 0, 0),
        ]
        run_tags = {"sweep.role": "trial", "sweep.trial_id": f"{t:08x}", "sweep.trial": f"t{t + 1:02d}"}
        run_tags |= {"sweep.state": "completed", "sweep.epochs_run": str(epochs)}
        for i in range(0, len(metrics), 1000):
            mlflow.log_batch(run, metrics=metrics[i : i + 1000])
        params = [Param("lr", str(lr)), Param("optimizer", "sgd" if t % 2 else "adamw")]
        mlflow.log_batch(run, params=params, tags=[RunTag(k, v) for k, v in run_tags.items()])
        mlflow.set_terminated(run)


def per_run_histories(uri: str) -> int:
    """The old way: one metric-history request per trial."""
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name("bench")
    parent = store.parent_runs(mlflow, exp.experiment_id, "bench")[0]
    runs = store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)
    return sum(len(mlflow.get_metric_history(r.info.run_id, "val_top1")) for r in runs)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="50 trials × 10 epochs: checks that it works")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.epochs = 50, 10
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns.db'}"
        start = time.perf_counter()
        build(uri, args.trials, args.epochs)
        built = time.perf_counter() - start
        start = time.perf_counter()
        table = load_table("bench", uri)
        bulk = time.perf_counter() - start
        assert len(table.frame) == args.trials
        start = time.perf_counter()
        per_run_histories(uri)
        old = time.perf_counter() - start
    publish(
        "`sweep export` on a large store (`benchmarks/bench_export.py`)",
        f".venv/bin/python -m benchmarks.bench_export --trials {args.trials} --epochs {args.epochs}",
        machine("SQLite store on local disk"),
        [
            "| trials × epochs | metric rows | write the store (s) | `load_table`, bulk (s) | per-trial histories (s) "
            "| ratio |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {args.trials} × {args.epochs} | {args.trials * args.epochs * len(METRICS):,} | {built:.0f} | "
            f"{bulk:.2f} | {old:.2f} | {old / bulk:.1f}× |",
            "",
            "- *bulk*: one paged run search; each trial's row from its `best_<metric>` metric and `sweep.epochs_run`",
            "  tag, as the sweep's journal logs them. *per-trial histories*: one `get_metric_history` per trial, as",
            "  the table was read before (and still is, for a trial that has not logged a best yet).",
        ],
        args.out,
    )


if __name__ == "__main__":
    main()
