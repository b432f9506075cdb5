"""`sweep rerun`: the K best configurations again with S new seeds, as a group of runs nested under the sweep's
parent (whose times stay as the sweep ended them); the export gives each configuration's mean and 95% confidence
interval, equal to a hand computation."""

import math

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
