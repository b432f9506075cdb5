"""Every MLflow write of a sweep as an ordered, serialisable operation.

The driver applies each operation at once when the tracking store answers. When it does not (a
server restart, a network cut), operations queue in order, are written to
``results/<name>/tracking-pending.jsonl`` and are delivered when the store is back; if it never
comes back during the sweep, ``sweep sync NAME`` replays the file later. Nothing is lost and
nothing is logged twice (a re-run epoch whose step MLflow already holds is skipped).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep import records
from sweep.errors import Fault, SweepError, disk_full
from sweep.interrupts import stop_for
from sweep.store import TRIAL, redact, trial_runs, unreachable
from sweep.tags import EPOCHS_RUN, ROLE, STATE, STOP_REASON, TNN, TRIAL_ID
from trainers.base import link_or_copy

if TYPE_CHECKING:
    from mlflow import MlflowClient

Op = dict[str, Any]
ENDED = ("completed", "stopped_early", "diverged")
"""The states of a trial that will not go on (interrupted, errored and time-budget trials may)."""


def ended_for_good(run: Any) -> bool:
    """Whether a trial's run says the trial is over and nothing would continue it."""
    tags = run.data.tags
    return bool(
        run.info.status == "FINISHED"
        and tags.get(STATE) in ENDED
        and tags.get(STOP_REASON) != "time budget"
        and EPOCHS_RUN in tags
    )


_PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
}


_DENIED = {"PERMISSION_DENIED", "UNAUTHENTICATED"}


def transient(error: Exception) -> bool:
    """An error worth retrying later (store unreachable or busy, or refusing this user's writes), not a rejected
    write."""
    from mlflow.exceptions import MlflowException

    return not (isinstance(error, MlflowException) and error.error_code in _PERMANENT)


