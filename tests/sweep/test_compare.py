"""Comparing trials where users compare them: MLflow's REST API and UI (in a real browser) after a real
sweep, the promoted model, the kept Optuna study and optuna-dashboard."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sweep import store
from sweep.cli import main
from sweep.export import load_table
from tests.conftest import SCRIPTED, browser_dom, free_port

pytestmark = pytest.mark.e2e


class Served:
    """``sweep ui|dashboard NAME`` in a child process, as a user starts it; the link it prints."""

    def __init__(self, base: Path, *args: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "sweep", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once the server answers
        assert "(Ctrl-C stops it)" in line, line + self.proc.stderr.read()
        self.link = re.search(r"(http://\S+)", line).group(1)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        with socket.socket() as s:  # the server and its workers are gone: nothing listens on the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
        return code


def rest(base_url: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base_url}/api/2.0/mlflow/{path}", data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def ui(demo_sweep):
    spec, _, _, base = demo_sweep
    served = Served(base, "ui", spec.name)
    yield served
    assert served.stop() == 0


def test_runs_read_well_through_the_rest_api(ui, demo_sweep) -> None:
    spec, _, _, _ = demo_sweep
    exp = rest(ui.base_url, f"experiments/get-by-name?experiment_name={spec.name}")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
    runs = rest(ui.base_url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    trials = [(r, t) for r, t in zip(runs, tags, strict=True) if t.get("sweep.role") == "trial"]
    parent = next(r for r, t in zip(runs, tags, strict=True) if t.get("sweep.role") == "parent")
    assert len(trials) == spec.budget.trials
    bests, epochs = [], 0
    for run, tag in trials:
        name, metrics = run["info"]["run_name"], {m["key"]: m["value"] for m in run["data"]["metrics"]}
        history = rest(ui.base_url, f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=val_top1")
        values = {m["step"]: m["value"] for m in history["metrics"]}
        best = max(values.values())
        assert metrics["best_val_top1"] == best and values[int(metrics["best_epoch"])] == best
        assert min(s for s, v in values.items() if v == best) == metrics["best_epoch"]  # the first best epoch
        assert re.fullmatch(rf"{tag['sweep.trial']} {best:.4f}( stopped@\d)? · lr=\S+ .*", name), name
        state, ran = tag["sweep.state"], int(tag["sweep.epochs_run"])
        assert (f"stopped@{ran}" in name) == (state == "stopped_early")
        if state == "stopped_early":
            assert tag["mlflow.note.content"].startswith(f"Stopped early at epoch {ran} of 3")
        assert tag["mlflow.user"] and tag["mlflow.source.type"] == "LOCAL"
        bests.append(best)
        epochs += ran
    assert {t["sweep.state"] for _, t in trials} == {"completed", "stopped_early"}  # ASHA stopped some
    summary = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
    assert summary["best_val_top1"] == max(bests) and summary["epochs_run"] == epochs
    assert summary["epochs_full"] == 3 * spec.budget.trials and summary["trials"] == spec.budget.trials
    assert summary["trials_completed"] + summary["trials_stopped_early"] == spec.budget.trials
    parent_tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert parent_tags["mlflow.runName"].startswith(f"{spec.name} · best val_top1={max(bests):.4f}")
    note = parent_tags["mlflow.note.content"]
    assert spec.description in note and f"{epochs} of {3 * spec.budget.trials} epochs" in note and "| lr |" in note
    inputs = parent["inputs"]["dataset_inputs"][0]["dataset"]
    assert inputs["name"] == "digits" and json.loads(inputs["profile"])["n_train"] == 1149


def test_the_runs_page_a_person_sees(ui, demo_sweep, tmp_path: Path) -> None:
    """Headless Chromium renders the link `sweep ui` printed: the trials by name, the best value."""
    spec, _, _, _ = demo_sweep
    dom = browser_dom(ui.link, tmp_path / "profile", "--virtual-time-budget=25000")
    assert "Training runs" in dom
    for number in range(1, spec.budget.trials + 1):
        assert f"t{number:02d} " in dom
    table = load_table(spec.name, demo_sweep[2]).frame
    assert f"best val_top1={table['val_top1'].max():.4f}" in dom


def test_promoted_model_predicts_what_evaluate_scored(demo_sweep, demo_promoted) -> None:
    import mlflow

    from trainers.classifier.config import ClassifierData
    from trainers.classifier.data import decode, load_splits

    spec, _, uri, base = demo_sweep
    code, printed = demo_promoted
    assert code == 0 and f"models:/{spec.name}@champion" in printed, printed
    with store.fluent(uri):
        model = mlflow.pytorch.load_model(f"models:/{spec.name}@champion")
        info = mlflow.models.get_model_info(f"models:/{spec.name}@champion")
    cfg = ClassifierData.model_validate(spec.dataset.model_dump())
    splits = load_splits(cfg)
    assert info.metadata["classes"] == splits.classes
    images = torch.stack([decode(splits, int(i), cfg.image_size) for i in splits.test])
    with torch.no_grad():
        predicted = model(images.float()).argmax(1).numpy()
    truth = splits.labels[splits.test]
    confusion = pd.read_csv(base / "results" / spec.name / "test" / "confusion.csv", index_col=0).to_numpy()
    mine = np.zeros_like(confusion)
    np.add.at(mine, (truth, predicted), 1)
    assert (mine == confusion).all()
    version = store.client(uri).get_model_version_by_alias(spec.name, "champion")
    assert version.tags["sweep.spec_hash"] == spec.digest and float(version.tags["test_top1"]) > 0.5
    assert version.tags["data.n_train"] == "1149" and version.tags["weights.source"] == "none"


def test_every_surface_names_each_trial_by_the_same_tnn(demo_sweep, cli) -> None:
    """Progress lines, `status`, `export --format json`, MLflow's run names, TensorBoard's folders and the Optuna
    study: one tNN each."""
    import optuna

    spec, _, uri, base = demo_sweep
    client = store.client(uri)
    parent = store.parent_runs(client, client.get_experiment_by_name(spec.name).experiment_id, spec.name)[0]
    runs = store.trial_runs(client, parent.info.experiment_id, parent.info.run_id)
    by_number = {r.data.tags["sweep.trial"]: r for r in runs}
    assert sorted(by_number) == [f"t{n:02d}" for n in range(1, spec.budget.trials + 1)]
    assert all(r.info.run_name.split()[0] == number for number, r in by_number.items())
    ray_ids = {number: r.data.tags["sweep.trial_id"] for number, r in by_number.items()}

    tune = base / "results" / spec.name / "tune"  # what `sweep tensorboard` shows: a folder per trial, its tNN
    assert {p.name for p in tune.iterdir() if list(p.glob("events.out.tfevents.*"))} == set(by_number)
    progress = (base / "progress.txt").read_text()
    started = dict(re.findall(r"started (t\d\d): (.*)", progress))
    assert sorted(started) == sorted(by_number) and ray_ids["t01"] not in progress
    for number, config in started.items():  # the configuration each progress line names is that run's
        params = by_number[number].data.params
        for key, value in (pair.split("=", 1) for pair in config.split(", ")):
            assert value == (f"{float(params[key]):.4g}" if "." in value or "e" in value else params[key]), key
    table = load_table(spec.name, uri).frame
    best = {row["run"]: row["val_top1"] for _, row in table.iterrows()}
    for number, value in re.findall(r"finished (t\d\d) after \d+ epochs, best val_top1=([\d.]+)", progress):
        assert value == f"{best[number]:.4f}", number  # the best epoch's value, as the table's
    assert f"{spec.budget.trials}/{spec.budget.trials} done" in progress.splitlines()[-1]

    at = ("--tracking-uri", uri, "--results", base / "results")
    exported = json.loads(cli("export", spec.name, "--format", "json", "-o", base / "x.json", *at, cwd=base).stdout)
    assert {row["trial"]: row["ray_trial_id"] for row in exported} == ray_ids
    status = cli("status", spec.name, *at, cwd=base).stdout
    assert f"{spec.budget.trials} of {spec.budget.trials} trials" in status
    assert f"({table.iloc[0]['run']}): " in status

    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{base / 'results' / spec.name / 'optuna.db'}")
    assert {t.user_attrs["sweep.trial"]: t.user_attrs["sweep.trial_id"] for t in study.trials} == ray_ids
    assert study.metric_names == ["val_top1"]
    states = {t.user_attrs["sweep.trial"]: t.user_attrs["sweep.state"] for t in study.trials}
    assert states == {number: r.data.tags["sweep.state"] for number, r in by_number.items()}
    assert "stopped_early" in states.values()  # ASHA stopped some: COMPLETE in the study, told so by the attribute


def test_the_printed_snippet_loads_the_model_in_a_fresh_shell_for_any_image_size(demo_sweep, demo_promoted) -> None:
    spec, _, _, base = demo_sweep
    code, printed = demo_promoted
    snippet = printed.split("load it with:\n", 1)[1].strip()
    assert code == 0 and snippet.startswith("import mlflow; mlflow.set_tracking_uri(") and "\n" not in snippet
    check = "import torch; print(tuple(model(torch.randint(0, 256, (3, 3, 40, 27)).float()).shape))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # a fresh shell's
    done = subprocess.run(
        [sys.executable, "-c", f"{snippet}; {check}"], cwd=base.parent, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(3, 10)"  # three images of another size: ten digits each


def test_evaluate_and_promote_leave_every_run_s_times_as_the_sweep_ended_them(
    demo_sweep, demo_times, demo_promoted
) -> None:
    spec, _, uri, _ = demo_sweep
    before, wall = demo_times
    client = store.client(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    after = {r.info.run_id: (r.info.status, r.info.start_time, r.info.end_time) for r in runs}
    assert {run: after[run] for run in before} == before  # a rerun's runs, which may have come since, aside
    assert load_table(spec.name, uri).frame.set_index("trial")["wall_s"].to_dict() == wall


def test_the_study_is_kept_and_optuna_dashboard_serves_it(demo_sweep) -> None:
    import optuna

    spec, _, uri, base = demo_sweep
    storage = f"sqlite:///{base / 'results' / spec.name / 'optuna.db'}"
    study = optuna.load_study(study_name=spec.name, storage=storage)
    table = load_table(spec.name, uri).frame.set_index("trial")
    told = {t.user_attrs["sweep.trial_id"]: t.value for t in study.trials}
    assert len(study.trials) == spec.budget.trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert told == pytest.approx(table["val_top1"].to_dict())  # each trial's best epoch, as the export
    served = Served(base, "dashboard", spec.name)
    studies = json.loads(urllib.request.urlopen(f"{served.base_url}/api/studies", timeout=30).read())
    assert [s["study_name"] for s in studies["study_summaries"]] == [spec.name]
    assert served.link.startswith(f"{served.base_url}/dashboard/studies/")
    assert served.stop() == 0


def test_a_multi_objective_sweep_shows_its_pareto_front(tmp_path: Path, ray_session) -> None:
    from sweep.records import pareto
    from sweep.runner import run_sweep
    from sweep.spec import parse_spec

    overrides = [
        "name=multi",
        "budget.trials=6",
        "fixed.epochs=2",
        "metric={name: [val_top1, val_loss], mode: [max, min]}",
        "sampler={name: nsga2, seed: 0}",
    ]
    spec = parse_spec(SCRIPTED, overrides)
    run_sweep(spec, results=tmp_path / "results", base=tmp_path)
    table = load_table(spec.name, store.resolve_uri(None, tmp_path)).frame
    expected = pareto(table[["val_top1", "val_loss"]].to_numpy().tolist(), ["max", "min"])
    assert table["pareto"].tolist() == expected and any(expected)
    assert table["pareto"].tolist() == sorted(expected, reverse=True)  # the front first
    mlflow = store.client(store.resolve_uri(None, tmp_path))
    exp = mlflow.get_experiment_by_name(spec.name)
    parent = store.parent_runs(mlflow, exp.experiment_id, spec.name)[0]
    front = set(table.loc[table["pareto"], "trial"])
    assert set(parent.data.tags["sweep.pareto"].split(",")) == front
    assert parent.data.metrics["pareto_size"] == len(front)
    assert "Pareto front" in parent.data.tags["mlflow.note.content"]


def test_pareto_is_the_set_no_point_dominates() -> None:
    from sweep.records import pareto

    points = [[0.9, 0.5], [0.8, 0.4], [0.85, 0.6], [0.9, 0.45], [float("nan"), 0.1]]
    assert pareto(points, ["max", "min"]) == [False, True, False, True, False]


def test_sweep_ui_on_a_server_prints_its_link(ui, capsys) -> None:
    assert main(["ui", "--tracking-uri", ui.base_url]) == 0  # a tracking server: its own UI, no second one
    assert f"{ui.base_url}/#/experiments" in capsys.readouterr().out


def test_ui_refuses_a_port_in_use(demo_sweep, capsys) -> None:
    spec, _, uri, base = demo_sweep
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        code = main(["ui", spec.name, "--tracking-uri", uri, "--port", str(port)])
    assert code == 2 and f"--port: 127.0.0.1:{port} is in use" in capsys.readouterr().err


def test_tensorboard_serves_the_trials_event_files(demo_sweep) -> None:
    spec, _, _, base = demo_sweep
    served = Served(base, "tensorboard", spec.name)
    runs = json.loads(urllib.request.urlopen(f"{served.base_url}/data/runs", timeout=30).read())
    assert len(runs) >= spec.budget.trials  # one event file folder per trial
    assert served.stop() == 0


def test_promoting_again_adds_no_version_and_bad_names_are_one_line(demo_sweep, demo_promoted, cli) -> None:
    spec, _, uri, base = demo_sweep
    at = ["--results", base / "results", "--tracking-uri", uri]
    versions = store.client(uri).search_model_versions(f"name = '{spec.name}'")
    again = cli("promote", spec.name, *at, cwd=base)
    assert again.returncode == 0 and f"{spec.name} version {versions[0].version} (@champion)" in again.stdout, again
    bad = (
        ("--as", "my model/ü", "cannot contain '/'"),
        ("--alias", "bad alias!", "alphanumerics"),
        ("--alias", "Latest", "reserved"),
        ("--alias", "v3", "reserved (it names version 3)"),
    )
    for flag, value, words in bad:
        done = cli("promote", spec.name, flag, value, *at, cwd=base)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and f"{flag}: " in done.stderr, done
        assert words in done.stderr
    assert len(store.client(uri).search_model_versions(f"name = '{spec.name}'")) == len(versions) == 1
