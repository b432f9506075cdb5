"""The sweep's Optuna study, kept: Optuna's RDB storage (``results/NAME/optuna.db`` unless the spec names
another database in ``tracking.study``), named after the sweep, carried through ``--resume``, read by
optuna-dashboard and Optuna's importance evaluators.

Every trial is told the value of its best epoch (``sweep.searcher``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sweep import store
from sweep.errors import SweepError
from sweep.record import load_record
from sweep.tags import ORPHANED


def storage_url(root: Path, configured: str | None) -> str:
    return configured or f"sqlite:///{root / 'optuna.db'}"


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url``; a SQLite file is created whole or not at all."""
    import optuna

    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        store.create_atomically(
            path,
            lambda tmp: optuna.storages.RDBStorage(f"sqlite:///{tmp}").remove_session(),
            template=f"optuna-{optuna.__version__}",
        )
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
    return optuna.storages.RDBStorage(url)


def close_orphans(url: str, name: str) -> int:
    """After a sweep that ran to its end, trials still RUNNING in the study were asked for by a driver that
    died before Ray saved them: no trial of the sweep. Mark them FAIL (``sweep.orphaned``)."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    orphans = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in orphans:
        storage.set_trial_user_attr(trial._trial_id, ORPHANED, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(orphans)


def study_storage(name: str, results: Path) -> str:
    """The study storage of sweep ``name``, from its record."""
    url = load_record(name, results).study
    if not url:
        raise SweepError(f"sweep '{name}' ran before studies were kept; it has no Optuna study")
    return url


def study_link(base_url: str, storage: str, name: str) -> str:
    """optuna-dashboard's page of the study."""
    study_id = open_storage(storage).get_study_id_from_name(name)
    return f"{base_url}/dashboard/studies/{study_id}"