def denied(error: Exception) -> bool:
    """The store answered, and refuses this user's writes (a read-only account, a wrong password)."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in _DENIED


def read_journal(path: Path) -> tuple[list[Op], int]:
    """The operations a journal file holds, and how many of its lines could not be read (a line cut short by a
    power cut or a full disk: what parses is kept)."""
    ops, skipped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError:
            skipped += 1
    return ops, skipped


class MlflowWriter:
    """Applies journal operations to MLflow; knows each trial's run, the steps it already holds and its
    best value of every objective (``(metric, mode)`` pairs, the first the primary)."""

    def __init__(
        self,
        client: MlflowClient,
        exp_id: str,
        parent_id: str,
        objectives: Sequence[tuple[str, str]],
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        dataset: Mapping[str, Any] | None = None,
        role: str = TRIAL,
    ) -> None:
        self.client, self.exp_id, self.parent_id = client, exp_id, parent_id
        self.objectives = list(objectives)
        self.metric = self.objectives[0][0]
        self.params, self.tags, self.dataset = dict(params), dict(tags), dict(dataset or {})
        self.role = role
        """``sweep.role`` of the runs this writer creates: the sweep's trials, or re-runs of them."""
        self.runs: dict[str, str] = {}
        self.ended: set[str] = set()
        """Trials whose runs had ended for good when this writer found them: nothing more is written to them."""
        self.numbers: dict[str, int] = {}
        """Each trial's ``tNN``: given once, in launch order, kept by its run across retries and resumes."""
        self._taken: int | None = None
        self.last_step: dict[str, int] = {}
        self.best: dict[str, dict[str, tuple[float, int]]] = {}

    def run_id(self, trial_id: str, config: Mapping[str, Any] | None = None, number: int = 0) -> str:
        """The trial's run: found by its tag (after a retry, resume or outage) or created, named for people."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = self.client.search_runs(
            [self.exp_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.`{TRIAL_ID}` = '{trial_id}'",
        )
        if found:
            run = found[0]
            run_id = run.info.run_id
            number = self.numbers[trial_id] = _number(run.data.tags.get(TNN)) or number
            history = self.client.get_metric_history(run_id, self.metric)
            self.last_step[trial_id] = max((m.step for m in history), default=0)
            epoch = int(run.data.metrics.get("best_epoch", 0))
            self.best[trial_id] = {
                m: (run.data.metrics[f"best_{m}"], epoch) for m, _ in self.objectives if f"best_{m}" in run.data.metrics
            }
            if ended_for_good(run) and self.role == TRIAL:
                self.ended.add(trial_id)
            elif run.info.status != "RUNNING":
                name = records.run_name(number, config or {})
                self.client.set_tag(run_id, "mlflow.runName", name)
                self.client.update_run(run_id, status="RUNNING")
        else:
            from mlflow.entities import Param

            number = self.numbers[trial_id] = number or self._next_number()  # Ray's creation order, as Optuna's
            tags = {
                **self.tags,
                "mlflow.parentRunId": self.parent_id,
                ROLE: self.role,
                TRIAL_ID: trial_id,
                TNN: (config or {}).get("rerun_of_run") or records.trial_number(number),
                STATE: "running",
            }
            name = records.run_name(number, config or {})
            run_id = self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id
            params = {**self.params, **(config or {})}
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            if self.dataset:
                self.client.log_inputs(run_id, [records.dataset_input(self.dataset)])
        self.runs[trial_id] = run_id
        return run_id

    def _bests(self, trial_id: str, step: int, values: Mapping[str, float]) -> dict[str, float]:
        """On a new best of the primary metric: ``best_<metric>`` of every objective at this epoch (the values the
        study is told) and ``best_epoch``."""
        (metric, mode), *_ = self.objectives
        value = values.get(metric)
        held = self.best.get(trial_id, {}).get(metric, (None, 0))[0]
        if value is None or not records.improved(value, held, mode):
            return {}
        self.best[trial_id] = {m: (values[m], step) for m, _ in self.objectives if m in values}
        return {**{f"best_{m}": v for m, (v, _) in self.best[trial_id].items()}, "best_epoch": float(step)}

    def apply(self, op: Op) -> None:
        from mlflow.entities import Metric

        kind = op["op"]
        if kind == "parent_end":
            self.client.set_terminated(self.parent_id, op.get("status", "FINISHED"))
            return
        if kind == "orphans":
            self._orphans(set(op["known"]))
            return
        if kind == "summary":
            self._summary(op)
            return
        run_id = self.run_id(op["trial"], op.get("config"), op.get("number", 0))
        if op["trial"] in self.ended:
            return  # its run says it ended for good (before a killed driver's last saved state): left as it is
        if kind == "metrics":
            if op["step"] <= self.last_step.get(op["trial"], 0):
                return  # an epoch re-run after a restore: MLflow already holds it
            values = {**op["values"], **self._bests(op["trial"], op["step"], op["values"])}
            metrics = [Metric(k, v, op["ts"], op["step"]) for k, v in values.items()]
            self.client.log_batch(run_id, metrics=metrics)
            self.last_step[op["trial"]] = op["step"]  # only once written: a failed write is retried
        elif kind == "tags":
            self._tag(run_id, op["tags"])
        elif kind == "artifact":
            self.client.log_artifact(run_id, op["path"], artifact_path=op["artifact_path"])
        elif kind == "end":
            tags = dict(op["tags"])
            state, epochs = tags[STATE], int(tags.get(EPOCHS_RUN, 0))
            value, at = self.best.get(op["trial"], {}).get(self.metric, (None, None))
            number = self.numbers.get(op["trial"]) or int(op.get("number") or 0)
            name = records.run_name(number, op.get("config") or {})
            tags["mlflow.runName"] = records.ended_name(name, state, epochs, value)
            tags["mlflow.note.content"] = records.trial_note(
                state, epochs, tags, records.best_text(self.metric, value, at)
            )
            self._tag(run_id, tags)
            self.client.set_terminated(run_id, op["status"])

    def _next_number(self) -> int:
        """The next free ``tNN`` of this writer's runs under the parent (the store's, after a resume)."""
        if self._taken is None:
            runs = trial_runs(self.client, self.exp_id, self.parent_id, role=self.role)
            self._taken = max((_number(r.data.tags.get(TNN)) for r in runs), default=0)
        self._taken += 1
        return self._taken

    def _tag(self, run_id: str, tags: Mapping[str, str]) -> None:
        """All of ``tags`` in one write."""
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _summary(self, op: Op) -> None:
        """The parent's summary metrics, tags and description, from what the trial runs hold (a re-run group's
        description is written when ``sweep rerun`` creates it)."""
        from mlflow.entities import Metric, RunTag

        if self.role != TRIAL:
            return
        parent = self.client.get_run(self.parent_id)
        wall = time.time() - parent.info.start_time / 1000
        runs = trial_runs(self.client, self.exp_id, self.parent_id)
        summary = records.summarize(runs, self.objectives, op["context"], wall)
        now = int(time.time() * 1000)
        tags = {**summary.tags, "mlflow.note.content": summary.note}
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, v, now, 0) for k, v in summary.metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )

    def _orphans(self, known: set[str]) -> None:
        for run in trial_runs(self.client, self.exp_id, self.parent_id):
            if run.info.status == "RUNNING" and run.data.tags.get(TRIAL_ID) not in known:
                # Created before a crash for a trial Ray never checkpointed: not part of the sweep.
                self.client.set_tag(run.info.run_id, STATE, "orphaned")
                self.client.set_terminated(run.info.run_id, "FAILED")


def _number(tag: str | None) -> int:
    """7 of ``t07``; 0 for anything else."""
    digits = (tag or "")[1:]
    return int(digits) if (tag or "").startswith("t") and digits.isdigit() else 0


class Journal:
    """Ordered delivery of operations to a writer, surviving outages of the tracking store.

    With :meth:`start`, a background thread does the writing: :meth:`submit` only queues, so Ray Tune's
    event loop (which calls the sweep's callbacks) never waits for the store. One thread applies the
    operations in the order they were submitted; :meth:`drain` waits for it at the end of the sweep.
    Without it (``sweep sync``), :meth:`flush` delivers in the caller's thread."""

    def __init__(self, writer: MlflowWriter, path: Path, retry_every_s: float = 5.0) -> None:
        self.writer, self.path, self.retry_every_s = writer, path, retry_every_s
        self.pending: list[Op] = []
        self._next_try = 0.0
        self._warned = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None
        """Set by :meth:`drain`: the thread gives up on an unreachable store at this time."""
        self.refused: str | None = None
        """Why the store refused this user's writes, when it did (the records are kept)."""
        self.unkept = False
        """Whether the pending records are only in memory: the journal file could not be written (a full disk)."""

    def start(self) -> Journal:
        self._thread = threading.Thread(target=self._deliver, name="sweep-tracking", daemon=True)
        self._thread.start()
        return self

    def submit(self, op: Op) -> None:
        """Queue ``op``; delivered at once in the background, or by the next :meth:`flush`. An artifact's file
        is linked into the spool folder first: Ray recycles checkpoint folders before a queued write runs."""
        if op["op"] == "artifact" and not op.get("spooled"):
            self._keep(op)
        with self._wake:
            self.pending.append(op)
            self._wake.notify()
        if self._thread is None:
            self.flush()

    def flush(self, force: bool = False) -> bool:
        """Deliver queued operations in order; True when nothing is left pending."""
        if self.pending and not force and time.monotonic() < self._next_try:
            self._spool()
            return False
        while self.pending:
            try:
                self.writer.apply(self.pending[0])
            except Exception as e:
                if disk_full(e):  # the store's own disk (an embedded SQLite store): no write can succeed now
                    self._next_try = time.monotonic() + self.retry_every_s
                    stop_for(Fault.full_disk(self.path.parent))
                    self._spool()
                    return False
                if not transient(e):
                    print(
                        f"tracking: dropped a rejected write ({self._pop()['op']}): {redact(str(e))}",
                        file=sys.stderr,
                    )
                    continue
                self._next_try = time.monotonic() + self.retry_every_s
                self._spool()
                reason = redact(str(e).splitlines()[0][:200]) if str(e).strip() else type(e).__name__
                self.refused = reason if denied(e) else None
                if not self._warned:
                    what = "refuses this user's writes" if self.refused else "unreachable"
                    print(
                        f"tracking: store {what} ({reason}); training goes on, records are kept in {self.path}",
                        file=sys.stderr,
                        flush=True,
                    )
                    self._warned = True
                return False
            self._done(self._pop())
        if self._warned:
            print("tracking: store reachable again, every kept record delivered", file=sys.stderr, flush=True)
            self._warned = False
        self.path.unlink(missing_ok=True)
        return True

    def drain(self, wait_s: float) -> bool:
        """At the end of a sweep: keep trying for ``wait_s`` seconds, then leave the file for ``sweep sync``."""
        deadline = time.monotonic() + wait_s
        if self._thread is not None:
            with self._wake:
                self._deadline = deadline
                self._wake.notify()
            # a write in flight when the deadline passes gets the store client's own timeout to finish
            self._thread.join(timeout=wait_s + 30)
            if self._thread.is_alive():
                self._spool()
            return not self.pending
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_every_s, max(0.0, deadline - time.monotonic())))
        return True

    def _deliver(self) -> None:
        """The background writer: deliver, wait for more (or, after a failure, for the retry time)."""
        while True:
            with self._wake:
                while not self.pending and self._deadline is None:
                    self._wake.wait()
                if not self.pending:
                    return
            force = self._deadline is not None
            if self.flush(force=force):
                continue
            if force and time.monotonic() >= (self._deadline or 0):
                return
            with self._wake:
                until = self._next_try if not force else min(self._next_try, self._deadline or 0)
                self._wake.wait(timeout=max(0.05, until - time.monotonic()))

    def _pop(self) -> Op:
        with self._wake:
            return self.pending.pop(0)

    def _keep(self, op: Op) -> None:
        dest = self.path.with_suffix(".files") / op["trial"] / str(op["step"]) / Path(op["path"]).name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(Path(op["path"]), dest)
        except OSError as e:
            if not disk_full(e):
                raise
            stop_for(Fault.full_disk(self.path.parent))  # delivered from where it is, if it still is there
            return
        op.update(path=str(dest), spooled=True)

    def _spool(self) -> None:
        """Write the queue to disk (its artifacts' files are in the spool folder already). On a full disk the
        queue stays in memory (and the sweep is stopped): :attr:`unkept` says so."""
        with self._wake:
            ops = list(self.pending)
        for op in ops:
            if op["op"] == "artifact" and not op.get("spooled"):
                self._keep(op)
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
            tmp.replace(self.path)
            self.unkept = False
        except OSError as e:
            if not disk_full(e):
                raise
            tmp.unlink(missing_ok=True)
            self.unkept = True
            stop_for(Fault.full_disk(self.path.parent))

    @staticmethod
    def _done(op: Op) -> None:
        if op.get("spooled"):
            Path(op["path"]).unlink(missing_ok=True)


