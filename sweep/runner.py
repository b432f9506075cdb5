"""Run a sweep on Ray Tune: OptunaSearch with the spec's sampler, its scheduler, budget and resources."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from sweep import lock, records, storage, store, study
from sweep.errors import Fault, SweepError
from sweep.journal import ended_for_good
from sweep.record import SweepRecord, find_record
from sweep.records import RERUN_KEYS, flat_config
from sweep.samplers import build_sampler, build_scheduler
from sweep.space import DefineByRun
from sweep.spec import Spec
from sweep.tags import (
    DATA_SPLIT_SEED,
    EPOCHS_RUN,
    HOST,
    MAX_EPOCHS,
    METRIC,
    MODE,
    NAME,
    NODE_ID,
    RESUMED_AFTER,
    ROLE,
    SEARCHED,
    SEED,
    SPEC_HASH,
    STOP_REASON,
    TRAINER,
    TRIAL_ID,
    TRIALS,
)
from trainers import TrainerEntry, TrialParams
from trainers.base import Diverged

RAY_ENV = {
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # Ray writes its experiment state this often: a killed driver loses little
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Ctrl-C belongs to the `sweep` command (sweep.interrupts), not the library
}
LOG_FILE = "ray.log"
"""The Ray node a trial runs on (its run's tag)."""
"""A re-run trial's config (``sweep rerun``) is ``{"rerun": {...sampled values, rerun_seed, rerun_of}}``: its
seed and the trial whose configuration it repeats ride along with the values."""


def _quiet() -> None:
    """Our progress lines are the output; the libraries' start-up chatter is not."""
    import warnings

    import mlflow  # noqa: F401  (configures its loggers on import; lower them after that)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="All-NaN slice")  # ASHA's rung of diverged (NaN) trials
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # each failed write: the journal says


def trial_dirname(trial: Any) -> str:
    """A trial's folder (its TensorBoard run, checkpoints, and its work folder under ``trials/``): its ``tNN``, a
    re-run's ``t09-seed2``; Ray's id where neither is known."""
    config = flat_config(trial.config)
    if "rerun_of_run" in config:
        return f"{config['rerun_of_run']}-seed{config.get('rerun_seed')}"
    number = records.NUMBERS.get(trial.trial_id)
    return records.trial_number(number) if number else str(trial.trial_id)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares; shipped to the workers once."""

    name: str
    trainer: TrainerEntry
    """Resolved in the driver: a worker needs no registry lookup (a trainer registered at run time works too)."""
    dataset: BaseModel
    model: BaseModel
    fixed: Mapping[str, Any]
    seed: int
    threads: int
    trials_dir: Path | None
    """None: this node's own scratch folder (storage on an object store)."""
    cache_dir: Path | None
    metrics: tuple[str, ...] = ()
    mode: str = "max"
    """The spec's metric names: a diverged trial reports them as NaN, which Optuna records as failed."""
    checkpoint_every_s: float = 0
    gpu_fraction: float = 1.0
    finished: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Trials the records say ended (``--resume`` after a kill that came before Ray saved that): each one's last
    epoch, reported again at once instead of training again."""


class RayReporter:
    """A :class:`trainers.Reporter` that forwards to ``ray.tune.report``."""

    def __init__(self, node: Mapping[str, str] | None = None) -> None:
        self.epoch = 0
        self.node = dict(node or {})
        """Where the trial runs, reported once with its first result (again after a retry on another node)."""

    def report(
        self, metrics: Mapping[str, float], checkpoint_dir: Path | None = None, info: Mapping[str, Any] | None = None
    ) -> None:
        from ray import tune

        self.epoch = int(metrics.get("epoch", self.epoch + 1))
        facts, self.node = {**self.node, **(info or {})}, {}
        result = {**metrics, **{f"info/{k}": v for k, v in facts.items()}}
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(result, checkpoint=checkpoint)


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune trainable: one trial of the sweep, resumed from its checkpoint when Ray has one."""
    from ray import tune

    from sweep.storage import scratch

    trial_id = tune.get_context().get_trial_id()
    if trial_id in setup.finished:  # it ended before the driver died: its end again, nothing trained twice
        tune.report(dict(setup.finished[trial_id]))
        return
    trials_dir = setup.trials_dir or scratch() / setup.name / "trials"
    work_dir = trials_dir / Path(tune.get_context().get_trial_dir()).name  # tNN, as the trial's Tune folder
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    checkpoint = tune.get_checkpoint()
    node = ray_node()
    if checkpoint is not None:
        resume_from = Path(tempfile.mkdtemp(dir=work_dir, prefix="resume-"))
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_from, dirs_exist_ok=True)
        saved = resume_from / "lifecycle.json"
        if saved.exists():  # a retry (or --resume) goes on from this epoch, not from the start
            node[RESUMED_AFTER] = str(json.loads(saved.read_text())["epoch"])
    entry = setup.trainer
    config = flat_config(config)
    sampled = {k: v for k, v in config.items() if k not in RERUN_KEYS}
    params = TrialParams(
        dataset=setup.dataset,
        model=setup.model,
        hparams=entry.hparams.model_validate({**setup.fixed, **sampled}),
        work_dir=work_dir,
        resume_from=resume_from,
        seed=int(config.get("rerun_seed", setup.seed)),
        threads=setup.threads,
        cache_dir=setup.cache_dir or scratch() / "cache",
        metric=setup.metrics[0] if setup.metrics else "",
        mode=setup.mode,
        checkpoint_every_s=setup.checkpoint_every_s,
        gpu_fraction=setup.gpu_fraction,
    )
    reporter = RayReporter(node)
    import ray

    gpus = ray.get_gpu_ids()
    if gpus:  # Ray placed the trial by its GPU share: training on the CPU instead would be a silent lie
        problem = gpu_problem(gpus, node)
        if problem:
            raise RuntimeError(problem)
        params = dataclasses.replace(params, device="cuda")
    try:
        entry.load().fit(params, reporter)
    except Diverged as e:
        # Ended, not errored: a retry from the last checkpoint would diverge again. The NaN metric
        # makes Optuna record the trial as failed; the reason becomes the run's tag.
        epoch = reporter.epoch + 1
        nan = {name: float("nan") for name in setup.metrics}
        reporter.report({"epoch": epoch, **nan}, info={STOP_REASON: f"diverged in epoch {epoch}: {e}"})
    finally:
        if resume_from is not None:  # the trainer has read it; Ray keeps the checkpoint itself
            shutil.rmtree(resume_from, ignore_errors=True)


