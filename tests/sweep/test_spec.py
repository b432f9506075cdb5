from pathlib import Path

import pytest
import yaml

from sweep.errors import SpecError
from sweep.space import CategoricalParam, FloatParam
from sweep.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


def demo() -> dict:
    return yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())


def problems(data: dict, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(data, overrides)
    return e.value.problems


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_spec_validates(path: Path) -> None:
    spec = load_spec(path)
    assert spec.search and spec.budget.trials >= 1


def test_demo_spec_is_typed() -> None:
    spec = load_spec(ROOT / "search_spaces" / "demo.yaml")
    assert isinstance(spec.search["lr"], FloatParam) and spec.search["lr"].log
    assert isinstance(spec.search["optimizer"], CategoricalParam)
    assert spec.search["momentum"].when == {"optimizer": "sgd"}
    assert spec.fixed == {"epochs": 6, "batch_size": 64, "schedule": "cosine"}
    assert spec.max_epochs == 6 and spec.budget.trials >= 12


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["search"]["lr"].update(low=0), "search.lr.low: must be > 0 for a log scale, got 0"),
        (
            lambda d: d["search"]["lr"].update(low=1.0, high=0.1, log=False),
            "search.lr: low <= high must hold, but got low=1.0, high=0.1",
        ),
        (
            lambda d: d["search"]["optimizer"]["choices"].append("adagrad"),
            "search.optimizer.choices[2]: input should be 'sgd', 'adam' or 'adamw'",
        ),
        (
            lambda d: d["search"].update(lr={"type": "flaot", "low": 1, "high": 2}),
            "search.lr.type: must be one of float, int, categorical (did you mean 'float'?)",
        ),
        (
            lambda d: d["search"].update(lerning_rate={"type": "float", "low": 0.1, "high": 1}),
            "search.lerning_rate: unknown parameter",
        ),
        (
            lambda d: d["search"]["momentum"].update(when={"optimzer": "sgd"}),
            "search.momentum.when.optimzer: a condition must name a parameter searched before 'momentum'",
        ),
        (
            lambda d: d["search"]["momentum"].update(when={"optimizer": "rmsprop"}),
            "search.momentum.when.optimizer: 'rmsprop' is not a choice of 'optimizer'",
        ),
        (lambda d: d["fixed"].update(lr=0.1), "search.lr: also set in fixed"),
        (lambda d: d["fixed"].update(epochs="six"), "fixed.epochs: input should be a valid integer"),
        (lambda d: d["dataset"].update(imagesize=3), "dataset.imagesize: unknown key (did you mean 'image_size'?)"),
        (
            lambda d: d["model"].update(arch="resnet19"),
            "model.arch: unknown architecture 'resnet19' (did you mean 'resnet18'?)",
        ),
        (lambda d: d.update(trainer="clasifier"), "trainer: unknown trainer 'clasifier' (did you mean 'classifier'?)"),
        (lambda d: d["sampler"].update(name="tpee"), "sampler.name: unknown sampler 'tpee' (did you mean 'tpe'?)"),
        (
            lambda d: d["scheduler"].update(name="ashaa"),
            "scheduler.name: unknown scheduler 'ashaa' (did you mean 'asha'?)",
        ),
        (lambda d: d["budget"].update(trials=0), "budget.trials: input should be greater than or equal to 1, got 0"),
        (lambda d: d.pop("budget"), "budget: required key is missing"),
        (lambda d: d.update(nmae="x"), "nmae: unknown key (did you mean 'name'?)"),
        (lambda d: d.update(name="../escape"), "name: string should match pattern"),
        (
            lambda d: d["metric"].update(name=["val_top1", "val_loss"], mode=["max", "min"]),
            "scheduler.name: early stopping needs a single metric",
        ),
        (lambda d: d["sampler"].update(name="grid"), "search.lr: the grid sampler needs a finite set of values"),
        (
            lambda d: d["resources"].update(gpus_per_trial=1.5),
            "resources.gpus_per_trial: above 1 must be a whole number",
        ),
    ],
)
def test_each_mistake_is_reported_with_its_path(mutate, expected: str) -> None:
    data = demo()
    mutate(data)
    found = problems(data)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    data = demo()
    data["budget"]["trials"] = "many"
    data["sampler"]["name"] = "nope"
    data["search"]["lr"]["low"] = -1
    data["dataset"]["image_size"] = 2
    found = problems(data)
    paths = {p.split(":")[0] for p in found}
    assert {"budget.trials", "sampler.name", "search.lr.low", "dataset.image_size"} <= paths


def test_overrides_change_nested_keys_and_parse_values_as_yaml() -> None:
    spec = parse_spec(demo(), ["budget.trials=3", "fixed.epochs=2", "search.lr.high=0.5", "model.arch=resnet18"])
    assert spec.budget.trials == 3 and spec.fixed["epochs"] == 2
    assert spec.search["lr"].high == 0.5 and spec.model.arch == "resnet18"  # type: ignore[attr-defined]
    assert problems(demo(), ("budget.trials",)) == ["--set budget.trials: expected key.path=value"]


def test_digest_changes_with_the_spec() -> None:
    assert parse_spec(demo()).digest == parse_spec(demo()).digest
    assert parse_spec(demo()).digest != parse_spec(demo(), ["budget.trials=3"]).digest


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch: {lr: [1, 2\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert "line 3" in str(e.value) or "line 2" in str(e.value)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
