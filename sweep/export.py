"""What MLflow holds about a sweep, as a pandas table: status and the best-params export."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep import records, store
from sweep.errors import SweepError
from sweep.formats import FORMATS
from sweep.record import find_record, listing
from sweep.tags import EPOCHS_RUN, METRIC, MODE, SEARCHED, STATE, TNN, TRIAL_ID, TRIALS

DASH = "–"  # a value a trial does not have (a conditional parameter, an unevaluated score), for a reader


@dataclass(frozen=True)
class SweepTable:
    """A sweep's trials: one row each, ranked by the metric."""

    name: str
    metric: str
    mode: str
    searched: list[str]
    parent_id: str
    frame: pd.DataFrame
    planned: int = 0
    """The trials the spec's budget asked for (0: not recorded)."""


def locate_uri(name: str, results: Path, uri: str | None) -> str:
    """The sweep's tracking URI: the flag, the environment, the sweep's record, or the default store."""
    if uri:
        return store.connect(uri)
    record = find_record(name, results)
    if record is not None and record.tracking_uri and "***" not in record.tracking_uri:
        return record.tracking_uri  # credentials, where the store needs them, come from the environment
    return store.connect(store.resolve_uri(None, Path(".")))


def load_table(
    name: str, uri: str, experiment: str | None = None, keys: Sequence[str] = (), optional: bool = False
) -> SweepTable:
    """Read the newest parent run of sweep ``name`` and its trials back from MLflow, in bulk: one paged
    search, each run's ``best_<metric>`` and ``sweep.epochs_run`` as the trial logged them (a metric's history
    is read only for a trial that has not logged its best yet). ``keys`` adds columns of params or tags
    (``model.arch``, ``weights.source``) to group by; one no trial has is an error unless ``optional``."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():  # read, never create
        raise SweepError(
            f"no sweep named '{name}': no tracking store at {uri.removeprefix('sqlite:///')} (run a sweep here first, "
            "or name its store with --tracking-uri)"
        )
    mlflow = store.client(uri)
    try:
        exp = mlflow.get_experiment_by_name(experiment or name)
    except Exception as e:
        raise store.unreachable(uri, e) from None
    parents = store.parent_runs(mlflow, exp.experiment_id, name) if exp else []
    if exp is None or not parents:
        there = listing(store.sweep_names(mlflow), "it holds no sweep yet")
        raise SweepError(f"no sweep named '{name}' in the tracking store {store.redact(uri)}: {there}")
    parent = parents[0]
    tags = parent.data.tags
    metrics, modes = tags[METRIC].split(","), tags[MODE].split(",")
    metric, mode = metrics[0], modes[0]
    searched = [s for s in tags.get(SEARCHED, "").split(",") if s]
    test = "test_" + metric.removeprefix("val_")
    rows = []
    for run in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id):
        if run.data.tags.get(STATE) == "orphaned":
            continue
        row = _row(mlflow, run, metrics, mode, searched, test)
        row |= {k: _number(run.data.params[k]) if k in run.data.params else run.data.tags.get(k) for k in keys}
        rows.append(row)
    for key in () if optional else keys:
        if not any(row.get(key) is not None for row in rows):
            have = sorted(
                {
                    *searched,
                    *(
                        k
                        for r in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)[:1]
                        for k in r.data.params
                    ),
                }
            )
            raise SweepError(
                f"--group-by {key}: no trial of '{name}' has a parameter or tag '{key}'; its parameters: "
                f"{', '.join(have)}"
            )
    columns = ["trial", "run", *searched, *metrics, test, "epochs", "wall_s", "state", *keys]
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))
    if frame[test].isna().all():
        frame = frame.drop(columns=test)  # the sweep was not evaluated on its test part
    if len(metrics) > 1:
        pareto = records.pareto(frame[metrics].to_numpy().tolist(), modes)
        frame.insert(frame.columns.get_loc("epochs"), "pareto", pareto)
    seeds = seeds_summary(mlflow, exp.experiment_id, parent.info.run_id, metric)
    if len(seeds):  # `sweep rerun` ran: each re-run configuration's mean ± 95% CI over its seeds
        frame = frame.join(seeds, on="trial")
        frame = frame[[c for c in frame.columns if c not in seeds.columns] + list(seeds.columns)]
    planned = int(tags.get(TRIALS, "0") or 0)
    return SweepTable(name, metric, mode, searched, parent.info.run_id, ranked(frame, metric, mode), planned)


def ranked(frame: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Best first by ``metric`` and ``mode`` (the Pareto front first when there is one); ties in the order the
    trials ran (their number); trials without a value last. Adds ``rank``."""
    keys, ascending = [metric, "run"], [mode == "min", True]
    if "pareto" in frame:
        keys, ascending = ["pareto", *keys], [False, *ascending]
    out = frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the ``level`` confidence interval (Student's t), and the sample size."""
    from scipy import stats

    clean = [v for v in values if math.isfinite(v)]
    n = len(clean)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(clean))
    if n == 1:
        return mean, math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(clean, ddof=1) / math.sqrt(n))
    return mean, half, n


def seeds_summary(client: Any, exp_id: str, parent_id: str, metric: str) -> pd.DataFrame:
    """Per re-run configuration (the trial it repeats): mean, 95% CI half-width and count of ``best_<metric>``."""
    rows: dict[str, list[float]] = {}
    for run in store.rerun_runs(client, exp_id, parent_id):
        if run.data.tags.get(STATE) in ("completed", "stopped_early", "diverged"):
            value = run.data.metrics.get(f"best_{metric}", math.nan)
            rows.setdefault(run.data.params.get("rerun_of", ""), []).append(value)
    stats = {trial: interval(values) for trial, values in rows.items()}
    columns = [f"{metric}_mean", f"{metric}_ci95", "seeds"]
    return pd.DataFrame.from_dict(stats, orient="index", columns=columns)


def _row(mlflow: Any, run: Any, metrics: list[str], mode: str, searched: list[str], test: str) -> dict[str, Any]:
    """One trial: its parameters, every objective at its best epoch, its test score, epochs, wall time, state."""
    data, tags, info = run.data.metrics, run.data.tags, run.info
    row = {"trial": tags.get(TRIAL_ID, info.run_id), "run": tags.get(TNN, "")}
    row |= {p: _number(run.data.params[p]) if p in run.data.params else None for p in searched}
    epochs = tags.get(EPOCHS_RUN)  # set when the trial ends
    history = mlflow.get_metric_history(info.run_id, metrics[0]) if epochs is None else []  # a running trial's
    if f"best_{metrics[0]}" in data:
        row |= {m: data.get(f"best_{m}", math.nan) for m in metrics}
    else:  # nothing logged as best yet (a trial still in its first epoch, a run of an older version)
        history = history or mlflow.get_metric_history(info.run_id, metrics[0])
        usable = [m for m in history if math.isfinite(m.value)]
        pick = max if mode == "max" else min
        row |= {metrics[0]: pick(usable, key=lambda m: m.value).value if usable else math.nan}
        row |= {m: math.nan for m in metrics[1:]}
    epochs = epochs or str(max((m.step for m in history), default=0))  # the epochs its metric was logged for
    row[test] = data.get(test, math.nan)
    row["epochs"] = int(epochs or 0)
    row["wall_s"] = round((info.end_time - info.start_time) / 1000, 1) if info.end_time else math.nan
    row["state"] = tags.get(STATE, "unknown")
    return row


def compare(tables: Sequence[SweepTable], group_by: str | None = None, top: int | None = None) -> pd.DataFrame:
    """The best trials side by side: per sweep (``top`` each, default 1 when there are several sweeps) and
    per value of ``group_by`` (the best trial of each group), one table across sweeps."""
    per = top or (1 if len(tables) > 1 or group_by else None)
    frames = []
    for table in tables:
        frame = table.frame.drop(columns="rank")
        if group_by:
            frame = frame.groupby(group_by, sort=False, dropna=False).head(per)  # the frame is ranked already
        elif per:
            frame = frame.head(per)
        frames.append(frame.assign(sweep=table.name) if len(tables) > 1 else frame)
    out = pd.concat(frames, ignore_index=True)
    if len(tables) > 1:
        out = out[["sweep", *[c for c in out.columns if c != "sweep"]]]
    return out


def _number(text: str) -> float | int | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def readable(value: object, missing: str = DASH) -> str:
    """One table cell for a reader, the same in every format: an integer (or a float with an integer value) as
    an integer, other numbers to 4 significant digits, in scientific notation below 1e-3 (``8.7e-06``) and at
    1e16 or more, ``missing`` where there is no value (None, NaN); anything else as its text."""
    if _missing(value):
        return missing
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if not isinstance(value, float | np.floating):
        return str(value)
    x = float(value)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if abs(float(f"{x:.3e}")) < 1e-3:  # as it rounds: 0.00099996 is 0.001
        mantissa, exponent = f"{x:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"
    if abs(x) >= 1e16:
        return f"{x:.4g}"
    if x.is_integer() or abs(x) >= 1e4:  # 12346 s, not 1.235e+04
        return f"{x:.0f}"
    return f"{x:.4g}"


def _missing(value: object) -> bool:
    """None, NaN, pd.NA or NaT: a value a trial does not have."""
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    return value is None or value is pd.NA or value is pd.NaT


def _numeric(column: pd.Series) -> bool:
    """Whether every value a column has is a number (its cells right-aligned)."""
    values = column.dropna()
    return len(values) > 0 and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool | np.bool_) for v in values
    )


def _shown(frame: pd.DataFrame, missing: str = DASH) -> pd.DataFrame:
    return frame.astype(object).map(lambda v: readable(v, missing))


def _json_value(value: object) -> object:
    """A cell as JSON: numbers unrounded, null where there is no value (or none JSON can hold: NaN, inf)."""
    if _missing(value):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value if isinstance(value, str) else str(value)


def render(table: SweepTable | pd.DataFrame, fmt: str, top: int | None = None, caption: str = "") -> str:
    """A table as Markdown, CSV, LaTeX, HTML or JSON. Markdown, LaTeX and HTML are for a reader: every number
    through :func:`readable`, a dash where a trial has no value. CSV and JSON are for scripts: numbers at full
    precision, a missing value an empty cell (CSV) or null (JSON, a list of one object per row)."""
    if isinstance(table, SweepTable):
        caption = caption or f"Best parameters of sweep {table.name} ({table.metric}, {table.mode})"
        frame = table.frame.head(top) if top else table.frame
    else:
        frame = table
    frame = named(frame, scripts=fmt in ("csv", "json"))
    numeric = [_numeric(frame[c]) for c in frame.columns]
    if fmt == "md":
        align = ["right" if n else "left" for n in numeric]
        return str(_shown(frame).to_markdown(index=False, disable_numparse=True, colalign=align))
    if fmt == "csv":
        return str(frame.to_csv(index=False))
    if fmt == "latex":
        return str(
            _shown(frame, missing="--").to_latex(  # -- is LaTeX's en dash
                index=False,
                column_format="".join("r" if n else "l" for n in numeric),
                caption=caption.replace("_", r"\_"),
                escape=True,
            )
        )
    if fmt == "html":
        styled = frame.style.format(readable, escape="html").hide(axis="index")  # a trial's text is text
        return str((styled.set_caption(caption) if caption else styled).to_html())
    if fmt == "json":
        rows = [{str(k): _json_value(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]
        return json.dumps(rows, indent=2, ensure_ascii=False, allow_nan=False)
    raise SweepError(f"--format: unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")


def named(frame: pd.DataFrame, scripts: bool = False) -> pd.DataFrame:
    """The table as a person reads it: each trial named by its ``tNN`` (column ``trial``), as in the progress lines,
    MLflow, TensorBoard and the study. Ray's id names nothing a user sees: scripts get it last (``ray_trial_id``)."""
    if "run" not in frame or "trial" not in frame:
        return frame
    tnn = frame["run"].where(frame["run"].astype(str) != "", frame["trial"])  # a run of an older version: Ray's id
    out = frame.drop(columns=["run"]).assign(trial=tnn)
    return out.assign(ray_trial_id=frame["trial"]) if scripts else out


def summary(table: SweepTable) -> str:
    """Counts by state and the best trial, for ``sweep status``."""
    counts = table.frame["state"].value_counts().to_dict()
    lines = [
        f"sweep {table.name}: {len(table.frame)}{f' of {table.planned}' if table.planned else ''} trials · "
        + " · ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    ]
    scored = table.frame.dropna(subset=[table.metric])
    if len(scored):
        best = scored.iloc[0]
        params = ", ".join(
            f"{p}={_short(best[p])}" for p in table.searched if best[p] is not None and best[p] == best[p]
        )
        lines.append(f"best {table.metric}={best[table.metric]:.4f} ({best['run'] or best['trial']}): {params}")
    return "\n".join(lines)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
