"""The MLflow tracking store: its URI, a client, and the queries every command shares. No Ray here:
``status``, ``export`` and ``sync`` read the store without importing the engine.

Credentials never travel in a URI we keep. :func:`connect` moves a URI's user and password into the
environment variables the clients read (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` for a tracking
server, ``PGPASSWORD`` for PostgreSQL) and returns the URI without them, which is what ``sweep.json``,
Ray's experiment state, MLflow's messages and ours hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from sweep.errors import SweepError
from sweep.tags import METRIC, MODE, NAME, ROLE

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

PARENT, TRIAL, RERUN, RERUNS = "parent", "trial", "rerun", "reruns"
"""The roles of a sweep's runs (tag ``sweep.role``): its parent, its trials, and a ``sweep rerun``'s group (a run
nested under the parent, named after what it repeats) with its re-runs nested under it."""
KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
"""Tag of a trial that ended itself before its epochs were done, with the reason (a diverged loss)."""
_HTTP_DEFAULTS = {
    # Fail fast on an unreachable server: the journal, not the HTTP client, does the retrying.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # MLflow prints a "View run … at: URL" line per ended run; our progress lines are the output.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def resolve_uri(uri: str | None, base: Path) -> str:
    """The tracking URI: the spec's, ``MLFLOW_TRACKING_URI``, or the embedded SQLite store in ``base``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(base / 'mlruns.db').resolve()}"


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return re.sub(r"(//[^:/@\s]+):[^@/\s]*@", r"\1:***@", text)


PG_CONNECT_TIMEOUT_S = 5
"""How long a PostgreSQL store may take to answer before it is reported unreachable (libpq waits for ever)."""


def postgres_uri(uri: str) -> str:
    """A PostgreSQL URI as the store uses it: ``postgresql://`` (or ``postgres://``) means the psycopg2 driver that
    ``sweep[server]`` installs (MLflow would look for psycopg 3), and a connect timeout unless one is given."""
    parts = urlsplit(uri)
    if parts.scheme in ("postgresql", "postgres"):
        parts = parts._replace(scheme="postgresql+psycopg2")
    if parts.scheme == "postgresql+psycopg2" and "connect_timeout" not in parts.query:
        parts = parts._replace(query="&".join(filter(None, [parts.query, f"connect_timeout={PG_CONNECT_TIMEOUT_S}"])))
    return urlunsplit(parts)


def connect(uri: str) -> str:
    """``uri`` without its credentials, which go where the clients read them (see the module's note)."""
    if uri.startswith(("postgresql", "postgres:")):
        uri = postgres_uri(uri)
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    scheme = parts.scheme.split("+")[0]
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    if scheme in ("http", "https"):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    elif scheme == "postgresql":
        if parts.password is not None:
            os.environ["PGPASSWORD"] = unquote(parts.password)
        netloc = f"{parts.username}@{netloc}" if parts.username else netloc
    else:  # a store with no password variable: keep it in the URI, redact it wherever it is shown
        return uri
    return urlunsplit(parts._replace(netloc=netloc))


def client(uri: str, probe: bool = True) -> MlflowClient:
    """An MLflow client of ``uri``; an embedded SQLite store is created whole or not at all, a database store that
    does not answer is one :class:`SweepError` (``probe``: checked before MLflow's own retries)."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if uri.startswith("sqlite:///"):
        ensure_sqlite(Path(uri.removeprefix("sqlite:///")))
    if uri.startswith(("postgresql", "postgres:")):
        uri = postgres_uri(uri)
        if probe:
            _answers(uri)
    try:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=uri)
    except ImportError as e:
        raise unreachable(uri, e) from None


def _answers(uri: str) -> None:
    """One connection to a database store, so that one that does not answer is one line within the connect
    timeout (MLflow itself retries for about 100 s, a warning each time)."""
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ImportError as e:
        raise unreachable(uri, e) from None
    except Exception as e:
        raise unreachable(uri, getattr(e, "orig", None) or e) from None


@contextmanager
def fluent(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.pytorch.log_model``, ``register_model``, ``models:/`` URIs) on ``uri`` for
    the block, and as before afterwards: ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in the
    process environment, which every later sweep and child process would otherwise inherit."""
    import mlflow

    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None  # public API: None is "unset"
    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets it
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if before_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before_env


