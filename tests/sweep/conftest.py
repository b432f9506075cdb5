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


@pytest.fixture
def demo_spec_data() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
