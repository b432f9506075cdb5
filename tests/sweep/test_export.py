"""The report's tables: numbers equal to what MLflow holds, read in bulk; several sweeps side by side, the best
trial per group, a min-mode metric, ties; every format's numbers, for a reader or for a script."""

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sweep import store
from sweep.export import FORMATS, SweepTable, compare, load_table, ranked, readable, render
from sweep.runner import run_sweep
from sweep.spec import parse_spec
from tests.conftest import SCRIPTED


@pytest.fixture(scope="module")
def loss_sweep(tmp_path_factory, ray_session):
    """A second sweep, ranked by a metric to minimise, in a store of its own."""
    base = tmp_path_factory.mktemp("loss")
    overrides = ["name=digits-loss", "budget.trials=3", "fixed.epochs=2", "metric={name: val_loss, mode: min}"]
    spec = parse_spec(SCRIPTED, overrides)
    run_sweep(spec, results=base / "results", base=base)
    return spec, store.resolve_uri(None, base), base


def histories(uri: str, name: str, metric: str) -> dict[str, list[float]]:
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(name)
    parent = store.parent_runs(mlflow, exp.experiment_id, name)[0]
    return {
        r.data.tags["sweep.trial_id"]: [m.value for m in mlflow.get_metric_history(r.info.run_id, metric)]
        for r in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id)
    }


@pytest.mark.e2e
def test_a_min_metric_is_ranked_lowest_first_from_one_bulk_read(loss_sweep, monkeypatch) -> None:
    spec, uri, _ = loss_sweep
    expected = {t: min(h) for t, h in histories(uri, spec.name, "val_loss").items()}
    from mlflow import MlflowClient

    def no_history(*args, **kwargs):
        raise AssertionError("an ended trial's table row needs no metric history")

    monkeypatch.setattr(MlflowClient, "get_metric_history", no_history)
    frame = load_table(spec.name, uri).frame
    assert dict(zip(frame["trial"], frame["val_loss"], strict=True)) == pytest.approx(expected)
    assert frame["val_loss"].is_monotonic_increasing and list(frame["rank"]) == [1, 2, 3]
    assert (frame["epochs"] == 2).all() and (frame["wall_s"] > 0).all() and list(frame["run"]) != []


@pytest.mark.e2e
def test_several_sweeps_give_one_table_of_their_best(demo_sweep, loss_sweep, tmp_path: Path, cli) -> None:
    demo, _, demo_uri, demo_base = demo_sweep
    loss, loss_uri, loss_base = loss_sweep
    results = tmp_path / "results"
    for base, name in ((demo_base, demo.name), (loss_base, loss.name)):  # each sweep's record names its store
        (results / name).mkdir(parents=True)
        (results / name / "sweep.json").write_bytes((base / "results" / name / "sweep.json").read_bytes())
    out = tmp_path / "both.csv"
    done = cli("export", demo.name, loss.name, "--format", "csv", "-o", out, "--results", results, cwd=tmp_path)
    assert done.returncode == 0, done
    table = pd.read_csv(out)
    assert list(table["sweep"]) == [demo.name, loss.name] and table.columns[0] == "sweep"
    assert table.loc[0, "val_top1"] == pytest.approx(
        max(max(h) for h in histories(demo_uri, demo.name, "val_top1").values())
    )
    assert table.loc[1, "val_loss"] == pytest.approx(
        min(min(h) for h in histories(loss_uri, loss.name, "val_loss").values())
    )
    html = render(compare([load_table(demo.name, demo_uri)], top=2), "html", caption="Best two")
    assert "<table" in html and "<caption>Best two</caption>" in html


@pytest.mark.e2e
def test_group_by_gives_the_best_trial_of_each_value(demo_sweep) -> None:
    spec, _, uri, _ = demo_sweep
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(spec.name)
    parent = store.parent_runs(mlflow, exp.experiment_id, spec.name)[0]
    best: dict[str, float] = {}
    for run in store.trial_runs(mlflow, exp.experiment_id, parent.info.run_id):
        value = max(m.value for m in mlflow.get_metric_history(run.info.run_id, "val_top1"))
        optimizer = run.data.params["optimizer"]
        best[optimizer] = max(best.get(optimizer, -math.inf), value)
    grouped = compare([load_table(spec.name, uri, keys=["optimizer", "weights.source"])], group_by="optimizer")
    assert dict(zip(grouped["optimizer"], grouped["val_top1"], strict=True)) == pytest.approx(best)
    assert set(grouped["weights.source"]) == {"none"}  # a tag works as a key too


def test_ties_keep_the_order_the_trials_ran() -> None:
    frame = pd.DataFrame({"trial": list("abcd"), "run": ["t03", "t01", "t02", "t04"], "m": [0.5, 0.9, 0.5, math.nan]})
    assert list(ranked(frame, "m", "max")["run"]) == ["t01", "t02", "t03", "t04"]
    assert list(ranked(frame, "m", "min")["run"]) == ["t02", "t03", "t01", "t04"]


