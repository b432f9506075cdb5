import optuna
import pytest
import yaml

from sweep.samplers import SAMPLERS, SCHEDULERS, build_sampler, build_scheduler
from sweep.space import sample
from sweep.spec import parse_spec
from tests.sweep.test_spec import ROOT
from trainers import TRAINERS
from trainers.registry import Registry, UnknownNameError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec_with(**overrides: str):
    data = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    return parse_spec(data, [f"{k}={v}" for k, v in overrides.items()])


def test_registry_refuses_duplicates_and_lists_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 2)
    with pytest.raises(UnknownNameError, match="unknown widget 'b'; choose one of: a"):
        reg.get("b")


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_drives_the_search_space(name: str) -> None:
    grid = name == "grid"
    spec = spec_with(
        **{"sampler.name": name},
        **(
            {
                "search": "{lr: {type: categorical, choices: [0.01, 0.1]},"
                " optimizer: {type: categorical, choices: [sgd, adamw]},"
                " momentum: {type: float, low: 0.8, high: 0.9, step: 0.1, when: {optimizer: sgd}}}"
            }
            if grid
            else {}
        ),
    )
    sampler = build_sampler(spec)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    seen = []
    for i in range(6):
        trial = study.ask()
        config = sample(spec.search, trial)
        seen.append(config)
        study.tell(trial, float(config["lr"]) + i * 1e-3)
    assert all(("momentum" in c) == (c["optimizer"] == "sgd") for c in seen)
    # Ray Tune pickles the searcher and its sampler into the experiment state (--resume reads it back)
    from ray import cloudpickle

    restored = cloudpickle.loads(cloudpickle.dumps(sampler))
    study.sampler = restored
    trial = study.ask()
    assert "lr" in sample(spec.search, trial)
    if grid:  # points of the grid only
        grid_points = {(lr, "adamw", None) for lr in (0.01, 0.1)} | {
            (lr, "sgd", m) for lr in (0.01, 0.1) for m in (0.8, 0.9)
        }
        assert {(c["lr"], c["optimizer"], c.get("momentum")) for c in seen} <= grid_points
    else:
        assert all(spec.search["lr"].low <= c["lr"] <= spec.search["lr"].high for c in seen)


def test_same_seed_same_suggestions() -> None:
    def run() -> list[dict]:
        spec = spec_with()
        study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
        out = []
        for _ in range(5):
            t = study.ask()
            out.append(sample(spec.search, t))
            study.tell(t, 0.5)
        return out

    assert run() == run()


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_every_scheduler_builds_with_the_spec_settings(name: str) -> None:
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    scheduler = build_scheduler(spec_with(**{"scheduler.name": name}))
    kinds = {
        "asha": AsyncHyperBandScheduler,
        "hyperband": HyperBandScheduler,
        "median": MedianStoppingRule,
        "fifo": FIFOScheduler,
    }
    assert type(scheduler) is kinds[name]
    if name == "asha":  # the demo's: 6 epochs, grace 1, reduction 3 -> rungs at 1 and 3 epochs
        assert scheduler._max_t == 6 and [epoch for epoch, _ in scheduler._brackets[0]._rungs] == [3, 1]


def test_trainer_registry() -> None:
    from trainers.base import Trainer

    assert {"classifier", "detector", "mmdet"} <= set(TRAINERS.names())  # and the tests' own `scripted`
    for name in ("classifier", "detector", "mmdet"):
        assert isinstance(TRAINERS.get(name).load(), Trainer)


def test_each_trainer_declares_its_capabilities_and_a_missing_one_is_one_line() -> None:
    """What sweep asks a trainer for (evaluate, detect, serve, features, test pictures) is in its registry entry,
    imported only when asked; a capability it lacks is one line saying which."""
    for name in TRAINERS:
        entry = TRAINERS.get(name)
        for capability in entry.CAPABILITIES:
            if entry.has(capability):
                assert callable(entry.capability(capability)), (name, capability)
    mmdet = TRAINERS.get("mmdet")
    assert not mmdet.has("servable") and mmdet.has("detect") and not mmdet.proposals
    with pytest.raises(UnknownNameError, match=r"^this trainer has no servable model \(sweep promote\)$"):
        mmdet.capability("servable")
    with pytest.raises(ValueError, match="no trainer capability 'fly'"):
        mmdet.capability("fly")
    assert TRAINERS.get("classifier").has("features") and TRAINERS.get("detector").proposals
