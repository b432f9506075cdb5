"""MLflow: one parent run per sweep, one nested run per trial, written from the driver.

The driver is the only writer: trials report to Ray Tune, and :class:`MlflowCallback` turns each
report into metrics (step = epoch), the first report's facts into tags, and each new best into the
``checkpoints/best.pt`` artifact. A trial that is retried or resumed finds its run again by its
``sweep.trial_id`` tag, so it never gets a duplicate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from sweep.journal import PARENT, STATE_TAG, STOP_REASON, TRIAL, Journal, MlflowWriter

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

__all__ = ["PARENT", "STATE_TAG", "STOP_REASON", "TRIAL", "MlflowCallback"]


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
    """Ray Tune callback that records every trial as a nested MLflow run of the sweep's parent run.

    Writes go through a :class:`~sweep.journal.Journal`, so an unreachable store delays them but
    loses none.
    """

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
        journal_path: Path,
        drain_s: float = 60.0,
    ) -> None:
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.params, self.tags = dict(params), dict(tags)
        self.journal_path, self.drain_s = journal_path, drain_s
        self._journal: Journal | None = None
        self._best: dict[str, float] = {}
        self._improved: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into Ray's experiment state: keep configuration, not connections or caches.
        return {**self.__dict__, "_journal": None, "_best": {}, "_improved": set()}

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            writer = MlflowWriter(client(self.uri), self.exp_id, self.parent_id, self.metric, self.params, self.tags)
            self._journal = Journal(writer, self.journal_path)
            if self.journal_path.exists():  # left by an earlier driver of this sweep: deliver it first
                self._journal.pending = [json.loads(x) for x in self.journal_path.read_text().splitlines() if x]
        return self._journal

    def _submit(self, trial: Trial, op: str, **fields: Any) -> None:
        self.journal.submit({"op": op, "trial": trial.trial_id, "config": dict(trial.config), **fields})

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit(trial, "tags", tags={})

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", time.time()) * 1000)
        self._submit(trial, "metrics", step=step, ts=ts, values=_scalar_metrics(result))
        facts = {k.removeprefix("info/"): str(v) for k, v in result.items() if k.startswith("info/")}
        if facts:
            self._submit(trial, "tags", tags=facts)
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            best = self._best.get(trial.trial_id)
            if best is None or (value > best if self.mode == "max" else value < best):
                self._best[trial.trial_id] = float(value)
                self._improved.add(trial.trial_id)

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Checkpoint, **info: Any
    ) -> None:
        # best.pt and the trainer's other best_* files (a detector's per-class AP table)
        files = sorted(Path(checkpoint.path).glob("best*"))
        if trial.trial_id in self._improved and files:
            step = int((trial.last_result or {}).get("epoch", 0))
            for file in files:
                self._submit(trial, "artifact", path=str(file), artifact_path="checkpoints", step=step)
            self._improved.discard(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # The worker died or raised; Ray restarts the trial from its last checkpoint, in the same run.
        tags = {"sweep.retries": str(trial.run_metadata.num_failures), "sweep.last_failure": error_line(trial)[:4000]}
        self._submit(trial, "tags", tags=tags)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        planned = int(trial.config.get("epochs", self.max_epochs))
        # Fewer epochs than planned: stopped by the scheduler (or the trainer's own early stopping).
        state = "completed" if epochs >= planned else "stopped_early"
        if (trial.last_result or {}).get(f"info/{STOP_REASON}"):
            state = "diverged"
        self._submit(trial, "end", status="FINISHED", tags={STATE_TAG: state, "sweep.epochs_run": str(epochs)})

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        tags = {STATE_TAG: "errored", "sweep.error": error_line(trial)[:4000], "sweep.epochs_run": str(epochs)}
        self._submit(trial, "end", status="FAILED", tags=tags)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.journal.submit({"op": "orphans", "known": [t.trial_id for t in trials]})
        self.journal.submit({"op": "parent_end"})
        if not self.journal.drain(self.drain_s):
            print(
                f"tracking: store still unreachable; {len(self.journal.pending)} records kept in "
                f"{self.journal_path}; deliver them with `sweep sync`",
                file=sys.stderr,
                flush=True,
            )


def error_line(trial: Trial) -> str:
    """The last line of the trial's traceback: the exception and its message."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).exists():
        text = Path(path).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith(" ")]
    return lines[-1] if lines else "trial failed"
