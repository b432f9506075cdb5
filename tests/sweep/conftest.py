import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

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


SECRET_VAR, SECRET = "SWEEP_TEST_API_TOKEN", "tok-5f1d2c9e8b7a"


@pytest.fixture(scope="session")
def demo_sweep(tmp_path_factory):
    """One real quick demo sweep (8 trials, TPE + ASHA) that many tests read: (spec, grid, uri, base)."""
    import ray

    from sweep import store
    from sweep.runner import run_sweep
    from sweep.spec import load_spec

    base = tmp_path_factory.mktemp("e2e")
    os.environ[SECRET_VAR] = SECRET  # planted: it must not reach MLflow or the results
    spec = load_spec(ROOT / "search_spaces" / "demo.yaml", QUICK)
    grid = run_sweep(spec, results=base / "results", base=base).grid
    os.environ.pop(SECRET_VAR, None)
    yield spec, grid, store.resolve_uri(None, base), base
    ray.shutdown()


@pytest.fixture
def demo_spec_data() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