def gpu_problem(gpu_ids: list[Any], node: Mapping[str, str], cuda: bool | None = None) -> str | None:
    """Why a trial that Ray gave ``gpu_ids`` cannot use them (CUDA unusable on its node), or None. ``cuda``: whether
    CUDA works here (asked of torch when None)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return None
    where = f"{node.get(HOST, '?')} (Ray node {node.get(NODE_ID, '?')[:12]})"
    return (
        f"Ray gave this trial GPU {','.join(map(str, gpu_ids))} on {where}, but CUDA is not usable there "
        "(no driver, or a CPU-only torch); fix that node or set resources.gpus_per_trial: 0"
    )


def ray_node() -> dict[str, str]:
    """The Ray node and host a trial runs on, as its run's tags."""
    import socket

    import ray

    return {NODE_ID: ray.get_runtime_context().get_node_id(), HOST: socket.gethostname()}


def sweep_dir(results: Path, name: str) -> Path:
    return (results / name).resolve()


@dataclass(frozen=True)
class Outcome:
    """How a sweep ended, for the exit code: every trial ran, some errored, or it was interrupted."""

    grid: Any
    """Ray Tune's ResultGrid."""
    interrupted: bool
    errors: list[tuple[str, str]]
    """(trial id, one-line reason) of each errored trial."""
    log: Path
    """Ray's own log lines and tracebacks."""
    fault: Fault | None = None
    """Why the sweep stopped itself before its end (a full disk), when it did: resumable once that is fixed."""


def run_sweep(
    spec: Spec,
    results: Path = Path("results"),
    resume: bool = False,
    address: str | None = None,
    base: Path = Path("."),
) -> Outcome:
    """Run (or with ``resume``, continue) the sweep. Every check that can refuse it (the sweep's folder,
    its data and weights, the tracking store, the cluster's resources, another driver of the same sweep) runs
    before a trial starts."""
    with lock.held() as locks:
        return _run_sweep(spec, results, resume, address, base, locks)


