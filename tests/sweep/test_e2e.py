"""A real sweep: Ray Tune, Optuna and MLflow (SQLite), read back from MLflow."""

import math
from pathlib import Path

import pandas as pd
import pytest

from sweep import store
from sweep.export import load_table, render
from tests.conftest import sets
from tests.sweep.conftest import QUICK, ROOT, SECRET
from trainers.classifier.trainer import load_classifier

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def swept(demo_sweep):
    return demo_sweep


def _runs(uri: str, name: str):
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(name)
    parents = store.parent_runs(mlflow, exp.experiment_id, name)
    return mlflow, parents, store.trial_runs(mlflow, exp.experiment_id, parents[0].info.run_id)


def test_one_parent_and_one_nested_run_per_trial(swept) -> None:
    spec, grid, uri, _ = swept
    _, parents, runs = _runs(uri, spec.name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(runs) == spec.budget.trials == len(grid)
    assert len({r.data.tags["sweep.trial_id"] for r in runs}) == spec.budget.trials
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["sweep.spec_hash"] == spec.digest for r in runs)
    assert all(r.data.tags["data.n_classes"] == "10" and r.data.tags["weights.source"] == "none" for r in runs)


def test_parameters_are_what_the_sampler_chose(swept) -> None:
    spec, grid, uri, _ = swept
    _, _, runs = _runs(uri, spec.name)
    by_trial = {r.data.tags["sweep.trial"]: r for r in runs}
    for result in grid:
        params = by_trial[Path(result.path).name].data.params  # the trial's folder is its tNN
        for key, value in result.config.items():
            assert float(params[key]) == pytest.approx(value) if isinstance(value, float) else params[key] == str(value)
        assert ("momentum" in params) == (result.config["optimizer"] == "sgd")
        assert params["epochs"] == "3" and params["model.arch"] == "small_cnn"


def test_one_metric_value_per_epoch_and_asha_stopped_some(swept) -> None:
    spec, grid, uri, _ = swept
    mlflow, _, runs = _runs(uri, spec.name)
    epochs_by_trial = {Path(r.path).name: len(r.metrics_dataframe) for r in grid}
    for run in runs:
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_top1")]
        assert steps == list(range(1, epochs_by_trial[run.data.tags["sweep.trial"]] + 1))
        assert int(run.data.tags["sweep.epochs_run"]) == len(steps)
    states = [r.data.tags["sweep.state"] for r in runs]
    assert states.count("stopped_early") >= 1 and states.count("completed") >= 1, states
    assert all(s == "completed" for r, s in zip(runs, states, strict=True) if int(r.data.tags["sweep.epochs_run"]) == 3)


def test_best_checkpoint_artifact_loads_into_the_model(swept) -> None:
    spec, _, uri, base = swept
    mlflow, _, runs = _runs(uri, spec.name)
    best = max(runs, key=lambda r: max(m.value for m in mlflow.get_metric_history(r.info.run_id, "val_top1")))
    path = mlflow.download_artifacts(best.info.run_id, "checkpoints/best.pt", str(base))
    model, blob = load_classifier(Path(path))
    history = [m.value for m in mlflow.get_metric_history(best.info.run_id, "val_top1")]
    assert blob["metrics"]["val_top1"] == pytest.approx(max(history))
    assert blob["arch"] == "small_cnn" and model.fc.out_features == 10
    assert max(history) > 0.5


def test_tensorboard_event_files_per_trial(swept) -> None:
    spec, grid, _, _ = swept
    assert all(list(Path(r.path).glob("events.out.tfevents.*")) for r in grid)


