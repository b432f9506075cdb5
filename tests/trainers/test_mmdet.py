"""The mmdetection backend, run for real in the environment scripts/mmdet-env.sh builds.

Without that environment these tests are skipped, unless SWEEP_REQUIRE_MMDET=1 (set by .ci/run, which
builds it first), which turns a missing environment into a failure.
"""

import json
import os
from pathlib import Path

import pytest

from tests.trainers.synthetic_voc import make_voc
from tests.trainers.test_lifecycle import kill_and_resume, trial
from trainers import ListReporter, TrialParams
from trainers.base import InputError
from trainers.mmdet.config import default_python
from trainers.mmdet.trainer import MmdetTrainer, preflight

HAVE_ENV = Path(default_python()).exists()
if not HAVE_ENV and os.environ.get("SWEEP_REQUIRE_MMDET") != "1":
    pytest.skip(f"no mmdet environment at {default_python()} (scripts/mmdet-env.sh)", allow_module_level=True)

CONFIG = "mmdet::yolo/yolov3_mobilenetv2_8xb24-320-300e_coco.py"


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


def _workers() -> set[int]:
    """This test process's mmdet workers (its descendants: another test's, run beside it, are not counted)."""
    import psutil

    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if any("mmdet/worker.py" in part for part in proc.cmdline()):
                found.add(proc.pid)
        except psutil.Error:
            pass
    return found


def test_mmdet_trains_reports_map_every_epoch_stops_when_told_and_resumes(voc, tmp_path: Path) -> None:
    """Epochs relayed with scored predictions and a checkpoint each; at the second report the trial is stopped
    (the reporter raises, as Ray Tune does when ASHA stops a trial) and the worker's process group is gone; resumed
    from the kept checkpoint, the best weights are the best epoch's by the sweep's metric (the lifecycle test every
    trainer passes)."""
    before = _workers()

    def stopped() -> None:
        assert _workers() <= before  # the stopped trial's worker process group is gone

    work, history, info = kill_and_resume("mmdet", "val_map50", "max", voc, tmp_path, killed=stopped)
    for m in history:
        assert {"val_map50", "val_map50_11pt", "val_map", "train_loss"} <= set(m) and 0 <= m["val_map50"] <= 1
    assert (work / "best.pth").stat().st_size > 1000
    assert info["mmdet.config"] == CONFIG and info["data.n_classes"] == 3
    job = json.loads((work / "mmdet" / "job.json").read_text())
    assert job["hparams"]["optimizer"] == "adamw" and job["classes"] == ["circle", "square", "triangle"]

    # The kept checkpoint on the test part and on any image: inference in the mmdet environment, scored and
    # drawn on our side (`sweep evaluate` / `sweep detect` of an mmdet sweep).
    from trainers.mmdet.report import detect_images, evaluate_checkpoint

    _, model, hparams, _ = trial("mmdet", voc)
    scores = evaluate_checkpoint(work / "best.pth", voc, tmp_path / "test", None, model, hparams)
    assert scores["test_n"] == 4 and 0 <= scores["test_map50"] <= 1 and "test_map" in scores
    assert (tmp_path / "test" / "per_class_ap.csv").read_text().startswith("class,ap50")
    image = next((Path(voc["root"]) / "VOC2007" / "JPEGImages").glob("*.jpg"))
    drawn = detect_images(work / "best.pth", [image], tmp_path / "pics", 0.0, False, 50, model, hparams, voc)
    assert drawn == [tmp_path / "pics" / f"{image.stem}.png"] and drawn[0].stat().st_size > 1000
    with pytest.raises(InputError, match="--proposals: the mmdet backend draws its final predictions only"):
        detect_images(work / "best.pth", [image], tmp_path / "pics", 0.5, True, 50, model, hparams, voc)


def test_missing_environment_or_config_is_refused_before_the_sweep(voc, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model.python: no mmdet environment at"):
        preflight(voc, {"config": CONFIG, "python": str(tmp_path / "nope" / "python")})
    with pytest.raises(InputError, match="model.config: file not found"):
        preflight(voc, {"config": str(tmp_path / "missing.py")})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Four pictures: what one epoch of a big config needs to show that it trains, is scored and checkpointed."""
    root = tmp_path_factory.mktemp("tiny")
    make_voc(root, n_trainval=4, n_test=1)
    return {"name": "voc", "root": str(root / "VOCdevkit"), "train": ["2007-trainval"], "val_fraction": 0.25}


@pytest.mark.parametrize("spec_file", ["sparse_rcnn.yaml", "yolov3.yaml"])
def test_the_shipped_sparse_rcnn_and_yolov3_configs_train_an_epoch(spec_file: str, tiny, tmp_path: Path) -> None:
    """The configs the shipped search spaces name (Sparse R-CNN R-50, YOLOv3 Darknet-53), from scratch at a tiny
    input: an epoch trains, is scored and checkpointed through the backend."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "search_spaces" / spec_file).read_text())["model"]["config"]
    hp = {"epochs": 1, "batch_size": 2, "lr": 1e-4, "optimizer": "adamw", "input_size": 64, "warmup_iters": 2}
    hp["repeat"] = 1  # an epoch is one pass over the pictures (YOLOv3's config repeats them 10 times)
    reporter = ListReporter()
    params = TrialParams(tiny, {"config": config, "weights": "none"}, hp, tmp_path / "w", threads=2)
    result = MmdetTrainer().fit(params, reporter)
    assert [m["epoch"] for m in reporter.metrics] == [1.0] and result.epochs_run == 1
    assert 0 <= reporter.metrics[0]["val_map50"] <= 1 and reporter.metrics[0]["train_loss"] > 0
    assert (tmp_path / "w" / "best.pth").stat().st_size > 10_000


REPEATS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from worker import build_config
def chain(dataset):
    out = []
    while dataset is not None:
        out.append([dataset.get("type"), dataset.get("times")])
        dataset = dataset.get("dataset")
    return out
for job in json.loads(sys.argv[2]):
    print(json.dumps(chain(build_config(job).train_dataloader.dataset)))
"""


def test_repeat_sets_the_passes_over_the_training_images_per_epoch(tmp_path: Path) -> None:
    """``repeat`` is the times of a config's RepeatDataset (YOLOv3's: 10) or a RepeatDataset wrapped around a
    training set that has none (Sparse R-CNN's); unset, the config's own stays."""
    import subprocess

    sparse = "mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py"
    base = {"weights": "none", "work_dir": str(tmp_path), "train_ann": "t.json", "val_ann": "v.json", "seed": 0}
    hp = {"epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0, "num_workers": 0, "grad_clip": 0}
    hp |= {"schedule": "cosine", "warmup_iters": 0}
    jobs = [
        {**base, "config": CONFIG, "classes": ["a"], "hparams": {**hp, "repeat": r}} for r in (None, 1, 3)
    ] + [{**base, "config": sparse, "classes": ["a"], "hparams": {**hp, "repeat": r}} for r in (None, 2)]
    worker = Path(__file__).resolve().parents[2] / "trainers" / "mmdet"
    done = subprocess.run(
        [default_python(), "-c", REPEATS, str(worker), json.dumps(jobs)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    chains = [json.loads(line) for line in done.stdout.splitlines()]
    assert chains[0][0] == ["RepeatDataset", 10] and chains[1][0] == ["RepeatDataset", 1]
    assert chains[2][0] == ["RepeatDataset", 3] and chains[0][1:] == chains[2][1:]
    assert chains[3] == [["CocoDataset", None]] and chains[4] == [["RepeatDataset", 2], ["CocoDataset", None]]