def _run_sweep(spec: Spec, results: Path, resume: bool, address: str | None, base: Path, locks: list[int]) -> Outcome:
    root = sweep_dir(results, spec.name)
    if root.is_dir():  # nothing of a sweep another driver runs is read or touched
        locks.append(lock.acquire(root, spec.name))
    place = storage.resolve(spec.storage, root, spec.name)
    saved = find_record(spec.name, results) if resume else None
    if resume and saved is None:
        raise SweepError(f"--resume: no sweep '{spec.name}' in {root}; run it without --resume first")
    if saved is not None and saved.spec_hash != spec.digest:
        raise SweepError(f"--resume: the spec changed since '{spec.name}' started; resume with the same spec")
    if address:
        check_address(address)
    if spec.storage.uri:
        storage.check(place)
    if not resume and place.exists("tune"):
        raise SweepError(f"sweep '{spec.name}' already ran in {place.url}; continue it with --resume or rename it")
    entry = spec.entry
    sizes = entry.capability("preflight")(spec.dataset, spec.model, spec.weight_sources()) if entry.preflight else {}
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SweepError(f"--results: cannot create {root}: {e.strerror}") from None
    uri = store.connect(store.resolve_uri(spec.tracking.uri, base))
    mlflow = store.client(uri)
    try:
        exp_id = store.experiment_id(mlflow, spec.tracking.experiment or spec.name, uri)
    except Exception as e:  # nothing has started yet: refuse clearly rather than run untracked
        raise store.unreachable(uri, e) from None
    if not locks:  # a first start (nothing written yet): of two at once, the second is refused here
        locks.append(lock.acquire(root, spec.name))
        if not resume and place.exists("tune"):
            raise SweepError(f"sweep '{spec.name}' already ran in {place.url}; continue it with --resume or rename it")
    study_url = store.connect(study.storage_url(root, spec.tracking.study))
    study_storage = _study_storage(study_url, spec.name, resume)
    start_ray(address, root / LOG_FILE)
    check_resources(spec)
    if address:
        print(f"[{spec.name}] {joined(address)}", flush=True)
    from ray import tune

    if resume:  # before any record changes: a state no --resume can read is refused with nothing touched
        from sweep.repair import repair

        repair(place)  # a trial whose named checkpoint a killed driver left deleted goes on from its newest
    tags = common_tags(spec, base)  # once: it asks git for the commit
    dataset = dataset_info(spec, sizes)
    if saved is not None:
        parent_id = saved.parent_run_id
        mlflow.update_run(parent_id, status="RUNNING")
    else:
        parent_id = _new_parent(mlflow, exp_id, spec, tags, dataset)
        record = SweepRecord(parent_id, exp_id, spec.digest, store.redact(uri), store.redact(study_url), spec.raw)
        record.write(root)
    trainable = make_trainable(spec, place, ended_trials(mlflow, exp_id, parent_id) if resume else None)
    if resume:
        tuner = tune.Tuner.restore(
            place.tune_path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=place.filesystem(),
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=_tune_config(spec, study_storage),
            run_config=run_config(spec, root, place, uri, exp_id, parent_id, tags, dataset),
        )
    from sweep.errors import disk_full, out_of_space
    from sweep.interrupts import FAULT, INTERRUPTED, kept
    from sweep.tracking import last_line

    INTERRUPTED.clear()  # set only by a signal the command's handler (sweep.interrupts.handled) caught during fit
    FAULT.clear()  # or by a fault that stops the sweep (sweep.interrupts.stop_for)
    try:
        with kept():  # Tune installs handlers of its own inside fit(); the caller's are back after it
            grid = tuner.fit()
    except Exception as e:  # Tune's own write or read of its state: a full disk, an object store gone
        down = storage.gone(str(e), place) if spec.storage.uri else None
        full = disk_full(e) or out_of_space(root)  # or a file the full disk left empty, read back
        if not FAULT and not full and not down:
            raise
        # Tune ended the trials (and the tracking callback recorded them) before it failed: resumable
        fault = Fault.full_disk(root) if full else Fault.store_gone(down or place.url)
        fault = FAULT[0] if FAULT else fault
        return Outcome([], True, [], root / LOG_FILE, fault)
    if not INTERRUPTED.is_set():
        study.close_orphans(study_url, spec.name)
    errors = [(Path(r.path).name, last_line(str(r.error))) for r in grid if r.error is not None]  # type: ignore[attr-defined]
    return Outcome(grid, INTERRUPTED.is_set(), errors, root / LOG_FILE, FAULT[0] if FAULT else None)


