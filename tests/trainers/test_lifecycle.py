"""The trial lifecycle every trainer composes: best epoch by the sweep's metric and mode, kept across a
kill and a resume; divergence; one test run over every trainer."""

import hashlib
import math
import os
import shutil
from pathlib import Path

import pytest

from tests.trainers.synthetic_voc import make_voc
from trainers import TRAINERS, ListReporter, TrialParams
from trainers.base import Diverged, InputError
from trainers.lifecycle import Best, DivergenceGuard
from trainers.mmdet.config import default_python

HAVE_MMDET = Path(default_python()).exists() or os.environ.get("SWEEP_REQUIRE_MMDET") == "1"


def test_best_follows_the_metric_and_its_direction() -> None:
    epochs = [
        {"epoch": 1, "loss": 3.0},
        {"epoch": 2, "loss": 1.0},
        {"epoch": 3, "loss": math.nan},
        {"epoch": 4, "loss": 2.0},
    ]
    low, high = Best("loss", "min"), Best("loss", "max")
    assert [low.update(m) for m in epochs] == [True, True, False, False] and (low.value, low.epoch) == (1.0, 2)
    assert [high.update(m) for m in epochs] == [True, False, False, False] and high.epoch == 1
    with pytest.raises(InputError, match="reports no 'val_top1' .*loss"):
        Best("val_top1", "max").update(epochs[0])


def test_divergence_is_nan_inf_or_an_explosion() -> None:
    guard = DivergenceGuard()
    guard.check(2.3, 0)
    guard.check(2000.0, 64)  # a spike, under 1000x the first batch
    with pytest.raises(Diverged, match=r"exploded \(4e\+09, over 1000x the first batch's 2.3\) after 128 images"):
        guard.check(4e9, 128)
    with pytest.raises(Diverged, match=r"non-finite training loss \(nan\) after 0 images"):
        DivergenceGuard().check(float("nan"), 0)


class Killed(Exception):
    """The process died after Ray had persisted this report's checkpoint."""


class RayLikeReporter(ListReporter):
    """Keeps a copy of every reported checkpoint folder, as Ray Tune persists it, and dies after ``kill_after``
    reports."""

    def __init__(self, keep: Path, kill_after: int | None = None) -> None:
        super().__init__()
        self.keep, self.kill_after = keep, kill_after
        self.saved: list[Path | None] = []
        """Each report's checkpoint copy, None for a report without one."""

    def report(self, metrics, checkpoint_dir=None, info=None) -> None:
        super().report(metrics, checkpoint_dir, info)
        dest = self.keep / f"epoch{int(metrics['epoch'])}"
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, dest)
        self.saved.append(dest if checkpoint_dir is not None else None)
        if self.kill_after and len(self.metrics) == self.kill_after:
            raise Killed


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc(root, n_trainval=12, n_test=2, size=96)
    return {"name": "voc", "root": str(root / "VOCdevkit"), "train": ["2007-trainval"], "val_fraction": 0.34}


def trial(trainer: str, voc: dict) -> tuple[dict, dict, dict, str]:
    """dataset, model, hparams and best-weights file of a tiny trial of ``trainer``: 4 epochs."""
    if trainer == "classifier":
        data = {"name": "digits", "image_size": 12}
        return data, {"arch": "small_cnn"}, {"epochs": 4, "lr": 0.3, "batch_size": 64}, "best.pt"
    if trainer == "detector":
        hp = {"epochs": 4, "lr": 0.005, "optimizer": "adam", "batch_size": 4, "min_size": 96, "max_size": 96}
        return voc, {"arch": "fasterrcnn_small", "weights": "none"}, {**hp, "warmup_iters": 2}, "best.pt"
    config = "mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py"
    hp = {"epochs": 4, "batch_size": 4, "lr": 0.002, "optimizer": "adamw", "input_size": 96, "warmup_iters": 2}
    return voc, {"config": config, "weights": "none"}, {**hp, "repeat": 1}, "best.pth"  # the config repeats 10x


CASES = [
    ("classifier", "val_top1", "max"),
    ("classifier", "val_loss", "min"),
    ("detector", "val_map50", "max"),
    ("detector", "train_loss", "min"),
    # mmdet: tests/trainers/test_mmdet.py runs kill_and_resume("mmdet", "val_map50", "max") with its other checks
]