def replay(path: Path, writer: MlflowWriter, uri: str) -> int:
    """``sweep sync``: deliver a journal file left by a sweep whose store was unreachable at its end.

    The file is kept unless every record reached the store that holds the sweep's parent run: a store
    that is down, refuses the credentials or is not the sweep's own is an error, never a silent drop."""
    try:
        parent = writer.client.get_run(writer.parent_id)
    except Exception as e:
        if transient(e):
            raise unreachable(uri, e) from None
        raise SweepError(
            f"sync: {redact(uri)} holds no run {writer.parent_id}, the sweep's parent; name the sweep's "
            f"store with --tracking-uri (records kept in {path})"
        ) from None
    if parent.info.experiment_id != writer.exp_id:
        raise SweepError(f"sync: run {writer.parent_id} in {redact(uri)} is not in the sweep's experiment")
    ops, skipped = read_journal(path)
    if skipped:
        print(f"sync: {skipped} unreadable lines of {path} skipped (cut short); {len(ops)} read", file=sys.stderr)
    count = len(ops)
    journal = Journal(writer, path)
    journal._warned = True  # the one line below says what happened, not the journal's own notices
    journal.pending = ops
    if not journal.flush(force=True):
        if journal.refused:
            raise SweepError(
                f"sync: {redact(uri)} refuses this user's writes ({journal.refused}); log in as a user who may "
                f"write (MLFLOW_TRACKING_USERNAME / _PASSWORD); {len(journal.pending)} records kept in {path}"
            )
        raise SweepError(f"sync: {redact(uri)} is still unreachable; {len(journal.pending)} records kept in {path}")
    return count