def ended_trials(mlflow: Any, exp_id: str, parent_id: str) -> dict[str, dict[str, Any]]:
    """The trials whose runs say they ended for good: trial id → the last epoch's metrics (what Ray's result of that
    epoch held)."""
    ended: dict[str, dict[str, Any]] = {}
    for run in store.trial_runs(mlflow, exp_id, parent_id):
        tags = run.data.tags
        if ended_for_good(run):
            epoch = int(tags[EPOCHS_RUN])
            metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith(("best_", "test_"))}
            reason = {f"info/{STOP_REASON}": tags[STOP_REASON]} if STOP_REASON in tags else {}
            ended[tags[TRIAL_ID]] = {**metrics, "epoch": float(epoch), **reason}
    return ended


def make_trainable(
    spec: Spec, place: storage.Storage, finished: Mapping[str, Mapping[str, Any]] | None = None
) -> Any:
    """The Ray Tune trainable of the sweep's trials, with their share of the cluster."""
    from ray import tune

    setup = TrialSetup(
        spec.name,
        spec.entry,
        spec.dataset,
        spec.model,
        dict(spec.fixed),
        spec.seed,
        max(1, int(spec.resources.cpus_per_trial)),
        place.trials_dir,
        place.cache_dir,
        tuple(spec.metric.names),
        spec.metric.modes[0],
        # HyperBand pauses trials at each rung and continues them from their last checkpoint
        0 if spec.scheduler.name == "hyperband" else spec.budget.checkpoint_every_s,
        spec.resources.gpus_per_trial if 0 < spec.resources.gpus_per_trial < 1 else 1.0,
        dict(finished or {}),
    )
    return tune.with_resources(
        tune.with_parameters(run_trial, setup=setup),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial},
    )


_OWNED = threading.Event()
"""Set while the Ray instance this process uses is one :func:`start_ray` started (or joined): :func:`stop_ray` stops
only that one, never a Ray the caller started (a notebook's, a test session's)."""


def start_ray(address: str | None, log: Path) -> None:
    """Start (or join) Ray with our environment, unless this process has a Ray already; its own log lines and
    tracebacks go to ``log``, our progress lines are the terminal's."""
    ray_env()
    import ray

    _quiet()
    # While ray.init waits for its processes, import what Tune's TensorBoard logger needs (a second on its own)
    threading.Thread(target=_preload, args=(TUNE_MODULES,), daemon=True).start()
    if address and ray.is_initialized() and not _OWNED.is_set():
        raise SweepError(
            f"--address {address}: this process is connected to a Ray of its own already; run the sweep in a new "
            "process, or without --address to use that Ray"
        )
    if not ray.is_initialized():
        try:
            from sweep.interrupts import kept

            # Ray's C++ core logs retries and warnings straight to the terminal, and installs its own SIGTERM
            # handler (a stack dump, then exit): the caller's handlers stay
            with _stderr_into(log), kept():
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                    configure_logging=True,
                )
        except Exception as e:  # Ray raises several kinds (ConnectionError, AuthenticationError, RuntimeError)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            hint = ""
            if address and ("auth" in f"{type(e).__name__} {e}".lower() or not auth_token_available()):
                # the head answered (check_address), so a refusal is most often its token authentication
                hint = (
                    "; if the cluster uses token authentication (a head started with a token has it on), copy the "
                    "head's ~/.ray/auth_token to this machine or set RAY_AUTH_TOKEN"
                )
            raise SweepError(f"--address {address}: cannot join the Ray cluster: {first}{hint}") from None
        _OWNED.set()
    handler = _QuietFileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.tune", "ray.train"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    ray_logger.setLevel(logging.INFO)
    ray_logger.propagate = False


class _QuietFileHandler(logging.FileHandler):
    """The log file's handler: a line that cannot be written (a full disk) is lost quietly, not a traceback on the
    terminal per line (the sweep itself says what is wrong)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


@contextmanager
def _stderr_into(log: Path) -> Iterator[None]:
    """File descriptor 2 appended to ``log`` for the block: what native code prints goes there too."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def ray_env() -> None:
    """Our settings of Ray's environment variables (a user's own win), before Ray is imported."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def joined(address: str) -> str:
    """What the cluster a sweep joined has, in one line."""
    import ray

    have = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return (
        f"joined the Ray cluster at {address}: {nodes} node{'s' if nodes != 1 else ''}, "
        f"{have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs"
    )


def auth_token_available() -> bool:
    """Whether this machine has a Ray cluster token where Ray looks: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token`` (``ray get-auth-token --generate`` and a local
    ``ray.init`` write it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path)


