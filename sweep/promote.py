"""``sweep promote``: the sweep's best model into the MLflow Model Registry, with where it came from.

The best trial's weights are logged once to its run as an MLflow PyTorch model (the ``trainers`` package
travels with it, so it loads anywhere with torch installed), registered under the sweep's name (or
another), and the alias (``champion``) moved to the new version.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trainers
from sweep import store
from sweep.errors import SweepError
from sweep.evaluate import best_trial, sweep_spec
from sweep.tags import METRIC, MODEL_URI, NAME, RUN_ID, SPEC_HASH, TRIAL_ID

ALIAS = re.compile(r"[\w\-]+")
VERSION_ALIAS = re.compile(r"[vV]\d+")


@dataclass(frozen=True)
class Promoted:
    name: str
    version: str
    alias: str
    model_uri: str
    trial: str
    """The best trial's ``tNN``."""
    tracking_uri: str

    @property
    def snippet(self) -> str:
        """Python that loads the model in a fresh shell: the sweep's store first, then the alias."""
        return (
            f'import mlflow; mlflow.set_tracking_uri("{store.redact(self.tracking_uri)}"); '
            f'model = mlflow.pytorch.load_model("models:/{self.name}@{self.alias}")'
        )


def promote(
    name: str,
    results: Path,
    uri: str,
    registered: str | None = None,
    alias: str = "champion",
    experiment: str | None = None,
) -> Promoted:
    _check_names(registered or name, alias)
    spec = sweep_spec(name, results)
    if not spec.entry.has("servable"):
        raise SweepError(f"sweep '{name}' trains with the {spec.trainer} trainer, whose models cannot be promoted yet")
    best = best_trial(name, results, uri, experiment)
    run = best.client.get_run(best.run_id)
    model_uri = run.data.tags.get(MODEL_URI) or _log_model(best, uri, spec.entry.served())
    import mlflow

    version = _registered(best.client, registered or name, model_uri)  # promoting twice adds no second version
    if version is None:
        with store.fluent(uri):
            version = mlflow.register_model(
                model_uri, registered or name, tags=_provenance(spec, run), await_registration_for=60
            )
    best.client.set_registered_model_alias(version.name, alias, version.version)
    return Promoted(version.name, str(version.version), alias, model_uri, best.number, uri)


def _check_names(registered: str, alias: str) -> None:
    """The Model Registry's rules for a model's name and an alias (as its REST API states them), checked here as
    one line each before anything is written: MLflow's own checks are private and renamed between releases."""
    problems = [
        ("--as", not registered.strip(), "a registered model needs a name"),
        ("--as", "/" in registered or ":" in registered, f"'{registered}': names cannot contain '/' or ':'"),
        ("--alias", not ALIAS.fullmatch(alias), f"'{alias}': aliases may only contain alphanumerics, _ and -"),
        ("--alias", len(alias) > 255, "an alias is at most 255 characters"),
        ("--alias", alias.lower() == "latest", "'latest' is reserved (it names the newest version)"),
        ("--alias", bool(VERSION_ALIAS.fullmatch(alias)), f"'{alias}' is reserved (it names version {alias[1:]})"),
    ]
    for flag, broken, message in problems:
        if broken:
            raise SweepError(f"{flag}: {message}")


def _registered(client: Any, name: str, model_uri: str) -> Any:
    """The version of registered model ``name`` that holds ``model_uri`` already, if one does."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    same = [v for v in versions if model_uri in (v.source, getattr(v, "model_id", None) and f"models:/{v.model_id}")]
    return max(same, key=lambda v: int(v.version)) if same else None


def _log_model(best: Any, uri: str, served: Any) -> str:
    """Log the best trial's weights as an MLflow PyTorch model to its run; return the model's URI."""
    import mlflow
    import torch
    import torchvision
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(best.client.download_artifacts(best.run_id, f"checkpoints/{best.spec.entry.weights_file}", tmp))
        model, meta, example = served(weights)
    # A classifier is exported as a program (torch.export: no pickle to load) that takes any image size; a
    # detector's data-dependent control flow cannot be exported, so it is pickled, as MLflow does by default.
    exported = "image_size" in meta
    signature = ModelSignature(inputs=Schema([TensorSpec(example.dtype, (-1, example.shape[1], -1, -1))]))
    with store.fluent(uri), store.as_ended(best.client, best.run_id):  # the trial's end and wall time stay
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            run_id=best.run_id,
            signature=signature,
            input_example=example if exported else None,
            serialization_format="pt2" if exported else "pickle",
            metadata=meta,
            code_paths=[str(Path(trainers.__file__).parent)],
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"torchvision=={torchvision.__version__.split('+')[0]}",
            ],
        )
        best.client.set_tag(best.run_id, MODEL_URI, info.model_uri)
    return str(info.model_uri)


def _provenance(spec: Any, run: Any) -> dict[str, str]:
    """Where the model comes from: the sweep, its spec, the trial, the data, the weights, the scores."""
    tags = {
        NAME: spec.name,
        SPEC_HASH: spec.digest,
        TRIAL_ID: run.data.tags.get(TRIAL_ID, ""),
        RUN_ID: run.info.run_id,
        METRIC: spec.metric.primary,
        "weights.source": run.data.tags.get("weights.source", ""),
    }
    tags |= {k: v for k, v in run.data.tags.items() if k.startswith("data.")}
    metric = spec.metric.primary
    if f"best_{metric}" in run.data.metrics:
        tags[f"best_{metric}"] = f"{run.data.metrics[f'best_{metric}']:.6g}"
    tags |= {k: f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith("test_")}
    return tags
