"""Before ``--resume``: Ray Tune's saved state made consistent with the checkpoints that really exist.

Ray deletes a trial's older checkpoint as soon as it registers a newer one, and writes the experiment state (which
names the checkpoint to restore from) a moment later. A driver killed (-9, power cut) in between leaves a state
whose trial points at a deleted folder: Ray's restore then fails that trial on every ``--resume``. Here each such
trial is pointed at the newest checkpoint its folder does hold (or, with none left, at none: it starts over, and
the tracking records skip the epochs they hold already).

The state is Ray's own file, read and written with Ray's own encoder; it is the sweep's own (this process or an
earlier driver of the same sweep wrote it), which is why its pickled parts may be loaded.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from ray.tune import Callback

from sweep import storage
from sweep.errors import SweepError

LIFECYCLE = "lifecycle.json"


def repair(place: storage.Storage) -> list[str]:
    """Point every trial of the sweep's saved state whose checkpoint is gone at its newest existing one; returns
    the ids of the trials changed (the file is rewritten only when there are any)."""
    from pyarrow import fs as pafs
    from ray.tune.utils.serialization import TuneFunctionEncoder, _loads_with_cloudpickle

    filesystem, root = _filesystem(place)
    if place.filesystem() is None:
        _put_back_whole(Path(root))
    states = [
        f.path
        for f in filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if f.base_name.startswith("experiment_state-") and f.base_name.endswith(".json")
    ]
    if not states:
        return []
    latest = max(states)
    with filesystem.open_input_stream(latest) as f:
        state = _loads_with_cloudpickle(f.read())
    changed = []
    for entry in state.get("trial_data", []):
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        meta = _loads_with_cloudpickle(entry[1]) if isinstance(entry[1], str) else entry[1]
        manager = meta.get("checkpoint_manager")
        trial_id = str(trial.get("trial_id", ""))
        if manager is None or not _fix(manager, filesystem, f"{root}/{_dirname(trial, trial_id)}"):
            continue
        entry[1] = json.dumps(meta, cls=TuneFunctionEncoder, indent=2)
        changed.append(trial_id)
    if changed:
        text = json.dumps(state, cls=TuneFunctionEncoder, indent=2)
        with filesystem.open_output_stream(latest + ".tmp") as f:
            f.write(text.encode())
        filesystem.move(latest + ".tmp", latest)
    return changed


def _put_back_whole(tune_dir: Path) -> None:
    """Where a file of Ray Tune's saved state is cut short (Ray rewrites them in place: a full disk stopped a write),
    the last whole copies of the set (:class:`StateBackup`'s) take the place of all of them."""
    latest = [max(tune_dir.glob(pattern), default=None) for pattern in STATE_FILES]
    broken = [f for f in latest if f is not None and _whole(f) is None]
    if not broken:
        return
    copies = [f.with_name(f.name + GOOD) for f in latest if f is not None]
    if not all(c.is_file() for c in copies):
        raise SweepError(
            f"--resume: Ray Tune's saved state {broken[0]} is cut short (written to a full disk?) and no whole copy of "
            "it was kept; this sweep cannot be resumed: run it again under another name"
        )
    for copy in copies:
        tmp = copy.with_suffix(".tmp")
        tmp.write_bytes(copy.read_bytes())
        os.replace(tmp, copy.with_name(copy.name.removesuffix(GOOD)))
    print(f"--resume: Ray Tune's saved state was cut short; resuming from its last whole copy ({copies[0]})")


GOOD = ".whole"
"""The suffix of the last whole copy of Ray Tune's experiment state, kept beside it."""


STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
"""What Ray Tune rewrites in place at each save of a sweep's state: the trials, the search's generator, the searcher."""


def _whole(path: Path) -> bytes | None:
    """The file's bytes when it is whole (it parses), else None (being written, or cut short)."""
    try:
        data = path.read_bytes()
        # Ray writes some of them as pickles whatever their name says (search_gen_state-*.json)
        pickle.loads(data) if data.startswith(b"\x80") else json.loads(data)  # noqa: S301 (the sweep's own file)
    except Exception:
        return None
    return data


class StateBackup(Callback):
    """A Ray Tune callback that keeps a copy of Ray Tune's saved state (:data:`STATE_FILES`, each ``….whole``,
    written to a temporary name and renamed) each time the files are new and all whole: Ray rewrites them in place,
    so a write cut short by a full disk would otherwise leave a sweep no ``--resume`` can read."""

    def __init__(self, tune_dir: str) -> None:
        self.tune_dir = tune_dir
        self._seen: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_seen": {}}

    def backup(self) -> None:
        files = [max(Path(self.tune_dir).glob(pattern), default=None) for pattern in STATE_FILES]
        try:
            stamps = {str(f): f.stat().st_mtime_ns for f in files if f is not None}
        except OSError:
            return
        if not stamps or stamps == self._seen:
            return
        whole = {f: _whole(f) for f in files if f is not None}
        if any(data is None for data in whole.values()):  # the set as one: the older copies stay
            return
        for path, data in whole.items():
            tmp = path.with_name(path.name + GOOD + ".tmp")
            try:
                tmp.write_bytes(data or b"")
                os.replace(tmp, path.with_name(path.name + GOOD))
            except OSError:
                tmp.unlink(missing_ok=True)
                return
        self._seen = stamps

    def on_trial_result(self, *args: Any, **kwargs: Any) -> None:
        self.backup()

    def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
        self.backup()

    def on_experiment_end(self, *args: Any, **kwargs: Any) -> None:
        self.backup()


def _filesystem(place: storage.Storage) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    remote = place.filesystem()
    return (remote, place.tune_path) if remote is not None else (pafs.LocalFileSystem(), place.tune_path)


def _dirname(trial: dict[str, Any], trial_id: str) -> str:
    return str(trial.get("relative_logdir") or trial.get("_relative_logdir") or trial_id)


def _fix(manager: Any, filesystem: Any, trial_dir: str) -> bool:
    """Drop the manager's checkpoints that are gone; when its latest is one of them, the newest the folder holds
    takes its place. True when anything changed."""
    from pyarrow import fs as pafs
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    def exists(path: str) -> bool:
        return bool(filesystem.get_file_info(path).type != pafs.FileType.NotFound)

    latest = manager._latest_checkpoint_result
    if latest is None or latest.checkpoint is None or exists(latest.checkpoint.path):
        return False
    manager._checkpoint_results = [
        r for r in manager._checkpoint_results if r.checkpoint is not None and exists(r.checkpoint.path)
    ]
    folders = sorted(
        f.path
        for f in filesystem.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
        if f.type == pafs.FileType.Directory and f.base_name.startswith("checkpoint_")
    )
    newest = None
    for folder in reversed(folders):
        saved = f"{folder}/{LIFECYCLE}"
        if exists(saved):
            with filesystem.open_input_stream(saved) as f:
                epoch = int(json.loads(f.read())["epoch"])
            checkpoint = Checkpoint(folder, filesystem=latest.checkpoint.filesystem)
            newest = _TrainingResult(checkpoint, {**latest.metrics, "training_iteration": epoch, "epoch": epoch})
            break
    paths = {r.checkpoint.path for r in manager._checkpoint_results if r.checkpoint is not None}
    if newest is not None and folder not in paths:
        manager._checkpoint_results.append(newest)
    manager._latest_checkpoint_result = newest or (
        manager._checkpoint_results[-1] if manager._checkpoint_results else None
    )
    return True
