"""MLflow: one parent run per sweep, one nested run per trial, written from the driver.

The driver is the only writer: trials report to Ray Tune, and :class:`MlflowCallback` turns each
report into metrics (step = epoch), the first report's facts into tags, and each new best into the
``checkpoints/best.pt`` artifact, queued and written in order by a background thread (Tune's event
loop never waits for the store). A trial that is retried or resumed finds its run again by its
``sweep.trial_id`` tag, so it never gets a duplicate. An interrupted sweep (Ctrl-C, SIGTERM) marks its
parent and its unfinished trials KILLED, so nothing stays RUNNING; ``--resume`` reopens them.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from sweep import records
from sweep.errors import Fault, disk_full
from sweep.interrupts import FAULT, INTERRUPTED, stop_for
from sweep.journal import Journal, MlflowWriter, read_journal
from sweep.records import end_state, flat_config
from sweep.storage import Storage, best_files, gone
from sweep.store import client
from sweep.tags import EPOCHS_PLANNED, EPOCHS_RUN, ERROR, LAST_FAILURE, NODE_ID, NODES, RETRIES, STATE, STOP_REASON
from trainers.direction import better

if TYPE_CHECKING:
    from ray.tune import Checkpoint
    from ray.tune.experiment import Trial

"""Every Ray node a trial ran on, in order, once it moved (its first node died)."""


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
        objectives: Sequence[tuple[str, str]],
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        max_epochs: int,
        journal_path: Path,
        drain_s: float = 60.0,
        context: Mapping[str, Any] | None = None,
        place: Storage | None = None,
    ) -> None:
        self.uri, self.exp_id, self.parent_id = uri, exp_id, parent_id
        self.objectives = [tuple(o) for o in objectives]
        (self.metric, self.mode), self.max_epochs = self.objectives[0], max_epochs
        self.params, self.tags = dict(params), dict(tags)
        self.context = dict(context or {})
        """What the parent's summary says besides the runs: description, search space, scheduler, dataset."""
        self.journal_path, self.drain_s = journal_path, drain_s
        self.place = place
        """Where Ray Tune keeps the sweep's state (an object store's errors name it)."""
        self._journal: Journal | None = None
        self._best: dict[str, float] = {}
        self._improved: set[str] = set()
        self._open: set[str] = set()
        self._nodes: dict[str, list[str]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into Ray's experiment state: keep configuration, not connections or caches.
        return {**self.__dict__, "_journal": None, "_best": {}, "_improved": set(), "_open": set(), "_nodes": {}}

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            writer = MlflowWriter(
                client(self.uri, probe=False),  # mid-sweep an outage is kept, never raised
                self.exp_id,
                self.parent_id,
                self.objectives,  # type: ignore[arg-type]
                self.params,
                self.tags,
                self.context.get("dataset"),
                self.context.get("role", "trial"),
            )
            self._journal = Journal(writer, self.journal_path)
            if self.journal_path.exists():  # left by an earlier driver of this sweep: deliver it first
                self._journal.pending, skipped = read_journal(self.journal_path)
                if skipped:
                    print(
                        f"tracking: {skipped} unreadable lines of {self.journal_path} skipped (cut short); "
                        f"{len(self._journal.pending)} kept records are delivered first",
                        file=sys.stderr,
                    )
            self._journal.start()  # writes leave Tune's event loop; one thread keeps their order
        return self._journal

    def _submit(self, trials: list[Trial], trial: Trial, op: str, **fields: Any) -> None:
        number = records.number_of(trial.trial_id, trials.index(trial) + 1 if trial in trials else 0)
        self.journal.submit(
            {"op": op, "trial": trial.trial_id, "number": number, "config": flat_config(trial.config), **fields}
        )

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._open.add(trial.trial_id)
        self._submit(trials, trial, "tags", tags={})

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", time.time()) * 1000)
        self._submit(trials, trial, "metrics", step=step, ts=ts, values=_scalar_metrics(result))
        facts = {k.removeprefix("info/"): str(v) for k, v in result.items() if k.startswith("info/")}
        node = facts.get(NODE_ID)
        if node and node not in self._nodes.setdefault(trial.trial_id, []):
            self._nodes[trial.trial_id].append(node)
            if len(self._nodes[trial.trial_id]) > 1:  # retried on another node (the first one died)
                facts[NODES] = ",".join(self._nodes[trial.trial_id])
        if facts:
            self._submit(trials, trial, "tags", tags=facts)
        value = result.get(self.metric)
        if better(value, self._best.get(trial.trial_id), self.mode):
            self._best[trial.trial_id] = float(value)  # type: ignore[arg-type]  # better() took only a number
            self._improved.add(trial.trial_id)

    def on_checkpoint(
        self, iteration: int, trials: list[Trial], trial: Trial, checkpoint: Checkpoint, **info: Any
    ) -> None:
        # best.pt and the trainer's other best_* files (a detector's per-class AP table); from an object store
        # they come down to the driver first, and the journal keeps its own link to each until it is written
        if trial.trial_id not in self._improved:
            return
        downloads = self.journal_path.parent / "downloads" / trial.trial_id
        files = best_files(checkpoint, downloads)
        step = int((trial.last_result or {}).get("epoch", 0))
        for file in files:
            self._submit(trials, trial, "artifact", path=str(file), artifact_path="checkpoints", step=step)
        if files:
            self._improved.discard(trial.trial_id)
        shutil.rmtree(downloads.parent, ignore_errors=True)  # one checkpoint at a time: the event loop is ours

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # The worker died or raised; Ray restarts the trial from its last checkpoint, in the same run.
        tags = {RETRIES: str(trial.run_metadata.num_failures), LAST_FAILURE: error_line(trial)[:4000]}
        self._submit(trials, trial, "tags", tags=tags)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._open.discard(trial.trial_id)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        planned = int(flat_config(trial.config).get("epochs", self.max_epochs))
        state = end_state(epochs, planned, diverged=bool((trial.last_result or {}).get(f"info/{STOP_REASON}")))
        tags = {STATE: state, EPOCHS_RUN: str(epochs), EPOCHS_PLANNED: str(planned)}
        self._submit(trials, trial, "end", status="FINISHED", tags=tags)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._open.discard(trial.trial_id)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        line = error_line(trial)
        if disk_full(RuntimeError(line)):  # every trial writing there would fail the same way: stop, resumable
            stop_for(Fault.full_disk(self.journal_path.parent))
        elif down := gone(line, self.place):  # the store of the checkpoints stopped answering: so for every trial
            stop_for(Fault.store_gone(down))
        tags = {STATE: "errored", ERROR: line[:4000], EPOCHS_RUN: str(epochs)}
        self._submit(trials, trial, "end", status="FAILED", tags=tags)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        # Trials Ray stopped without completing them: interrupted (resumable), or out of time budget.
        for trial in (t for t in trials if t.trial_id in self._open):
            epochs = str(int((trial.last_result or {}).get("epoch", 0)))
            if INTERRUPTED.is_set():
                tags = {STATE: "interrupted", EPOCHS_RUN: epochs}
                self._submit(trials, trial, "end", status="KILLED", tags=tags)
            else:
                tags = {STATE: "stopped_early", STOP_REASON: "time budget", EPOCHS_RUN: epochs}
                self._submit(trials, trial, "end", status="FINISHED", tags=tags)
        self._open.clear()
        self.journal.submit({"op": "orphans", "known": [t.trial_id for t in trials]})
        self.journal.submit({"op": "summary", "context": self.context})
        self.journal.submit({"op": "parent_end", "status": "KILLED" if INTERRUPTED.is_set() else "FINISHED"})
        if FAULT:  # the store shares the full disk: what it could not take is said with the fault, not here
            self.journal.drain(min(self.drain_s, 2.0))
            if self.journal.unkept:  # said with the fault, in its one line
                lost = f"{len(self.journal.pending)} tracking records could not be written"
                FAULT[0] = FAULT[0]._replace(reason=f"{FAULT[0].reason}; {lost}")
        elif not self.journal.drain(self.drain_s):
            print(
                f"tracking: store still unreachable; {len(self.journal.pending)} records kept in "
                f"{self.journal_path}; deliver them with `sweep sync`",
                file=sys.stderr,
                flush=True,
            )


def error_line(trial: Trial) -> str:
    """The last line of the trial's traceback: the exception and its message."""
    path = getattr(trial, "error_file", None)
    return last_line(Path(path).read_text() if path and Path(path).exists() else "")


def last_line(traceback: str) -> str:
    """The exception line of a traceback (its last unindented line)."""
    lines = [line for line in traceback.strip().splitlines() if line.strip() and not line.startswith(" ")]
    return lines[-1] if lines else "trial failed"
