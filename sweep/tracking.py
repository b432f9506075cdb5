"""MLflow: one parent run per sweep, one nested run per trial, written from the driver.

The driver is the only writer: trials report to Ray Tune, and :class:`MlflowCallback` turns each
report into metrics (step = epoch), the first report's facts into tags, and each new best into the
``checkpoints/best.pt`` artifact. A trial that is retried or resumed finds its run again by its
``sweep.trial_id`` tag, so it never gets a duplicate.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

PARENT = "parent"
TRIAL = "trial"
STATE_TAG = "sweep.state"


def resolve_uri(uri: str | None, base: Path) -> str:
    """The tracking URI: the spec's, ``MLFLOW_TRACKING_URI``, or the embedded SQLite store in ``base``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(base / 'mlruns.db').resolve()}"


def redact(uri: str) -> str:
    """The URI without its password, for anything printed or logged."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", uri)


def client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created on first use; local stores keep artifacts next to the database."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return str(mlflow.create_experiment(name, artifact_location=location))


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def parent_runs(mlflow: MlflowClient, exp_id: str, name: str) -> list[Run]:
    """The sweep's parent runs, newest first."""
    return list(
        mlflow.search_runs(
            [exp_id],
            filter_string=f"tags.`sweep.role` = '{PARENT}' and tags.`sweep.name` = '{name}'",
            order_by=["attributes.start_time DESC"],
        )
    )


def trial_runs(mlflow: MlflowClient, exp_id: str, parent_id: str) -> list[Run]:
    """Every nested trial run of a parent run."""
    runs: list[Run] = []
    token = None
    while True:
        page = mlflow.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    skip = {
        "epoch",
        "training_iteration",
        "timestamp",
        "time_total_s",
        "time_this_iter_s",
        "time_since_restore",
        "iterations_since_restore",
        "pid",
        "done",
        "config",
    }
    return {
        k: float(v)
        for k, v in result.items()
        if k not in skip and not k.startswith("info/") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class MlflowCallback(Callback):
    """Ray Tune callback that records every trial as a nested MLflow run of the sweep's parent run."""

    def __init__(
        self,
        uri: str,
        exp_id: str,
        parent_id: str,
        metric: str,
        mode: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        max_epochs: int,
    ) -> None:
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.params, self.tags = dict(params), dict(tags)
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._best: dict[str, float] = {}
        self._last_step: dict[str, int] = {}
        self._improved: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into Ray's experiment state: keep configuration, not connections or caches.
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _best={}, _last_step={}, _improved=set())
        return state

    @property
    def mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = client(self.uri)
        return self._client

    def run_id(self, trial: Trial) -> str:
        """The trial's run: found by its tag (after a retry or resume) or created."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self.mlflow.search_runs(
            [self.exp_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}'"
            f" and tags.`sweep.trial_id` = '{trial.trial_id}'",
        )
        if found:
            run_id = found[0].info.run_id
            history = self.mlflow.get_metric_history(run_id, self.metric)
            self._last_step[trial.trial_id] = max((m.step for m in history), default=0)
            values = [m.value for m in history]
            if values:
                self._best[trial.trial_id] = max(values) if self.mode == "max" else min(values)
            if found[0].info.status != "RUNNING":
                self.mlflow.update_run(run_id, status="RUNNING")
        else:
            run = self.mlflow.create_run(
                self.exp_id,
                run_name=trial.trial_id,
                tags={
                    **self.tags,
                    "mlflow.parentRunId": self.parent_id,
                    "sweep.role": TRIAL,
                    "sweep.trial_id": trial.trial_id,
                    STATE_TAG: "running",
                },
            )
            run_id = run.info.run_id
            params = {**self.params, **{k: v for k, v in trial.config.items()}}
            from mlflow.entities import Param

            self.mlflow.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        from mlflow.entities import Metric

        run_id = self.run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._last_step.get(trial.trial_id, 0):
            return  # an epoch re-run after a restore: MLflow already holds it
        self._last_step[trial.trial_id] = step
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [Metric(k, v, ts, step) for k, v in _scalar_metrics(result).items()]
        self.mlflow.log_batch(run_id, metrics=metrics)
        facts = {k.removeprefix("info/"): str(v) for k, v in result.items() if k.startswith("info/")}
        for key, text in facts.items():
            self.mlflow.set_tag(run_id, key, text)
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            best = self._best.get(trial.trial_id)
            if best is None or (value > best if self.mode == "max" else value < best):
                self._best[trial.trial_id] = float(value)
                self._improved.add(trial.trial_id)

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Checkpoint, **info: Any
    ) -> None:
        if trial.trial_id not in self._improved:
            return
        best = Path(checkpoint.path) / "best.pt"
        if best.exists():
            self.mlflow.log_artifact(self.run_id(trial), str(best), artifact_path="checkpoints")
            self._improved.discard(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_id(trial)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        planned = int(trial.config.get("epochs", self.max_epochs))
        # Fewer epochs than planned: stopped by the scheduler (or the trainer's own early stopping).
        state = "completed" if epochs >= planned else "stopped_early"
        self.mlflow.set_tag(run_id, STATE_TAG, state)
        self.mlflow.set_tag(run_id, "sweep.epochs_run", str(epochs))
        self.mlflow.set_terminated(run_id, "FINISHED")

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # The worker died or raised; Ray restarts the trial from its last checkpoint in the same run.
        run_id = self.run_id(trial)
        self.mlflow.set_tag(run_id, "sweep.retries", str(trial.run_metadata.num_failures))
        self.mlflow.set_tag(run_id, "sweep.last_failure", error_line(trial)[:4000])

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_id(trial)
        message = error_line(trial)
        self.mlflow.set_tag(run_id, STATE_TAG, "errored")
        self.mlflow.set_tag(run_id, "sweep.error", message[:4000])
        self.mlflow.set_tag(run_id, "sweep.epochs_run", str(int((trial.last_result or {}).get("epoch", 0))))
        self.mlflow.set_terminated(run_id, "FAILED")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        known = {t.trial_id for t in trials}
        for run in trial_runs(self.mlflow, self.exp_id, self.parent_id):
            if run.info.status == "RUNNING" and run.data.tags.get("sweep.trial_id") not in known:
                # Created before a crash for a trial Ray never checkpointed: not part of the sweep.
                self.mlflow.set_tag(run.info.run_id, STATE_TAG, "orphaned")
                self.mlflow.set_terminated(run.info.run_id, "FAILED")


def error_line(trial: Trial) -> str:
    """The last line of the trial's traceback: the exception and its message."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).exists():
        text = Path(path).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith(" ")]
    return lines[-1] if lines else "trial failed"