@pytest.mark.e2e
def test_what_export_and_report_refuse(loss_sweep, tmp_path: Path, cli) -> None:
    """A key no trial has, a sweep that is not there, a report folder that cannot be written: one line, exit 2,
    and no folder left behind."""
    spec, uri, base = loss_sweep
    results = base / "results"
    done = cli("export", spec.name, "--group-by", "no.such.key", "--results", results, cwd=base)
    assert done.returncode == 2 and "--group-by no.such.key: no trial of 'digits-loss' has" in done.stderr, done
    assert "lr" in done.stderr and done.stderr.count("\n") == 1
    done = cli("report", "nosuch", "-o", tmp_path / "nosuch", "--results", results, cwd=base)
    assert done.returncode == 2 and not (tmp_path / "nosuch").exists(), done
    assert "no sweep 'nosuch' in " in done.stderr and "the sweeps there are digits-loss" in done.stderr
    done = cli("export", "nosuch", "--results", results, "--tracking-uri", uri, cwd=base)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert "no sweep named 'nosuch' in the tracking store" in done.stderr
    assert "the sweeps there are digits-loss" in done.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = cli("report", spec.name, "-o", blocker / "report", "--results", results, cwd=base)
    assert done.returncode == 2 and "-o: cannot write the report folder" in done.stderr, done
    assert done.stderr.count("\n") == 1


def adamw_and_sgd() -> SweepTable:
    """Two trials as load_table builds them: momentum is SGD's parameter (None for the AdamW trial, as
    load_table leaves a parameter a trial does not have), one trial without a test score (NaN)."""
    frame = pd.DataFrame(
        {
            "trial": ["t_1", "t_2"],
            "run": ["t01", "t02"],
            "optimizer": ["adamw", "sgd"],
            "lr": [0.003, 0.1],
            "momentum": [None, 0.9],
            "weight_decay": [1e-05, 8.7e-06],
            "val_top1": [0.91234, 0.8],
            "test_top1": [0.9, math.nan],
            "epochs": [3, 2],
            "wall_s": [11.8, 12.0],
            "state": ["completed", "stopped_early"],
        }
    )
    searched = ["optimizer", "lr", "momentum", "weight_decay"]
    return SweepTable("digits", "val_top1", "max", searched, "parent", ranked(frame, "val_top1", "max"))


@pytest.mark.parametrize("fmt", ["md", "latex", "html"])
def test_a_reader_sees_small_values_significant_digits_and_a_dash_not_nan(fmt: str) -> None:
    text = render(adamw_and_sgd(), fmt)
    assert "1e-05" in text and "8.7e-06" in text  # not 0.0000
    assert "11.8" in text and "11.8000" not in text and "0.9123" in text and "0.91234" not in text
    assert "nan" not in text.lower() and "None" not in text
    dash = "--" if fmt == "latex" else "–"  # -- is LaTeX's en dash
    assert text.count(dash) >= 2  # momentum of the AdamW trial, test score of the SGD trial
    if fmt == "html":
        assert ">12</td>" in text and ">3</td>" in text  # a whole wall time, the epochs: integers
    else:  # one line per trial
        sgd = next(line for line in text.splitlines() if "t02" in line)
        assert " 12 " in sgd and "12.0" not in sgd and " 2 " in sgd


def test_one_formatter_for_every_readable_cell() -> None:
    cases = [
        (8.7e-06, "8.7e-06"),
        (1e-05, "1e-05"),
        (-2.5e-07, "-2.5e-07"),
        (0.0001234, "1.234e-04"),
        (0.00099996, "0.001"),  # as it rounds
        (0.001, "0.001"),
        (0.0123456, "0.01235"),
        (11.8, "11.8"),
        (12.0, "12"),
        (3, "3"),
        (12345.6, "12346"),
        (0.0, "0"),
        (-0.0, "0"),
        (1e20, "1e+20"),
        (math.inf, "inf"),
        (math.nan, "–"),
        (None, "–"),
        ("adamw", "adamw"),
        (True, "True"),
    ]
    assert [readable(value) for value, _ in cases] == [shown for _, shown in cases]
    assert readable(math.nan, missing="") == ""


def test_json_is_one_document_of_rows_unrounded_with_null_for_missing() -> None:
    table = adamw_and_sgd()
    rows = json.loads(render(table, "json"))
    assert "json" in FORMATS and isinstance(rows, list) and len(rows) == 2
    named = [c for c in table.frame.columns if c != "run"] + ["ray_trial_id"]  # the trial by its tNN, Ray's id last
    assert [list(r) for r in rows] == [named] * 2 and [r["trial"] for r in rows] == ["t01", "t02"]
    adamw, sgd = rows
    assert adamw["momentum"] is None and sgd["test_top1"] is None
    assert adamw["weight_decay"] == 1e-05 and sgd["weight_decay"] == 8.7e-06 and adamw["val_top1"] == 0.91234
    assert adamw["epochs"] == 3 and isinstance(adamw["epochs"], int) and adamw["rank"] == 1
    assert adamw["wall_s"] == 11.8 and adamw["optimizer"] == "adamw"
    assert json.loads(render(table, "json", top=1)) == [adamw]


def test_csv_is_for_machines_full_precision_and_empty_where_missing() -> None:
    text = render(adamw_and_sgd(), "csv")
    assert "0.91234" in text and "8.7e-06" in text and "–" not in text and "nan" not in text.lower()
    back = pd.read_csv(io.StringIO(text))
    assert back["momentum"].isna().tolist() == [True, False] and back["test_top1"].isna().tolist() == [False, True]