@pytest.mark.parametrize(("trainer", "metric", "mode"), CASES)
def test_best_weights_are_the_best_epoch_by_the_sweeps_metric_across_a_kill(
    trainer: str, metric: str, mode: str, voc, tmp_path: Path
) -> None:
    kill_and_resume(trainer, metric, mode, voc, tmp_path)


def kill_and_resume(
    trainer: str, metric: str, mode: str, voc: dict, tmp_path: Path, killed=lambda: None
) -> tuple[Path, list[dict], dict]:
    """Killed after epoch 2 of 4 and resumed from the checkpoint Ray kept: the best-weights file in the
    trial's folder is the one written at the epoch that is best by the spec's metric and mode, over all
    four epochs, and every reported checkpoint carries the best so far. ``killed()`` runs between the kill and
    the resume; returns the trial's folder, the four epochs' metrics and the facts the trial reported."""
    data, model, hparams, best_file = trial(trainer, voc)
    impl = TRAINERS.get(trainer).load()
    work = tmp_path / "trial"

    def params(resume: Path | None) -> TrialParams:
        return TrialParams(data, model, hparams, work, resume_from=resume, threads=2, metric=metric, mode=mode)

    first = RayLikeReporter(tmp_path / "ray", kill_after=2)
    with pytest.raises(Killed):
        impl.fit(params(None), first)
    killed()
    second = RayLikeReporter(tmp_path / "ray")
    result = impl.fit(params(first.saved[-1]), second)

    history = first.metrics + second.metrics
    assert [int(m["epoch"]) for m in history] == [1, 2, 3, 4]
    values = [m[metric] for m in history]
    best = values.index(min(values) if mode == "min" else max(values))
    saved = first.saved + second.saved
    assert digest(work / best_file) == digest(saved[best] / best_file)
    assert result.best_metrics[metric] == values[best] and int(result.best_metrics["epoch"]) == best + 1
    for i, folder in enumerate(saved):  # each checkpoint holds the best of the epochs so far
        so_far = values[: i + 1]
        at = so_far.index(min(so_far) if mode == "min" else max(so_far))
        if folder is None:  # no new best and nothing to resume: the last epoch reports no checkpoint
            assert i == 3 and at < i
            continue
        assert digest(folder / best_file) == digest(saved[at] / best_file)  # type: ignore[operator]
        assert (folder / "lifecycle.json").exists()
    if saved[3] is not None and trainer != "mmdet":  # the last epoch's: best files only, no state to resume
        assert not (saved[3] / "state.pt").exists()
        again = RayLikeReporter(tmp_path / "again")
        assert impl.fit(params(saved[3]), again).best_metrics == result.best_metrics and not again.metrics
    return work, history, first.info


def test_checkpoints_at_each_new_best_and_when_due(tmp_path: Path) -> None:
    """With ``checkpoint_every_s`` not yet passed, an epoch without a new best reports no checkpoint (the
    last state stays resumable); every new best is checkpointed with the full state, except after the last
    epoch."""
    impl = TRAINERS.get("classifier").load()
    hp = {"epochs": 5, "lr": 0.05, "batch_size": 64}
    data = {"name": "digits", "image_size": 12}
    for every_s, name in ((3600.0, "lean"), (0.0, "each")):
        ray = RayLikeReporter(tmp_path / name)
        impl.fit(
            TrialParams(
                data,
                {"arch": "small_cnn"},
                hp,
                tmp_path / f"w-{name}",
                checkpoint_every_s=every_s,
                metric="val_loss",
                mode="min",
            ),
            ray,
        )
        losses = [m["val_loss"] for m in ray.metrics]
        new_best = [v < min(losses[:i], default=float("inf")) for i, v in enumerate(losses)]
        for i, folder in enumerate(ray.saved):
            last = i == len(ray.saved) - 1
            if every_s and not new_best[i] or last and not new_best[i]:
                assert folder is None
            else:
                assert folder is not None and (folder / "state.pt").exists() != last


def test_weight_and_gradient_histograms_each_epoch_when_asked(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = {"name": "digits", "image_size": 12}
    hparams = {"epochs": 2, "lr": 0.05, "batch_size": 128, "log_histograms": True}
    TRAINERS.get("classifier").load().fit(TrialParams(data, {"arch": "small_cnn"}, hparams, tmp_path), ListReporter())
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()["histograms"]
    assert "weights/fc.weight" in tags and "gradients/features.0.0.weight" in tags
    assert [e.step for e in events.Histograms("gradients/fc.weight")] == [1, 2]
