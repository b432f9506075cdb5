"""``sweep evaluate``: the best trial's checkpoint scored on the test part the search never saw."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from sweep import tracking
from sweep.errors import SweepError
from sweep.export import load_table
from sweep.spec import parse_spec


def evaluate_best(name: str, results: Path, uri: str, experiment: str | None = None) -> dict[str, float]:
    """Score the best trial on the test part; log ``test_*`` metrics and the report files to its run."""
    record = results / name / "sweep.json"
    if not record.exists():
        raise SweepError(f"no sweep '{name}' in {results} (its sweep.json holds the dataset to test on)")
    spec = parse_spec(json.loads(record.read_text())["spec"])
    evaluator = spec.entry.evaluator()
    table = load_table(name, uri, experiment)
    scored = table.frame.dropna(subset=[table.metric])
    if scored.empty:
        raise SweepError(f"sweep '{name}' has no trial with a {table.metric} to pick the best by")
    trial_id = str(scored.iloc[0]["trial"])
    mlflow = tracking.client(uri)
    exp = mlflow.get_experiment_by_name(experiment or name)
    assert exp is not None  # load_table found the sweep in it
    runs = [
        r
        for r in tracking.trial_runs(mlflow, exp.experiment_id, table.parent_id)
        if r.data.tags.get("sweep.trial_id") == trial_id
    ]
    run_id = runs[0].info.run_id
    out = results / name / "test"
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(mlflow.download_artifacts(run_id, "checkpoints/best.pt", tmp))
        metrics = evaluator(weights, spec.dataset.model_dump(), out, results / name / "cache")
    from mlflow.entities import Metric

    mlflow.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
    mlflow.log_artifacts(run_id, str(out), artifact_path="test")
    mlflow.set_tag(table.parent_id, "sweep.best_trial", trial_id)
    return {"trial": trial_id, **metrics}  # type: ignore[dict-item]
