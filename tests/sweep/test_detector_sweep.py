"""A real 2-trial detector sweep on a generated VOC dataset: the detector learns (mAP rises clearly over
the epochs), MLflow holds the runs, `sweep evaluate` scores the test part, `sweep detect` draws pictures."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sweep import store
from sweep.runner import run_sweep
from sweep.spec import parse_spec
from tests.sweep.conftest import in_process
from tests.trainers.synthetic_voc import make_voc

pytestmark = pytest.mark.e2e
NAME = "shapes-det"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session):
    base = tmp_path_factory.mktemp("det")
    make_voc(base / "data", n_trainval=80, n_test=16, seed=1)
    spec = parse_spec(
        {
            "name": NAME,
            "trainer": "detector",
            "dataset": {
                "name": "voc",
                "root": str(base / "data" / "VOCdevkit"),
                "train": ["2007-trainval"],
                "test": "2007-test",
                "val_fraction": 0.25,
            },
            "model": {"arch": "fasterrcnn_small", "weights": "none"},
            "fixed": {
                "epochs": 6,
                "batch_size": 4,
                "min_size": 128,
                "max_size": 128,
                "optimizer": "adam",
                "warmup_iters": 20,
                "schedule": "cosine",
            },
            "search": {"lr": {"type": "float", "low": 1.5e-3, "high": 2.5e-3, "log": True}},
            "sampler": {"name": "random", "seed": 0},
            "scheduler": {"name": "fifo"},
            "metric": {"name": "val_map50", "mode": "max"},
            "budget": {"trials": 2, "max_concurrent": 2},
            "resources": {"cpus_per_trial": 1},
        }
    )
    run_sweep(spec, results=base / "results", base=base)
    return spec, store.resolve_uri(None, base), base


@pytest.fixture(scope="module")
def evaluated(swept):
    """`sweep evaluate` of the detector sweep, once for the tests that need its test scores."""
    _, _, base = swept
    return in_process("evaluate", NAME, "--results", str(base / "results"))


def _runs(uri: str):
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(NAME)
    parent = store.parent_runs(mlflow, exp.experiment_id, NAME)[0]
    return mlflow, parent, store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)


def test_the_detector_learns_inside_a_tracked_two_trial_sweep(swept) -> None:
    _, uri, _ = swept
    mlflow, parent, runs = _runs(uri)
    assert parent.info.status == "FINISHED" and len(runs) == 2
    best_history = []
    for run in runs:
        history = [
            m.value for m in sorted(mlflow.get_metric_history(run.info.run_id, "val_map50"), key=lambda m: m.step)
        ]
        assert len(history) == 6 and run.data.tags["sweep.state"] == "completed"
        for name in ("val_map50_11pt", "val_map", "val_map75", "train_loss", "infer_img_per_s"):
            assert len(mlflow.get_metric_history(run.info.run_id, name)) == 6
        if max(history) > max(best_history, default=0):
            best_history = history
    # a real learning check: from chance to a clear detector in six epochs
    assert best_history[0] < 0.1 and max(best_history[-2:]) > 0.2, best_history
    assert max(best_history[-2:]) - best_history[0] > 0.15


def test_best_weights_and_per_class_ap_are_artifacts(swept) -> None:
    _, uri, base = swept
    mlflow, _, runs = _runs(uri)
    for run in runs:
        names = {a.path for a in mlflow.list_artifacts(run.info.run_id, "checkpoints")}
        assert names == {"checkpoints/best.pt", "checkpoints/best_per_class_ap.csv"}
    run = runs[0]
    table = pd.read_csv(mlflow.download_artifacts(run.info.run_id, "checkpoints/best_per_class_ap.csv", str(base)))
    assert list(table["class"]) == ["circle", "square", "triangle"]
    assert set(table.columns) == {"class", "ap50", "ap50_11pt", "ap", "n_gt"} and (table["n_gt"] > 0).all()
    best = max(m.value for m in mlflow.get_metric_history(run.info.run_id, "val_map50"))
    assert table["ap50"].mean() == pytest.approx(best)


def test_evaluate_scores_the_test_part(swept, evaluated) -> None:
    _, uri, base = swept
    code, printed = evaluated
    assert code == 0 and "test_map50" in printed, printed
    mlflow, _, runs = _runs(uri)
    scored = [r for r in runs if "test_map50" in mlflow.get_run(r.info.run_id).data.metrics]
    assert len(scored) == 1
    metrics = mlflow.get_run(scored[0].info.run_id).data.metrics
    assert metrics["test_n"] == 16 and metrics["test_map50"] > 0.1 and 0 <= metrics["test_map"] <= metrics["test_map50"]
    assert (base / "results" / NAME / "test" / "per_class_ap.csv").exists()


def test_detect_draws_predictions_and_proposals_on_any_images(swept, tmp_path: Path, cli) -> None:
    from skimage import data as samples

    _, uri, base = swept
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(samples.astronaut()).save(images / "astronaut.png")  # from outside the dataset
    Image.fromarray(samples.coffee()).save(images / "coffee.jpg")
    shapes = sorted((base / "data" / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[-1]
    shutil.copy(shapes, images / "shapes.jpg")
    out = tmp_path / "out"
    done = cli("detect", NAME, "--images", images, "-o", out, "--proposals", "--score", "0.05", *at(base), cwd=base)
    assert done.returncode == 0, done
    for name, (w, h) in {"astronaut": (512, 512), "coffee": (600, 400), "shapes": (128, 128)}.items():
        pred = Image.open(out / f"{name}.png")
        pair = Image.open(out / f"{name}_proposals.png")
        assert pred.format == "PNG" and pred.size == (w, h) and pair.size == (2 * w + 8, h)
    original = np.asarray(Image.open(shapes).convert("RGB"), dtype=int)
    drawn = np.asarray(Image.open(out / "shapes.png").convert("RGB"), dtype=int)
    yellow = (drawn == [255, 255, 0]).all(axis=2) & ~(original == [255, 255, 0]).all(axis=2)
    assert yellow.sum() > 100  # box outlines really drawn on the shapes
    mlflow, _, runs = _runs(uri)
    logged = {a.path for r in runs for a in mlflow.list_artifacts(r.info.run_id, "detect")}
    assert {"detect/shapes.png", "detect/shapes_proposals.png"} <= logged


def test_detect_refuses_a_missing_folder_in_one_line(swept, tmp_path: Path, cli) -> None:
    _, _, base = swept
    done = cli("detect", NAME, "--images", tmp_path / "nope", "-o", tmp_path / "o", *at(base), cwd=base)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "folder not found" in done.stderr


def test_promoted_detector_predicts_like_its_checkpoint(swept, evaluated, cli) -> None:
    import mlflow
    import torch

    from trainers.detector.data import read_image
    from trainers.detector.models import load_detector

    _, uri, base = swept
    done = cli("promote", NAME, *at(base), cwd=base)
    assert done.returncode == 0, done
    with store.fluent(uri):
        model = mlflow.pytorch.load_model(f"models:/{NAME}@champion")
        info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    version = store.client(uri).get_model_version_by_alias(NAME, "champion")
    weights = store.client(uri).download_artifacts(version.tags["sweep.run_id"], "checkpoints/best.pt", str(base))
    reference, _ = load_detector(Path(weights))
    image = read_image(sorted((base / "data" / "VOCdevkit" / "VOC2007" / "JPEGImages").glob("*.jpg"))[0])
    with torch.no_grad():
        served = model(image[None].float())[0]
        direct = reference([image.float() / 255])[0]
    assert torch.allclose(served["boxes"], direct["boxes"]) and torch.equal(served["labels"], direct["labels"])
    assert info.metadata["classes"] == ["circle", "square", "triangle"]


def test_a_detector_report_has_per_class_ap_and_proposals(swept, evaluated, tmp_path: Path, cli) -> None:
    from tests.sweep.test_report import assert_pictures

    _, _, base = swept
    out = tmp_path / "report"
    done = cli("report", NAME, "-o", out, *at(base), cwd=base)
    assert done.returncode == 0, done
    kinds = ("curves", "history", "importances", "parallel", "per_class_ap", "proposals")
    assert_pictures(out, NAME, kinds)
    assert (out / "report.html").read_text().count("data:image/png;base64,") == len(kinds)


def at(base: Path) -> list[str]:
    return ["--results", str(base / "results")]
