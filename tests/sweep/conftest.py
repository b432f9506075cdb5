import contextlib
import io
import sys

import pytest
import yaml

from tests.conftest import ROOT, SECRET, SECRET_VAR  # noqa: F401  (the planted secret: see ray_session)

# A quick version of the demo: tiny images, few epochs, a range of learning rates wide enough that
# some trials learn nothing and ASHA has something to stop.
QUICK = [
    "budget.trials=8",
    "budget.max_concurrent=2",
    "fixed.epochs=3",
    "fixed.batch_size=128",
    "dataset.image_size=12",
    "scheduler.reduction_factor=2",
    "sampler.n_startup_trials=4",
    "search.lr.low=1.0e-5",
    "search.lr.high=0.5",
]


@pytest.fixture(scope="session")
def demo_sweep(tmp_path_factory, ray_session):
    """One real quick demo sweep (8 trials, TPE + ASHA) that many tests read: (spec, grid, uri, base). What changes
    it afterwards (evaluate, promote, rerun) is a fixture of its own, so no test depends on the order they run in."""
    from sweep import store
    from sweep.runner import run_sweep
    from sweep.spec import load_spec

    base = tmp_path_factory.mktemp("e2e")
    spec = load_spec(ROOT / "search_spaces" / "demo.yaml", QUICK)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the progress lines, kept for the tests in base/progress.txt
        grid = run_sweep(spec, results=base / "results", base=base).grid
    (base / "progress.txt").write_text(printed.getvalue())
    sys.stdout.write(printed.getvalue())
    return spec, grid, store.resolve_uri(None, base), base


@pytest.fixture(scope="session")
def demo_times(demo_sweep):
    """Every run of the demo sweep as it ended, before evaluate and promote write to them: run name → (status,
    start, end), and the export's wall times."""
    from sweep import store
    from sweep.export import load_table

    spec, _, uri, _ = demo_sweep
    client = store.client(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    runs = {r.info.run_id: (r.info.status, r.info.start_time, r.info.end_time) for r in runs}
    return runs, load_table(spec.name, uri).frame.set_index("trial")["wall_s"].to_dict()


@pytest.fixture(scope="session")
def demo_reported(demo_sweep, demo_times, tmp_path_factory):
    """The demo sweep's first `sweep report` (which runs `evaluate` itself): its exit code and its folder."""
    spec, _, uri, base = demo_sweep
    out = tmp_path_factory.mktemp("report") / "report"
    code, _ = in_process("report", spec.name, "-o", str(out), "--results", str(base / "results"), "--tracking-uri", uri)
    return code, out


@pytest.fixture(scope="session")
def demo_evaluated(demo_sweep, demo_reported):
    """The demo sweep after `sweep evaluate` (again, after the first report): the best trial's test scores (and its
    run's test metrics)."""
    from sweep.evaluate import evaluate_best

    spec, _, uri, base = demo_sweep
    return evaluate_best(spec.name, base / "results", uri)


@pytest.fixture(scope="session")
def demo_promoted(demo_evaluated, demo_sweep):
    """`sweep promote` of the demo sweep (after evaluate): its exit code and what it printed."""
    spec, _, uri, base = demo_sweep
    return in_process("promote", spec.name, "--results", str(base / "results"), "--tracking-uri", uri)


def in_process(*argv: str) -> tuple[int, str]:
    """A ``sweep`` command run in this process for a session fixture (no capsys there): exit code and stdout."""
    from sweep.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture
def demo_spec_data() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
