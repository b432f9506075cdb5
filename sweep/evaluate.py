"""``sweep evaluate`` and ``sweep detect``: the best trial's checkpoint scored on the test part the search
never saw, or drawn on any images."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep import store
from sweep.errors import SweepError
from sweep.export import load_table
from sweep.record import load_record
from sweep.spec import Spec
from sweep.tags import BEST_TRIAL, TRIAL_ID


@dataclass(frozen=True)
class BestTrial:
    spec: Spec
    trial_id: str
    run_id: str
    parent_id: str
    client: Any
    number: str = ""
    """Its ``tNN``: what it is called on every surface (``trial_id`` is Ray's)."""


def sweep_spec(name: str, results: Path) -> Spec:
    """The spec a sweep ran with, from its record."""
    return load_record(name, results).parsed()


def best_trial(name: str, results: Path, uri: str, experiment: str | None = None) -> BestTrial:
    """The sweep's best trial by its metric, and its MLflow run."""
    spec = sweep_spec(name, results)
    table = load_table(name, uri, experiment)
    scored = table.frame.dropna(subset=[table.metric])
    if scored.empty:
        raise SweepError(f"sweep '{name}' has no trial with a {table.metric} to pick the best by")
    trial_id = str(scored.iloc[0]["trial"])
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(experiment or name)
    assert exp is not None  # load_table found the sweep in it
    runs = [
        r
        for r in store.trial_runs(mlflow, exp.experiment_id, table.parent_id)
        if r.data.tags.get(TRIAL_ID) == trial_id
    ]
    number = str(scored.iloc[0]["run"]) or trial_id
    return BestTrial(spec, trial_id, runs[0].info.run_id, table.parent_id, mlflow, number)


def trial_hparams(best: BestTrial) -> dict[str, Any]:
    """The best trial's trainer parameters (fixed and sampled), as its run's params hold them."""
    import yaml

    params = best.client.get_run(best.run_id).data.params
    fields = best.spec.entry.hparams.model_fields
    return {k: None if v == "None" else yaml.safe_load(v) for k, v in params.items() if k in fields}


def _weights(best: BestTrial, tmp: str) -> Path:
    artifact = f"checkpoints/{best.spec.entry.weights_file}"
    return Path(best.client.download_artifacts(best.run_id, artifact, tmp))


def evaluate_best(name: str, results: Path, uri: str, experiment: str | None = None) -> dict[str, float]:
    """Score the best trial on the test part; log ``test_*`` metrics and the report files to its run."""
    spec = sweep_spec(name, results)
    if not spec.entry.has("evaluate"):
        raise SweepError(f"sweep '{name}' trains with the {spec.trainer} trainer, which has no test evaluation")
    best = best_trial(name, results, uri, experiment)
    evaluator = best.spec.entry.evaluator()
    out = results / name / "test"
    model, hparams = best.spec.model.model_dump(), trial_hparams(best)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluator(
            _weights(best, tmp), best.spec.dataset.model_dump(), out, results / name / "cache", model, hparams
        )
    from mlflow.entities import Metric

    with store.as_ended(best.client, best.run_id, best.parent_id):
        best.client.log_batch(best.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        best.client.log_artifacts(best.run_id, str(out), artifact_path="test")
        best.client.set_tag(best.parent_id, BEST_TRIAL, best.trial_id)
    return {"trial": best.number, **metrics}  # type: ignore[dict-item]


def detect_best(
    name: str,
    results: Path,
    uri: str,
    images: Path,
    out: Path,
    proposals: bool = False,
    score: float = 0.5,
    top_k: int = 50,
    experiment: str | None = None,
) -> list[Path]:
    """Draw the best trial's predictions (and, with ``proposals``, its first stage's top-k proposals beside
    them) on every image under ``images``; write PNGs to ``out`` and log them to the trial's run."""
    best = best_trial(name, results, uri, experiment)
    if not best.spec.entry.has("detect"):
        raise SweepError(f"sweep '{name}' trains a {best.spec.trainer}, not a detector")
    from trainers.base import find_images

    files = find_images(images)
    detect = best.spec.entry.capability("detect")
    model, hparams, dataset = best.spec.model.model_dump(), trial_hparams(best), best.spec.dataset.model_dump()
    with tempfile.TemporaryDirectory() as tmp:
        written = detect(_weights(best, tmp), files, out, score, proposals, top_k, model, hparams, dataset)
    with store.as_ended(best.client, best.run_id):
        best.client.log_artifacts(best.run_id, str(out), artifact_path="detect")
    return list(written)