def test_export_table_equals_what_mlflow_holds(swept, tmp_path: Path, cli) -> None:
    spec, _, uri, base = swept
    mlflow, _, runs = _runs(uri, spec.name)
    table = load_table(spec.name, uri)
    later = {"test_top1", "val_top1_mean", "val_top1_ci95", "seeds"}  # there once `sweep evaluate` / `rerun` ran
    columns = [c for c in table.frame.columns if c not in later]
    assert columns == ["rank", "trial", "run", *spec.search, "val_top1", "epochs", "wall_s", "state"]
    assert list(table.frame["rank"]) == list(range(1, spec.budget.trials + 1))
    assert table.frame["val_top1"].is_monotonic_decreasing
    for run in runs:
        row = table.frame.set_index("trial").loc[run.data.tags["sweep.trial_id"]]
        history = [m.value for m in mlflow.get_metric_history(run.info.run_id, "val_top1")]
        assert row["val_top1"] == max(history) and row["epochs"] == len(history)
        for p in spec.search:
            if p in run.data.params:
                assert (
                    row[p] == pytest.approx(float(run.data.params[p]))
                    if p != "optimizer"
                    else row[p] == run.data.params[p]
                )
            else:
                assert row[p] is None or (isinstance(row[p], float) and math.isnan(row[p]))
    out = tmp_path / "best.csv"
    done = cli("export", spec.name, "--format", "csv", "-o", out, "--results", base / "results", cwd=base)
    assert done.returncode == 0, done
    exported = pd.read_csv(out)
    assert list(exported["trial"]) == list(table.frame["run"])  # each trial by its tNN; Ray's id for scripts, last
    assert list(exported["ray_trial_id"]) == list(table.frame["trial"]) and exported.columns[-1] == "ray_trial_id"
    assert "run" not in exported and not any(t in render(table, "md") for t in table.frame["trial"])
    assert exported["val_top1"].tolist() == pytest.approx(table.frame["val_top1"].tolist())
    assert "\\begin{tabular}" in render(table, "latex") and render(table, "md").startswith("|")


def test_status_command(swept, cli) -> None:
    spec, _, _, base = swept
    done = cli("status", spec.name, "--results", base / "results", cwd=base)
    assert done.returncode == 0, done
    n = spec.budget.trials
    assert f"sweep {spec.name}: {n} of {n} trials" in done.stdout and "best val_top1=" in done.stdout


def test_running_again_without_resume_is_refused(swept, cli) -> None:
    spec, _, _, base = swept
    demo = ROOT / "search_spaces" / "demo.yaml"
    done = cli("run", demo, *sets(*QUICK), "--results", base / "results", cwd=base)
    assert done.returncode == 2 and "already ran" in done.stderr and done.stderr.count("\n") == 1, done


def test_evaluate_scores_the_best_trial_on_the_test_part(swept, demo_evaluated) -> None:
    from PIL import Image

    spec, _, uri, base = swept
    scores = demo_evaluated
    table = load_table(spec.name, uri)
    assert scores["trial"] == table.frame.iloc[0]["run"]  # its tNN
    assert scores["test_n"] == 360 and scores["test_top1"] > 0.5
    assert scores["test_top1"] <= scores["test_top5"] <= 1.0
    out = base / "results" / spec.name / "test"
    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class["class"]) == list(range(10)) and per_class["support"].sum() == 360
    confusion = pd.read_csv(out / "confusion.csv", index_col=0)
    assert confusion.to_numpy().sum() == 360
    assert confusion.to_numpy().trace() / 360 == pytest.approx(scores["test_top1"])
    with Image.open(out / "confusion.png") as img:
        assert img.size[0] >= 300 and img.size[1] >= 300
    mlflow, _, runs = _runs(uri, spec.name)
    best = next(r for r in runs if r.data.tags["sweep.trial"] == scores["trial"])
    assert mlflow.get_run(best.info.run_id).data.metrics["test_top1"] == pytest.approx(scores["test_top1"])
    assert {a.path for a in mlflow.list_artifacts(best.info.run_id, "test")} >= {
        "test/per_class.csv",
        "test/confusion.png",
    }


def test_missing_dataset_fails_before_any_trial(tmp_path: Path, cli) -> None:
    resnet = ROOT / "search_spaces" / "resnet.yaml"
    done = cli("run", resnet, "--set", f"dataset.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert done.returncode == 2, done
    assert "no 101_ObjectCategories folder in" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlruns.db").exists()


def test_environment_secrets_never_reach_mlflow_or_results(swept) -> None:
    spec, _, uri, base = swept
    mlflow, parents, runs = _runs(uri, spec.name)
    for run in [*parents, *runs]:
        data = mlflow.get_run(run.info.run_id).data
        assert SECRET not in repr(data.params) and SECRET not in repr(data.tags)
    for path in (base / "results").rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv", ".txt", ".md", ".log"}:
            assert SECRET not in path.read_text(errors="ignore"), path
