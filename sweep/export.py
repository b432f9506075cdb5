"""What MLflow holds about a sweep, as a pandas table: status and the best-params export."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweep import records, store
from sweep.errors import SweepError

FORMATS = ("md", "csv", "latex")


@dataclass(frozen=True)
class SweepTable:
    """A sweep's trials: one row each, ranked by the metric."""

    name: str
    metric: str
    mode: str
    searched: list[str]
    parent_id: str
    frame: pd.DataFrame


def locate_uri(name: str, results: Path, uri: str | None) -> str:
    """The sweep's tracking URI: the flag, the environment, the sweep's record, or the default store."""
    if uri:
        return store.connect(uri)
    record = results / name / "sweep.json"
    if record.exists():
        saved = json.loads(record.read_text()).get("tracking_uri", "")
        if saved and "***" not in saved:
            return str(saved)  # credentials, where the store needs them, come from the environment
    return store.connect(store.resolve_uri(None, Path(".")))


def load_table(name: str, uri: str, experiment: str | None = None) -> SweepTable:
    """Read the newest parent run of sweep ``name`` and its trials back from MLflow."""
    mlflow = store.client(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment or name)
    except Exception as e:
        raise store.unreachable(uri, e) from None
    parents = store.parent_runs(mlflow, exp.experiment_id, name) if exp else []
    if exp is None or not parents:
        raise SweepError(f"no sweep named '{name}' in the tracking store {store.redact(uri)}")
    parent = parents[0]
    tags = parent.data.tags
    metrics, modes = tags["sweep.metric"].split(","), tags["sweep.mode"].split(",")
    metric, mode = metrics[0], modes[0]
    searched = [s for s in tags.get("sweep.searched", "").split(",") if s]
    rows = []
    for run in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id):
        if run.data.tags.get(store.STATE_TAG) == "orphaned":
            continue
        history = {m.step: m.value for m in mlflow.get_metric_history(run.info.run_id, metric)}
        usable = {k: v for k, v in history.items() if math.isfinite(v)}
        pick = max if mode == "max" else min
        at = pick(usable, key=lambda k: usable[k]) if usable else None  # the best epoch, first of ties
        row = {"trial": run.data.tags.get("sweep.trial_id", run.info.run_id)}
        row |= {p: _number(run.data.params[p]) if p in run.data.params else None for p in searched}
        row[metric] = usable[at] if at is not None else math.nan
        for other in metrics[1:]:  # the other objectives at that epoch, as the study is told them
            values = {m.step: m.value for m in mlflow.get_metric_history(run.info.run_id, other)}
            row[other] = values.get(at, math.nan) if at is not None else math.nan
        row |= {"epochs": len(history), "state": run.data.tags.get(store.STATE_TAG, "unknown")}
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["trial", *searched, *metrics, "epochs", "state"])
    if len(metrics) > 1:
        frame.insert(len(frame.columns) - 2, "pareto", records.pareto(frame[metrics].to_numpy().tolist(), modes))
        frame = frame.sort_values(["pareto", metric], ascending=[False, mode == "min"], kind="stable")
    else:
        frame = frame.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="stable")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return SweepTable(name, metric, mode, searched, parent.info.run_id, frame.reset_index(drop=True))


def _number(text: str) -> float | int | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def render(table: SweepTable, fmt: str, top: int | None = None) -> str:
    """The best-params table as Markdown, CSV or LaTeX."""
    frame = table.frame.head(top) if top else table.frame
    if fmt == "md":
        # A conditional parameter a trial did not have is blank, not "nan".
        shown = frame.astype(object).where(frame.notna(), None)
        return str(shown.to_markdown(index=False, floatfmt=".4g", missingval="–"))
    if fmt == "csv":
        return str(frame.to_csv(index=False))
    if fmt == "latex":
        caption = f"Best parameters of sweep {table.name} ({table.metric}, {table.mode})".replace("_", r"\_")
        return str(frame.to_latex(index=False, float_format="%.4g", caption=caption, escape=True))
    raise SweepError(f"--format: unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")


def summary(table: SweepTable) -> str:
    """Counts by state and the best trial, for ``sweep status``."""
    counts = table.frame["state"].value_counts().to_dict()
    lines = [
        f"sweep {table.name}: {len(table.frame)} trials · "
        + " · ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    ]
    scored = table.frame.dropna(subset=[table.metric])
    if len(scored):
        best = scored.iloc[0]
        params = ", ".join(
            f"{p}={_short(best[p])}" for p in table.searched if best[p] is not None and best[p] == best[p]
        )
        lines.append(f"best {table.metric}={best[table.metric]:.4f} ({best['trial']}): {params}")
    return "\n".join(lines)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
