"""`sweep rerun`: the K best configurations again with S new seeds, as a group of runs nested under the sweep's
parent (whose times stay as the sweep ended them); the export gives each configuration's mean and 95% confidence
interval, equal to a hand computation."""

import math
from pathlib import Path

import pytest

from sweep import store
from sweep.export import interval, load_table
from tests.conftest import SCRIPTED
from tests.sweep.conftest import in_process

pytestmark = pytest.mark.e2e


def test_interval_is_students_t() -> None:
    mean, half, n = interval([0.90, 0.92, 0.97])
    sd = math.sqrt(((0.90 - 0.93) ** 2 + (0.92 - 0.93) ** 2 + (0.97 - 0.93) ** 2) / 2)
    assert (mean, n) == (pytest.approx(0.93), 3) and half == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)
    assert interval([0.5])[1] != interval([0.5])[1]  # one value: no interval (NaN)


@pytest.fixture(scope="module")
def reran(tmp_path_factory, ray_session):
    """A scripted sweep, then `sweep rerun --top 2 --seeds 2` of it: (spec, uri, exit code, printed, the trials
    it repeated)."""
    from sweep.runner import run_sweep
    from sweep.spec import parse_spec

    base = tmp_path_factory.mktemp("rerun")
    spec = parse_spec(SCRIPTED, ["name=reran"])
    run_sweep(spec, results=base / "results", base=base)
    uri = store.resolve_uri(None, base)
    top = list(load_table(spec.name, uri).frame["trial"][:2])
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(spec.name).experiment_id
    before = store.parent_runs(mlflow, exp, spec.name)[0]
    code, printed = in_process("rerun", spec.name, "--top", "2", "--seeds", "2", "--results", str(base / "results"))
    return spec, uri, code, printed, top, before


def test_rerun_gives_k_times_s_runs_and_their_intervals(reran) -> None:
    spec, uri, code, printed, top, before = reran
    assert code == 0 and printed.count("(95% CI, 2 seeds") == 2 and "± " in printed, printed
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(spec.name).experiment_id
    parent = store.parent_runs(mlflow, exp, spec.name)[0]
    assert (parent.info.end_time, parent.data.metrics) == (before.info.end_time, before.data.metrics)  # untouched
    [group] = store.trial_runs(mlflow, exp, parent.info.run_id, role=store.RERUNS)
    assert group.info.status == "FINISHED" and group.info.run_name.startswith("rerun t0")
    reruns = store.trial_runs(mlflow, exp, group.info.run_id, role=store.RERUN)
    assert {r.info.run_id for r in reruns} == {r.info.run_id for r in store.rerun_runs(mlflow, exp, parent.info.run_id)}
    assert len(reruns) == 4 and len(store.trial_runs(mlflow, exp, parent.info.run_id)) == spec.budget.trials
    assert sorted((r.data.params["rerun_of"], r.data.params["rerun_seed"]) for r in reruns) == sorted(
        (t, s) for t in top for s in ("1", "2")
    )
    assert all(r.data.tags["sweep.state"] == "completed" and r.data.tags["sweep.epochs_run"] == "3" for r in reruns)
    table = load_table(spec.name, uri).frame.set_index("trial")
    for trial in top:
        values = [r.data.metrics["best_val_top1"] for r in reruns if r.data.params["rerun_of"] == trial]
        mean = sum(values) / 2
        half = 12.706205 * abs(values[0] - values[1]) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) · sd / √n
        assert table.loc[trial, "val_top1_mean"] == pytest.approx(mean)
        assert table.loc[trial, "val_top1_ci95"] == pytest.approx(half, rel=1e-5) and table.loc[trial, "seeds"] == 2
    assert table["seeds"].isna().sum() == spec.budget.trials - 2
    named = {" ".join(r.info.run_name.split()[:3]) for r in reruns}  # the trial it repeats and its seed
    assert named == {f"{table.loc[t, 'run']} seed {s}" for t in top for s in ("1", "2")}
    names = [r.info.run_name for r in mlflow.search_runs([exp])]
    assert len(names) == len(set(names)), sorted(names)


def test_a_rerun_s_kept_records_go_to_its_group_not_the_sweep(reran, cli, tmp_path) -> None:
    """A rerun whose store stopped answering keeps its records in a journal of its own, named after its group; `sweep
    sync` delivers them there as re-runs, and a resumed sweep (which reads only its own journal) never takes them
    for trials."""
    import json

    from sweep.journal import PENDING, pending_file

    spec, uri, _, _, _, _ = reran
    mlflow = store.client(uri)
    exp = mlflow.get_experiment_by_name(spec.name).experiment_id
    parent = store.parent_runs(mlflow, exp, spec.name)[0]
    [group] = store.trial_runs(mlflow, exp, parent.info.run_id, role=store.RERUNS)
    results = Path(uri.removeprefix("sqlite:///")).parent / "results"
    config = {"lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "rerun_seed": 3, "rerun_of": "x", "rerun_of_run": "t01"}
    kept = [
        {"op": "tags", "trial": "feedbeef", "number": 0, "config": config, "tags": {}},
        {"op": "metrics", "trial": "feedbeef", "number": 0, "config": config, "step": 1, "ts": 0}
        | {"values": {"val_top1": 0.5}},
    ]
    journal = results / spec.name / pending_file(store.RERUN, group.info.run_id)
    assert journal.name != PENDING
    journal.write_text("".join(json.dumps(op) + "\n" for op in kept))
    done = cli("sync", spec.name, "--results", results, cwd=tmp_path)
    assert done.returncode == 0 and "2 kept records delivered" in done.stdout, done
    assert not journal.exists()
    delivered = [
        r for r in store.trial_runs(mlflow, exp, group.info.run_id, role=store.RERUN)
        if r.data.tags["sweep.trial_id"] == "feedbeef"
    ]
    try:
        assert [r.info.run_name.split()[:3] for r in delivered] == [["t01", "seed", "3"]]
        trials = store.trial_runs(mlflow, exp, parent.info.run_id)
        assert "feedbeef" not in {r.data.tags["sweep.trial_id"] for r in trials}
    finally:  # the shared sweep as the other tests know it
        for run in delivered:
            mlflow.delete_run(run.info.run_id)