def check_address(address: str) -> None:
    """Before ``ray.init`` joins ``HOST:PORT``: something must answer there (else Ray retries, then raises a
    traceback), and a token this machine has is used (Ray 2.60 turns token authentication on for a head started
    with a token, but leaves it off for a driver given an explicit address)."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(
            f"--address {address}: expected HOST:PORT of the Ray head (its GCS port, 6379 by default) or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise SweepError(
            f"--address {address}: nothing answers there ({reason}); start the head with "
            f"`ray start --head --port {port}` or give the address `ray start --head` printed"
        ) from None
    use_local_token()
    import subprocess

    # Ray's GCS client answers in a moment where ray.init retries for 20 s; in a child process, because on some
    # failures Ray's native code ends the process it runs in
    probe = f"from ray._raylet import GcsClient; GcsClient(address={address!r})"
    try:
        env = {**os.environ, **({"RAY_AUTH_MODE": "token"} if auth_token_available() else {})}
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, env=env)
    except subprocess.TimeoutExpired:
        return  # ray.init says what is wrong, in one line too
    if done.returncode != 0 and ("InvalidAuthToken" in done.stderr or "AuthenticationError" in done.stderr):
        have = "the token this machine has is not the head's" if auth_token_available() else "this machine has none"
        raise SweepError(
            f"--address {address}: the Ray head wants its cluster token and {have}; copy the head's "
            "~/.ray/auth_token to this machine or set RAY_AUTH_TOKEN"
        ) from None


def use_local_token() -> None:
    """Present the Ray token this machine has (what Ray does itself for ``auto``, and not for an explicit address
    or a job server's URL)."""
    ray_env()
    if "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        try:
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
            quiet.setLevel(logging.ERROR)  # its "token authentication is enabled" notice is not our output
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        except ImportError:  # another Ray version: the environment variable is what Ray reads at start
            os.environ["RAY_AUTH_MODE"] = "token"


def stop_ray() -> None:
    """Stop the Ray instance a sweep started (or leave the cluster it joined) as soon as the sweep is over, not at
    interpreter exit, where Ray first sleeps half a second for log lines we do not print. A Ray this process had
    before the sweep stays."""
    if "ray" in sys.modules and _OWNED.is_set():
        import ray

        ray.shutdown()
        _OWNED.clear()


TUNE_MODULES = ("tensorboardX",)
"""Imported in the background while Ray starts: Tune's TensorBoard logger needs it, and nothing ray.init imports
does (a module imported by two threads at once would wait on Python's import lock)."""


def _preload(modules: tuple[str, ...]) -> None:
    import contextlib
    import importlib

    for module in modules:
        with contextlib.suppress(ImportError):  # Tune then warns as it always does
            importlib.import_module(module)


def check_resources(spec: Spec) -> None:
    """Refuse what the cluster can never place: such a trial would wait forever."""
    import ray

    have = ray.cluster_resources()
    wants = (
        ("CPU", "cpus_per_trial", spec.resources.cpus_per_trial),
        ("GPU", "gpus_per_trial", spec.resources.gpus_per_trial),
    )
    for key, field, want in wants:
        if want > have.get(key, 0):
            stop_ray()
            raise SweepError(
                f"resources.{field}: {want:g} per trial, but the Ray cluster has {have.get(key, 0):g} {key}s "
                f"({', '.join(f'{k}: {have.get(k, 0):g}' for k in ('CPU', 'GPU'))}); no trial could ever start"
            )


def _study_storage(url: str, name: str, resume: bool) -> Any:
    """The study's storage; a fresh sweep starts a fresh study (a database shared with an earlier sweep of the
    same name keeps only this one's trials)."""
    import optuna

    try:
        storage = study.open_storage(url)
        if not resume and name in {s.study_name for s in storage.get_all_studies()}:
            optuna.delete_study(study_name=name, storage=storage)
    except Exception as e:
        raise SweepError(
            f"tracking.study: cannot use {store.redact(url)}: {store.redact(str(e).splitlines()[0][:200])}"
        ) from None
    return storage


def _tune_config(spec: Spec, storage: Any) -> Any:
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from sweep.searcher import BestEpochSearch

    multi = len(spec.metric.names) > 1
    searcher = BestEpochSearch(
        space=DefineByRun(spec.search),
        sampler=build_sampler(spec),
        max_epochs=spec.max_epochs,
        metric=spec.metric.names if multi else spec.metric.primary,
        mode=spec.metric.modes if multi else spec.metric.modes[0],
        study_name=spec.name,
        storage=storage,
    )
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
        scheduler=build_scheduler(spec),
        num_samples=spec.budget.trials,
        metric=None if multi else spec.metric.primary,
        mode=None if multi else spec.metric.modes[0],
        time_budget_s=spec.budget.time_budget_s,
        trial_dirname_creator=trial_dirname,
        reuse_actors=spec.resources.reuse_workers,
    )