@contextmanager
def as_ended(mlflow: MlflowClient, *run_ids: str) -> Iterator[None]:
    """For a command that adds to runs a sweep has ended (test scores, detections, report figures, the model): every
    write of the block goes in, and each run's status and end time stay as the sweep left them, whatever the block's
    MLflow calls do (logging through the fluent API reopens a run, and ending it again moves its end time, so its
    duration in the UI, in ``status``, the export and the report). The one way post-hoc writes reach a run."""
    before = {run_id: mlflow.get_run(run_id).info for run_id in run_ids}
    try:
        yield
    finally:
        for run_id, info in before.items():
            now = mlflow.get_run(run_id).info
            if info.end_time and (now.status, now.end_time) != (info.status, info.end_time):
                mlflow.set_terminated(run_id, status=info.status, end_time=info.end_time)


def ensure_sqlite(path: Path) -> None:
    """Create the MLflow SQLite store at ``path`` whole or not at all (:func:`create_atomically`)."""
    if path.exists():
        return
    for name in ("mlflow.store.db.utils", "alembic"):  # its migration chatter is not our output
        logging.getLogger(name).setLevel(logging.WARNING)

    artifacts = (path.parent / "mlartifacts").as_uri()

    def build(tmp: Path) -> None:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(f"sqlite:///{tmp}", artifacts).engine.dispose()

    def adapt(tmp: Path) -> None:  # a copy of the template: its Default experiment keeps artifacts next to it
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (f"{artifacts}/0",))

    import mlflow

    create_atomically(path, build, template=f"mlflow-{mlflow.__version__}", adapt=adapt)


def create_atomically(
    path: Path,
    build: Callable[[Path], object],
    template: str | None = None,
    adapt: Callable[[Path], object] = lambda tmp: None,
) -> None:
    """Create the SQLite database ``path`` by ``build(private_file)`` and a rename, under a lock: a kill
    mid-creation leaves no half-migrated database in place, and two first sweeps started together both
    find one whole database. With ``template`` (a name that changes with the schema: the library's version), the
    first database built is kept in :func:`cache_dir` and every later one is a copy of it (``adapt``-ed), not a
    new run of the migrations (MLflow's take about 2 s)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return
        for stale in path.parent.glob(f".{path.name}.*.creating"):  # left by a creator killed mid-way
            stale.unlink(missing_ok=True)
        # a name of its own for each attempt: an engine a failed attempt left behind in this process is not reused
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.creating")
        kept = cache_dir() / f"{template}.db" if template else None
        try:
            if kept is not None and _copied(kept, tmp):
                adapt(tmp)
            else:
                with _unsynced(tmp):  # a private file: one fsync at the end, not one per migration step
                    build(tmp)
                if kept is not None:
                    _keep(tmp, kept)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def cache_dir() -> Path:
    """What sweep keeps between runs on this machine: ``$XDG_CACHE_HOME/sweep`` (``~/.cache/sweep``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweep"


def _copied(template: Path, dest: Path) -> bool:
    """Whether the kept template database could be copied to ``dest`` (it is there and whole)."""
    try:
        shutil.copyfile(template, dest)
        return True
    except OSError:
        dest.unlink(missing_ok=True)
        return False


def _keep(built: Path, template: Path) -> None:
    """Keep a copy of the database just built as the template (atomically; a cache that cannot be written is no
    error: the next store is built again)."""
    part = template.with_name(f".{template.name}.{os.getpid()}.part")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, part)
        os.replace(part, template)
    except OSError:
        part.unlink(missing_ok=True)


@contextmanager
def _unsynced(private: Path) -> Iterator[None]:
    """SQLite connections to ``private`` skip their per-transaction fsyncs while the block runs. Safe there
    because a file not yet renamed into place is thrown away, never repaired, when creation is cut short."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def connected(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            files = [row[2] for row in cursor.execute("PRAGMA database_list").fetchall()]
            if str(private) in files:
                cursor.execute("PRAGMA synchronous=OFF")
                cursor.execute("PRAGMA journal_mode=MEMORY")
        finally:
            cursor.close()

    event.listen(Engine, "connect", connected)
    try:
        yield
    finally:
        event.remove(Engine, "connect", connected)


def experiment_id(mlflow: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created on first use (local stores keep artifacts next to the database), marked
    as model training so MLflow's UI opens on its runs, not on the GenAI views."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(KIND_TAG) != MODEL_TRAINING:
            mlflow.set_experiment_tag(found.experiment_id, KIND_TAG, MODEL_TRAINING)
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    try:
        return str(mlflow.create_experiment(name, artifact_location=location, tags={KIND_TAG: MODEL_TRAINING}))
    except Exception:  # created by a sweep started at the same moment
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def runs_link(base_url: str, exp_id: str | None, metric: str | None = None, mode: str = "max") -> str:
    """The MLflow UI page of an experiment's runs table, best trial first (or the list of experiments)."""
    base = base_url.rstrip("/")
    if not exp_id:
        return f"{base}/#/experiments"
    order = f"?orderByKey=metrics.%60best_{metric}%60&orderByAsc={str(mode == 'min').lower()}" if metric else ""
    return f"{base}/#/experiments/{exp_id}/runs{order}"


