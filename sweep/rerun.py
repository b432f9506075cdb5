"""``sweep rerun NAME --top K --seeds S``: the K best configurations trained again with S new seeds, as a group
nested under the sweep's parent run, so no reported number rests on one seed.

The group is a run of its own (``sweep.role=reruns``, named after the trials it repeats), and each re-run a run
nested under it (``sweep.role=rerun``, named ``t09 seed 2``, params ``rerun_of`` and ``rerun_seed``); the sweep's
parent keeps its times and summary as the sweep ended them. Each re-run is trained for all its epochs (no early
stopping: the seeds must be comparable); the export and the report then give each configuration's mean and 95%
confidence interval (Student's t over the S seeds; the searched run's own value is not among them, it was picked
as the best).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep import records, storage, store
from sweep.cluster import LOG_FILE, check_address, check_resources, start_ray
from sweep.errors import SweepError
from sweep.export import load_table, locate_uri, seeds_summary
from sweep.record import load_record
from sweep.runner import common_tags, dataset_info, run_config
from sweep.trial import make_trainable


def rerun(name: str, results: Path, top: int, seeds: int, address: str | None = None) -> pd.DataFrame:
    """Re-run the ``top`` best configurations of sweep ``name`` with ``seeds`` new seeds each; return the
    configurations with their mean ± CI."""
    if top < 1 or seeds < 2:
        raise SweepError(f"rerun: needs --top >= 1 and --seeds >= 2 for an interval, got --top {top} --seeds {seeds}")
    record = load_record(name, results)
    spec = record.parsed()
    root = (results / name).resolve()
    uri = locate_uri(name, results, None)
    table = load_table(name, uri)
    picked = table.frame.dropna(subset=[table.metric]).head(top)
    if picked.empty:
        raise SweepError(f"sweep '{name}' has no trial with a {table.metric} to re-run")
    configs = [
        {
            **{p: _native(row[p]) for p in table.searched if _present(row[p])},
            "rerun_seed": spec.seed + i,
            "rerun_of": row["trial"],
            "rerun_of_run": row["run"],
        }
        for _, row in picked.iterrows()
        for i in range(1, seeds + 1)
    ]
    if address:
        check_address(address)
    start_ray(address, root / LOG_FILE)
    check_resources(spec)
    from ray import tune

    tags = common_tags(spec, Path("."))
    sizes = {k: int(v) for k, v in client_tags(uri, table).items()}
    place = storage.resolve(spec.storage, root, spec.name)
    client = store.client(uri)
    group = _group(client, record.experiment_id, table.parent_id, name, list(picked["run"]), seeds, tags)
    from sweep.interrupts import kept

    try:
        tuner = tune.Tuner(
            make_trainable(spec, place),
            param_space={records.RERUN: tune.grid_search(configs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.budget.max_concurrent),
            run_config=run_config(
                spec,
                root,
                place,
                uri,
                record.experiment_id,
                group,
                tags,
                dataset_info(spec, sizes),
                store.RERUN,
                len(configs),
            ),
        )
        with kept():
            tuner.fit()
    except BaseException:  # the group ends with its re-runs (the tracking callback ends it after fit)
        client.set_terminated(group, "FAILED")
        raise
    summary = seeds_summary(client, record.experiment_id, table.parent_id, table.metric)
    return picked[["rank", "trial", "run", *table.searched, table.metric]].join(summary, on="trial")


def _group(
    client: Any, exp_id: str, parent_id: str, name: str, repeated: list[str], seeds: int, tags: dict[str, str]
) -> str:
    """The run this ``sweep rerun`` nests its re-runs under, itself nested under the sweep's parent (whose times
    and summary it leaves as the sweep ended them): named after what it repeats."""
    from sweep.tags import NAME, ROLE

    title = f"rerun {', '.join(repeated)} × {seeds} seeds"
    note = (
        f"The best {len(repeated)} configurations of sweep '{name}' ({', '.join(repeated)}) trained again with "
        f"{seeds} new seeds each: each re-run is named after the trial it repeats and its seed."
    )
    run_tags = {**tags, "mlflow.parentRunId": parent_id, ROLE: store.RERUNS, NAME: name, "mlflow.note.content": note}
    return str(client.create_run(exp_id, run_name=title, tags=run_tags).info.run_id)


def client_tags(uri: str, table: Any) -> dict[str, str]:
    """The data sizes the sweep's trials recorded (for the re-runs' dataset input)."""
    client = store.client(uri)
    exp = client.get_run(table.parent_id).info.experiment_id
    runs = store.trial_runs(client, exp, table.parent_id)
    return {k: v for k, v in (runs[0].data.tags if runs else {}).items() if k.startswith("data.n_")}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
