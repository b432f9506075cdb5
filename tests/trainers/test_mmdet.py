"""The mmdetection backend, run for real in the environment scripts/mmdet-env.sh builds.

Without that environment these tests are skipped, unless SWEEP_REQUIRE_MMDET=1 (set by .ci/run, which
builds it first), which turns a missing environment into a failure.
"""

import json
import os
from pathlib import Path

import pytest

from tests.trainers.synthetic_voc import make_voc
from trainers import ListReporter, TrialParams
from trainers.base import InputError
from trainers.mmdet.config import default_python
from trainers.mmdet.trainer import MmdetTrainer, preflight

HAVE_ENV = Path(default_python()).exists()
if not HAVE_ENV and os.environ.get("SWEEP_REQUIRE_MMDET") != "1":
    pytest.skip(f"no mmdet environment at {default_python()} (scripts/mmdet-env.sh)", allow_module_level=True)

CONFIG = "mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py"
HP = {"epochs": 2, "batch_size": 4, "lr": 0.001, "optimizer": "adamw", "input_size": 128, "warmup_iters": 5}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc(root, n_trainval=16, n_test=4)
    return {
        "name": "voc",
        "root": str(root / "VOCdevkit"),
        "train": ["2007-trainval"],
        "test": "2007-test",
        "val_fraction": 0.25,
    }


class StopAfter(ListReporter):
    """Raises at the n-th report, as Ray Tune does when ASHA stops a trial."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def report(self, metrics, checkpoint_dir=None, info=None) -> None:
        super().report(metrics, checkpoint_dir, info)
        assert checkpoint_dir is not None and (checkpoint_dir / "mmdet.pth").stat().st_size > 0
        if len(self.metrics) == self.n:
            raise KeyboardInterrupt("stopped by the scheduler")


def _workers() -> set[int]:
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"mmdet/worker.py" in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_mmdet_config_trains_reports_map_every_epoch_and_stops_when_told(voc, tmp_path: Path) -> None:
    """Two epochs relayed with scored predictions and a checkpoint each; at the second report the
    scheduler stops the trial (the reporter raises) and the worker's process group is gone."""
    reporter = StopAfter(2)
    params = TrialParams(voc, {"config": CONFIG, "weights": "none"}, {**HP, "epochs": 4}, tmp_path / "w", threads=2)
    before = _workers()
    with pytest.raises(KeyboardInterrupt):
        MmdetTrainer().fit(params, reporter)
    assert _workers() <= before
    assert [m["epoch"] for m in reporter.metrics] == [1.0, 2.0]
    for m in reporter.metrics:
        assert {"val_map50", "val_map50_11pt", "val_map", "train_loss"} <= set(m) and 0 <= m["val_map50"] <= 1
    assert (tmp_path / "w" / "best.pth").stat().st_size > 1000
    assert reporter.info["mmdet.config"] == CONFIG and reporter.info["data.n_classes"] == 3
    job = json.loads((tmp_path / "w" / "mmdet" / "job.json").read_text())
    assert job["hparams"]["optimizer"] == "adamw" and job["classes"] == ["circle", "square", "triangle"]


def test_missing_environment_or_config_is_refused_before_the_sweep(voc, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model.python: no mmdet environment at"):
        preflight(voc, {"config": CONFIG, "python": str(tmp_path / "nope" / "python")})
    with pytest.raises(InputError, match="model.config: file not found"):
        preflight(voc, {"config": str(tmp_path / "missing.py")})