def unreachable(uri: str, error: Exception) -> SweepError:
    """One line for a store that cannot be used: refused credentials, or no answer."""
    if isinstance(error, ImportError):  # the store's database driver
        fix = "install it with pip install 'sweep[server]'" if "psycopg" in str(error.name) else "install it"
        return SweepError(f"tracking.uri: {redact(uri)} needs the Python package '{error.name}'; {fix}")
    text = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    code = getattr(error, "error_code", "")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or " 401" in text or " 403" in text:
        return SweepError(
            f"tracking.uri: {redact(uri)} refused the credentials ({code or text}); give the user and password "
            "in the URI or in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        )
    return SweepError(f"tracking.uri: cannot reach {redact(uri)}: {redact(text)}")


def git_commit(path: Path) -> str | None:
    """The commit of the code a sweep runs: git's, or ``SWEEP_GIT_COMMIT`` where there is no repository (the
    docker images record the commit they were built from there)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0:
        return out.stdout.strip()
    return os.environ.get("SWEEP_GIT_COMMIT") or None


def parent_runs(mlflow: MlflowClient, exp_id: str, name: str) -> list[Run]:
    """The sweep's parent runs, newest first."""
    return list(
        mlflow.search_runs(
            [exp_id],
            filter_string=f"tags.`{ROLE}` = '{PARENT}' and tags.`{NAME}` = '{name}'",
            order_by=["attributes.start_time DESC"],
        )
    )


def sweep_view(uri: str, name: str, experiment: str | None = None) -> tuple[str, str | None, str]:
    """Where the MLflow UI shows sweep ``name``: its experiment's id, and the metric and mode its runs are sorted
    by; a sweep the store does not hold is one line naming those it does."""
    from sweep.record import listing

    mlflow = client(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment or name)
    except Exception as e:
        raise unreachable(uri, e) from None
    if found is None:
        there = listing(sweep_names(mlflow), "it holds no sweep yet")
        raise SweepError(f"no sweep named '{name}' in the tracking store {redact(uri)}: {there}")
    parents = parent_runs(mlflow, found.experiment_id, name)
    tags = parents[0].data.tags if parents else {}
    return found.experiment_id, tags.get(METRIC, "").split(",")[0] or None, tags.get(MODE, "max").split(",")[0]


def sweep_names(mlflow: MlflowClient) -> list[str]:
    """The names of the sweeps whose parent runs the store holds, in any experiment."""
    exps = [e.experiment_id for e in mlflow.search_experiments()]
    runs = mlflow.search_runs(exps, filter_string=f"tags.`{ROLE}` = '{PARENT}'", max_results=5000) if exps else []
    return sorted({str(r.data.tags[NAME]) for r in runs if NAME in r.data.tags})


def rerun_runs(mlflow: MlflowClient, exp_id: str, parent_id: str) -> list[Run]:
    """Every re-run of the sweep's trials: those of each ``sweep rerun`` group under the parent (and any an earlier
    version nested under the parent itself)."""
    groups = trial_runs(mlflow, exp_id, parent_id, role=RERUNS)
    nested = [r for g in groups for r in trial_runs(mlflow, exp_id, g.info.run_id, role=RERUN)]
    return nested + trial_runs(mlflow, exp_id, parent_id, role=RERUN)


def trial_runs(mlflow: MlflowClient, exp_id: str, parent_id: str, role: str = TRIAL) -> list[Run]:
    """Every nested run of a parent run with ``role``: the sweep's trials, or (``RERUN``) their re-runs."""
    runs: list[Run] = []
    token = None
    where = f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{ROLE}` = '{role}'"
    while True:
        page = mlflow.search_runs([exp_id], filter_string=where, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs
