"""Property-based: broken specs always give a SpecError with YAML paths, never a traceback."""

import contextlib
import copy

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sweep.errors import SpecError
from sweep.spec import parse_spec
from tests.sweep.conftest import ROOT

BASE = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    return out


ALL_PATHS = paths(BASE)


def set_at(data: dict, path: tuple, value: object) -> None:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), junk), min_size=1, max_size=4))
def test_wrong_values_anywhere_give_spec_errors(changes) -> None:
    data = copy.deepcopy(BASE)
    for path, value in changes:
        with contextlib.suppress(TypeError, KeyError):  # an earlier change replaced a parent mapping
            set_at(data, path, value)
    try:
        parse_spec(data)
    except SpecError as e:
        assert e.problems and all(":" in p for p in e.problems)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([p for p in ALL_PATHS if len(p) < 3] + [()]), st.text(min_size=1, max_size=10))
def test_unknown_keys_are_named(path, key) -> None:
    data = copy.deepcopy(BASE)
    node = data
    for k in path:
        node = node[k]
    if not isinstance(node, dict) or key in node or path[:1] in {("search",), ("fixed",)} and len(path) == 1:
        return
    node[key] = 1
    try:
        parse_spec(data)
    except SpecError as e:
        assert any(key in p for p in e.problems), e.problems
    else:
        raise AssertionError(f"unknown key {key!r} at {path} was accepted")


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3), st.booleans())
def test_impossible_ranges(low, high, log) -> None:
    data = copy.deepcopy(BASE)
    data["search"]["lr"] = {"type": "float", "low": low, "high": high, "log": log}
    valid = low <= high and (not log or low > 0) and low > 0
    try:
        spec = parse_spec(data)
    except SpecError as e:
        assert not valid, e.problems
        assert all(p.startswith("search.lr") for p in e.problems), e.problems
    else:
        assert valid and spec.search["lr"].low == low


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["trainer", "sampler.name", "scheduler.name", "model.arch", "dataset.name"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12),
)
def test_unknown_names(path, name) -> None:
    data = copy.deepcopy(BASE)
    known = {
        "classifier",
        "detector",
        "mmdet",
        "tpe",
        "random",
        "grid",
        "cmaes",
        "qmc",
        "gp",
        "nsga2",
        "asha",
        "hyperband",
        "median",
        "fifo",
        "digits",
        "imagefolder",
        "caltech101",
        "cub200",
        "small_cnn",
        "resnet18",
    }
    if name in known or name.startswith(("resnet", "vgg", "efficientnet", "mobilenet", "convnext", "vit", "alexnet")):
        return
    set_at(data, tuple(path.split(".")), name)
    try:
        parse_spec(data)
    except SpecError as e:
        assert any(p.startswith(path) for p in e.problems), e.problems
    else:
        raise AssertionError(f"{path}={name!r} was accepted")
