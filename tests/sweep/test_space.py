import pickle

import optuna
import pytest

from sweep.space import CategoricalParam, DefineByRun, FloatParam, IntParam, sample

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "optimizer": CategoricalParam(type="categorical", choices=["sgd", "adamw"]),
    "lr": FloatParam(type="float", low=1e-4, high=1e-1, log=True),
    "momentum": FloatParam(type="float", low=0.8, high=0.99, when={"optimizer": "sgd"}),
    "nesterov": CategoricalParam(type="categorical", choices=[True, False], when={"optimizer": ["sgd"]}),
    "batch_size": IntParam(type="int", low=16, high=128, step=16),
}


def test_conditional_parameters_exist_only_where_their_condition_holds() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    configs = []
    for _ in range(40):
        trial = study.ask()
        configs.append(sample(SPACE, trial))
        study.tell(trial, 0.0)
    sgd = [c for c in configs if c["optimizer"] == "sgd"]
    adamw = [c for c in configs if c["optimizer"] == "adamw"]
    assert sgd and adamw
    assert all("momentum" in c and "nesterov" in c and 0.8 <= c["momentum"] <= 0.99 for c in sgd)
    assert all("momentum" not in c and "nesterov" not in c for c in adamw)
    assert all(c["batch_size"] % 16 == 0 and 16 <= c["batch_size"] <= 128 for c in configs)
    assert all(1e-4 <= c["lr"] <= 1e-1 for c in configs)


def test_distributions_map_one_to_one_onto_optuna() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    DefineByRun(SPACE)(trial)
    dists = trial.distributions
    assert dists["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["batch_size"] == optuna.distributions.IntDistribution(16, 128, step=16)
    assert dists["optimizer"] == optuna.distributions.CategoricalDistribution(["sgd", "adamw"])


def test_define_by_run_pickles_for_resume() -> None:
    again = pickle.loads(pickle.dumps(DefineByRun(SPACE)))
    assert again.params == SPACE


@pytest.mark.parametrize(
    ("param", "grid"),
    [
        (IntParam(type="int", low=1, high=7, step=3), [1, 4, 7]),
        (FloatParam(type="float", low=0.0, high=0.3, step=0.1), [0.0, 0.1, 0.2, 0.3]),
        (FloatParam(type="float", low=0.0, high=1.0), None),
        (CategoricalParam(type="categorical", choices=["a", "b"]), ["a", "b"]),
    ],
)
def test_grid_values(param, grid) -> None:
    assert param.grid() == grid
