"""The mmdet backend's side of the protocol, without the mmdet environment: a worker that dies is an error that
says so (its last lines), never a trial that looks complete."""

from pathlib import Path

import pytest

from tests.trainers.synthetic_voc import make_voc
from trainers import ListReporter, TrialParams
from trainers.mmdet.trainer import MmdetTrainer


def test_a_worker_that_exits_is_an_error_with_its_exit_code(tmp_path: Path) -> None:
    make_voc(tmp_path, n_trainval=8, n_test=2, size=64)
    data = {"name": "voc", "root": str(tmp_path / "VOCdevkit"), "train": ["2007-trainval"], "test": None}
    model = {"config": "mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py", "python": "/bin/false"}
    params = TrialParams(data, model, {"epochs": 1}, tmp_path / "work")
    reporter = ListReporter()
    with pytest.raises(RuntimeError, match="the mmdet worker exited with 1"):
        MmdetTrainer().fit(params, reporter)
    assert reporter.metrics == []