def dataset_info(spec: Spec, sizes: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset as the runs' dataset input says it: name, root and the split sizes preflight counted."""
    data = spec.dataset.model_dump()
    return {
        "name": data["name"],
        "root": data.get("root") or "",
        **{k.removeprefix("data."): v for k, v in sizes.items()},
    }


def _context(spec: Spec, dataset: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "description": spec.description,
        "space": records.space_table(spec.search),
        "scheduler": spec.scheduler.name,
        "max_epochs": spec.max_epochs,
        "dataset": dict(dataset),
    }


def run_config(
    spec: Spec,
    root: Path,
    place: storage.Storage,
    uri: str,
    exp_id: str,
    parent_id: str,
    tags: Mapping[str, str],
    dataset: Mapping[str, Any],
    role: str = store.TRIAL,
    trials: int | None = None,
) -> Any:
    """Where Ray Tune keeps the run (``tune/`` in the sweep's storage; a re-run its own folder), its callbacks
    (MLflow, progress; their files in the driver's ``root``)."""
    from ray import tune

    params = {
        **spec.fixed,
        "model.arch": spec.model.model_dump().get("arch"),
        "model.weights": spec.model.model_dump().get("weights"),
        "dataset.name": spec.dataset.model_dump()["name"],
    }
    from sweep.progress import ProgressCallback
    from sweep.tracking import MlflowCallback

    callbacks = [
        MlflowCallback(
            uri,
            exp_id,
            parent_id,
            list(zip(spec.metric.names, spec.metric.modes, strict=True)),
            params,
            tags,
            spec.max_epochs,
            root / "tracking-pending.jsonl",
            spec.tracking.drain_s,
            {**_context(spec, dataset), "role": role},
            place,
        ),
        ProgressCallback(spec.name, spec.metric.primary, spec.metric.modes[0], trials or spec.budget.trials),
    ]
    if place.filesystem() is None and role == store.TRIAL:  # on an object store each upload is whole
        from sweep.repair import StateBackup

        callbacks.append(StateBackup(place.tune_path))
    return tune.RunConfig(
        name="tune" if role == store.TRIAL else f"{role}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage_path=place.path,
        storage_filesystem=place.filesystem(),
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
    )


def common_tags(spec: Spec, base: Path) -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags

    tags = {
        **resolve_tags(),  # mlflow.user, mlflow.source.*, as MLflow's fluent API sets them
        NAME: spec.name,
        SPEC_HASH: spec.digest,
        SEED: str(spec.seed),
        TRAINER: spec.trainer,
        DATA_SPLIT_SEED: str(spec.dataset.model_dump().get("seed", "")),
    }
    commit = store.git_commit(base)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _new_parent(mlflow: Any, exp_id: str, spec: Spec, common: Mapping[str, str], dataset: Mapping[str, Any]) -> str:
    from mlflow.entities import Param

    tags = {
        **common,
        ROLE: store.PARENT,
        METRIC: ",".join(spec.metric.names),
        MODE: ",".join(spec.metric.modes),
        SEARCHED: ",".join(spec.search),
        TRIALS: str(spec.budget.trials),
        MAX_EPOCHS: str(spec.max_epochs),
        "mlflow.note.content": "\n\n".join(filter(None, [spec.description, records.space_table(spec.search)])),
    }
    run = mlflow.create_run(exp_id, run_name=spec.name, tags=tags)
    mlflow.log_inputs(run.info.run_id, [records.dataset_input(dataset)])
    params = {
        "sampler": spec.sampler.name,
        "scheduler": spec.scheduler.name,
        "trials": spec.budget.trials,
        "max_concurrent": spec.budget.max_concurrent,
        "trainer": spec.trainer,
    }
    mlflow.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec.raw, indent=2, default=str))
        mlflow.log_artifact(run.info.run_id, str(path))
    return str(run.info.run_id)
