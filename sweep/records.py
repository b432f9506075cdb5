"""What a person reads in MLflow without configuring anything: trial runs named by their number and
sampled values, their state in the name and the description, each trial's best value and epoch, and the
parent run's summary of the sweep. Pure functions over what the journal writes and reads back."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep.tags import (
    BEST_RUN,
    BEST_TRIAL,
    EPOCHS_PLANNED,
    EPOCHS_RUN,
    ERROR,
    PARETO,
    STATE,
    STOP_REASON,
    TNN,
    TRIAL_ID,
)
from trainers.direction import Direction, better

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Run

STATES = ("completed", "stopped_early", "diverged", "errored", "interrupted")
"""The trial's number as people say it (``t07``)."""


def abbreviation(key: str) -> str:
    """``weight_decay`` → ``wd``, ``momentum`` → ``mom``, ``lr`` → ``lr``: short, and the same every time."""
    parts = [p for p in key.split("_") if p]
    if len(parts) > 1:
        return "".join(p[0] for p in parts)
    return key if len(key) <= 4 else key[:3]


def short_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            mantissa, exponent = f"{value:.1e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return f"{value:.2g}"
    return str(value)


RERUN, RERUN_KEYS = "rerun", ("rerun_seed", "rerun_of", "rerun_of_run")
"""A re-run's parameters sit under the ``rerun`` key of its Ray config, with its seed and the trial it repeats
(its Ray id, and its ``tNN``)."""


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's config as its parameters: a re-run's values lifted out of their ``rerun`` key."""
    return dict(config[RERUN]) if RERUN in config else dict(config)


def end_state(epochs: int, planned: int, diverged: bool) -> str:
    """How a trial that ran to its end ended: ``diverged`` (its trainer stopped it), ``stopped_early`` (fewer
    epochs than planned: the scheduler, or the trainer's own early stopping) or ``completed``."""
    if diverged:
        return "diverged"
    return "completed" if epochs >= planned else "stopped_early"


NUMBERS: dict[str, int] = {}
"""Ray trial id → the number of its ``tNN`` (Optuna's trial number + 1), as this driver's searcher suggested it;
read by the progress lines, the tracking callback and the trial folders' names. A trial restored by ``--resume`` is
not in it: its run and folder have their names already."""


def number_of(trial_id: str, fallback: int) -> int:
    """The number of the trial's ``tNN``: the searcher's, else ``fallback`` (its place in Ray's list, 1-based)."""
    return NUMBERS.get(trial_id) or fallback


def trial_number(number: int) -> str:
    return f"t{number:02d}"


def run_name(number: int, config: Mapping[str, Any]) -> str:
    """A run's name in MLflow: a trial's :func:`trial_name`; a re-run's, the trial it repeats and its seed
    (``t09 seed 2``), so that no two runs of the experiment share a name."""
    if "rerun_of_run" in config and "rerun_seed" in config:
        return f"{config['rerun_of_run']} seed {config['rerun_seed']}"
    return trial_name(number, {k: v for k, v in config.items() if k not in RERUN_KEYS})


def trial_name(number: int, config: Mapping[str, Any]) -> str:
    """``t07 lr=1.8e-3 adamw mom=0.9``: categorical choices by their value, numbers with their key."""
    words = [short_value(v) if isinstance(v, str) else f"{abbreviation(k)}={short_value(v)}" for k, v in config.items()]
    return " ".join([trial_number(number), *words])


def ended_name(name: str, state: str, epochs: int, best: float | None = None) -> str:
    """The run name once the trial ended, what matters first (the runs table cuts long names): number, best
    value, the state when other than completed, then the sampled values — ``t04 0.4236 stopped@1 · lr=…``."""
    number, _, values = name.partition(" ")
    if values.startswith("seed "):  # a re-run's name, "t09 seed 2", is its head whole
        number, values = name, ""
    suffix = {
        "stopped_early": f"stopped@{epochs}",
        "diverged": f"diverged@{epochs}",
        "errored": "errored",
        "interrupted": "interrupted",
    }.get(state)
    head = " ".join(filter(None, [number, f"{best:.4f}" if best is not None else "", suffix]))
    return f"{head} · {values}" if values else head


def trial_note(state: str, epochs: int, tags: Mapping[str, str], best: str) -> str:
    """The trial run's description: how it ended and its best epoch."""
    planned = tags.get(EPOCHS_PLANNED, "?")
    said = {
        "completed": f"Completed all {epochs} epochs.",
        "stopped_early": f"Stopped early at epoch {epochs} of {planned}"
        + (f" ({tags[STOP_REASON]})." if tags.get(STOP_REASON) else " by the scheduler."),
        "diverged": f"Diverged: {tags.get(STOP_REASON, '')}.",
        "errored": f"Errored after {epochs} epochs: {tags.get(ERROR, '')}",
        "interrupted": f"Interrupted after {epochs} epochs; `sweep run SPEC --resume` continues it.",
    }[state]
    return f"{said} {best}".strip()


def best_text(metric: str, value: float | None, epoch: int | None) -> str:
    return f"Best {metric} {value:.4f} at epoch {epoch}." if value is not None else ""


def improved(value: float, best: float | None, mode: str) -> bool:
    return better(value, best, mode)


def pareto(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[bool]:
    """Which points no other point dominates (at least as good in every objective, better in one)."""
    signs = [Direction.of(m).sign for m in modes]
    scaled = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]
    usable = [all(math.isfinite(v) for v in p) for p in scaled]

    def dominated(i: int) -> bool:
        return any(
            usable[j] and all(a >= b for a, b in zip(q, scaled[i], strict=True)) and q != scaled[i]
            for j, q in enumerate(scaled)
        )

    return [usable[i] and not dominated(i) for i in range(len(scaled))]


def dataset_input(info: Mapping[str, Any]) -> DatasetInput:
    """The sweep's dataset as an MLflow dataset input: name, where it lies and its split sizes."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = json.dumps({k: v for k, v in info.items() if k not in ("name", "root")}, sort_keys=True)
    source = json.dumps({"uri": str(info.get("root") or info["name"])})
    digest = hashlib.sha256((source + profile).encode()).hexdigest()[:10]
    dataset = Dataset(str(info["name"]), digest, "local", source, profile=profile)
    return DatasetInput(dataset, [InputTag("mlflow.data.context", "train/val/test")])


@dataclass(frozen=True)
class Summary:
    metrics: dict[str, float]
    tags: dict[str, str]
    note: str


def summarize(
    runs: Sequence[Run], objectives: Sequence[tuple[str, str]], context: Mapping[str, Any], wall_s: float
) -> Summary:
    """The parent run's summary: best value and trial, counts by state, epochs run against the epochs every
    trial running to the end would have taken, wall time; and a description a person reads first."""
    metric, mode = objectives[0]
    live = [r for r in runs if r.data.tags.get(STATE) != "orphaned"]
    counts = Counter(r.data.tags.get(STATE, "running") for r in live)
    epochs = sum(int(r.data.tags.get(EPOCHS_RUN, 0)) for r in live)
    full = len(live) * int(context.get("max_epochs", 0))
    metrics = {f"trials_{state}": float(counts.get(state, 0)) for state in STATES}
    metrics |= {"trials": float(len(live)), "epochs_run": float(epochs), "epochs_full": float(full)}
    metrics["wall_time_s"] = round(wall_s, 1)
    tags: dict[str, str] = {}
    scored = [r for r in live if math.isfinite(r.data.metrics.get(f"best_{metric}", math.nan))]
    lines = []
    if context.get("description"):
        lines += [str(context["description"]).strip(), ""]
    ended = ", ".join(f"{counts[s]} {s.replace('_', ' ')}" for s in STATES if counts.get(s))
    lines.append(f"**{len(live)} trials** ({ended or 'none ended'}); {context.get('scheduler', '')} scheduler.")
    if full:
        lines.append(f"**{epochs} of {full} epochs** run ({epochs / full:.0%} of running every trial to the end).")
    if scored:
        pick = min if mode == "min" else max
        best = pick(scored, key=lambda r: r.data.metrics[f"best_{metric}"])
        value = best.data.metrics[f"best_{metric}"]
        metrics[f"best_{metric}"] = value
        name = best.data.tags.get("mlflow.runName", best.info.run_id)
        tags |= {BEST_TRIAL: best.data.tags.get(TRIAL_ID, ""), BEST_RUN: best.info.run_id}
        number = best.data.tags.get(TNN, "")
        tags["mlflow.runName"] = f"{context.get('name', 'sweep')} · best {metric}={value:.4f} ({number})"
        at = int(best.data.metrics.get("best_epoch", 0))
        lines.append(f"**Best {metric} ({mode}): {value:.4f}**, trial {name}, epoch {at}.")
    if len(objectives) > 1:
        points = [[r.data.metrics.get(f"best_{m}", math.nan) for m, _ in objectives] for r in live]
        front = [r for r, keep in zip(live, pareto(points, [m for _, m in objectives]), strict=True) if keep]
        metrics["pareto_size"] = float(len(front))
        tags[PARETO] = ",".join(r.data.tags.get(TRIAL_ID, "") for r in front)
        names = "; ".join(r.data.tags.get("mlflow.runName", "") for r in front)
        lines.append(f"**Pareto front** ({', '.join(f'{m} {d}' for m, d in objectives)}): {names}.")
    lines.append(f"Wall time {wall_s:.0f} s.")
    if context.get("space"):
        lines += ["", "Search space:", "", str(context["space"])]
    return Summary(metrics, tags, "\n".join(lines))


def space_table(search: Mapping[str, Any]) -> str:
    """The search space as a Markdown table: parameter, distribution, range or choices, condition."""
    rows = ["| parameter | type | values | when |", "|---|---|---|---|"]
    for name, p in search.items():
        kind = type(p).__name__.removesuffix("Param").lower()
        if hasattr(p, "choices"):
            values = ", ".join(short_value(c) for c in p.choices)
        else:
            values = f"{short_value(p.low)} … {short_value(p.high)}" + (" (log)" if getattr(p, "log", False) else "")
            values += f", step {short_value(p.step)}" if getattr(p, "step", None) else ""
        when = getattr(p, "when", None) or {}
        rows.append(f"| {name} | {kind} | {values} | {', '.join(f'{k}={v}' for k, v in when.items())} |")
    return "\n".join(rows)