PENDING = "tracking-pending.jsonl"
"""The sweep's journal file in its results folder."""


def pending_file(role: str, parent_id: str) -> str:
    """The journal a driver keeps its undelivered tracking records in (``sweep sync`` delivers them): the sweep's
    own, or one per ``sweep rerun`` group, named after the group's run (its records belong under that run, never
    under the sweep's parent as trials)."""
    return PENDING if role == TRIAL else f"{PENDING.removesuffix('.jsonl')}-{parent_id}.jsonl"


def sync(name: str, results: Path, tracking_uri: str | None = None) -> tuple[int, str] | None:
    """``sweep sync``: deliver the records a sweep kept on disk while its store did not answer, in order, to the
    store (``tracking_uri`` or the record's): the sweep's own, then each ``sweep rerun`` group's (to the group's
    run). How many and where, or None when nothing waits."""
    from sweep.export import locate_uri
    from sweep.record import load_record
    from sweep.spec import MetricSpec
    from sweep.store import RERUN, client

    folder = results / name
    stem = PENDING.removesuffix(".jsonl")
    files = sorted(folder.glob(f"{stem}*.jsonl"), key=lambda p: p.name != PENDING) if folder.is_dir() else []
    if not files:
        return None
    record = load_record(name, results)
    uri = locate_uri(name, results, tracking_uri)
    if "***" in record.tracking_uri and not tracking_uri:
        raise SweepError(f"sync: give the sweep's store with its password: --tracking-uri {record.tracking_uri}")
    metric = MetricSpec.model_validate(record.spec.get("metric", {}))
    objectives = list(zip(metric.names, metric.modes, strict=True))
    count = 0
    for path in files:
        group = path.stem.removeprefix(stem).removeprefix("-")  # a rerun group's run id, or '' for the sweep's own
        parent, role = (group, RERUN) if group else (record.parent_run_id, TRIAL)
        writer = MlflowWriter(client(uri), record.experiment_id, parent, objectives, {}, {}, role=role)
        count += replay(path, writer, uri)
    return count, uri
