"""A sweep spec: YAML in, one frozen :class:`Spec` out, or one :class:`SpecError` listing every problem.

Parsing happens once, here; everything downstream receives typed objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from sweep.errors import SpecError
from sweep.samplers import SAMPLERS, SCHEDULERS
from sweep.space import PARAM_TYPES, CategoricalParam, FloatParam, IntParam, condition_problems, range_problems
from sweep.store import redact
from trainers import TRAINERS, TrainerEntry
from trainers.registry import did_you_mean

SearchParam = FloatParam | IntParam | CategoricalParam
MULTI_OBJECTIVE_SAMPLERS = ("nsga2", "tpe", "random", "grid", "qmc", "gp")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplerSpec(_Block):
    name: str = "tpe"
    """One of tpe, random, grid, cmaes, qmc, gp, nsga2 (Optuna's samplers)."""
    seed: int | None = 0
    n_startup_trials: int | None = Field(None, ge=0)
    """Random trials before a model-based sampler starts modelling (tpe, gp); Optuna's default if unset."""


class SchedulerSpec(_Block):
    name: str = "asha"
    """One of asha, hyperband, median, fifo (no early stopping)."""
    grace_period: int = Field(2, ge=1)
    """Epochs every trial runs before it may be stopped (2 with reduction factor 3: the cheapest to the grid's best
    in ``benchmarks/bench_search.py``)."""
    reduction_factor: float = Field(3, gt=1)
    """ASHA / Hyperband: keep 1/reduction_factor of the trials at each rung."""
    min_samples_required: int = Field(3, ge=1)
    """Median stopping: trials needed at an epoch before comparing against their median."""


class MetricSpec(_Block):
    name: str | list[str] = "val_top1"
    """The reported metric to optimise; a list for multi-objective search (nsga2)."""
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = "max"

    @field_validator("name")
    @classmethod
    def _named(cls, name: str | list[str]) -> str | list[str]:
        if not name or (isinstance(name, list) and not all(name)):
            raise ValueError("name a metric (or a list of metrics for a multi-objective search)")
        return name

    @property
    def names(self) -> list[str]:
        return self.name if isinstance(self.name, list) else [self.name]

    @property
    def modes(self) -> list[str]:
        return list(self.mode) if isinstance(self.mode, list) else [self.mode] * len(self.names)

    @property
    def primary(self) -> str:
        return self.names[0]


class BudgetSpec(_Block):
    trials: int = Field(ge=1)
    max_concurrent: int = Field(1, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    """Stop starting and running trials after this many seconds."""
    max_failures: int = Field(1, ge=0)
    """Times a failed trial is retried from its last checkpoint before it counts as errored."""
    checkpoint_every_s: float = Field(60, ge=0)
    """A trial checkpoints its full state at each new best and at least this often (0: every epoch): what a
    retry or ``--resume`` can lose at most, besides the epoch in progress. Never after its last epoch."""


class ResourcesSpec(_Block):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    """Fractions below 1 share a GPU between trials; each such trial caps its CUDA memory to its fraction (Ray
    places trials by it but does not limit their memory)."""
    reuse_workers: bool = True
    """Run the next trial in the worker process a finished one leaves (Ray Tune's ``reuse_actors``): Python,
    torch and the trainer are imported once, not per trial."""


class TrackingSpec(_Block):
    uri: str | None = None
    """MLflow tracking URI; default: the embedded SQLite store ./mlruns.db."""
    experiment: str | None = None
    """MLflow experiment; default: the sweep's name."""
    study: str | None = None
    """Optuna RDB storage URL of the sweep's study (a database other than MLflow's own); default:
    ``sqlite:///results/<name>/optuna.db``."""
    drain_s: float = Field(60, ge=0)
    """At the end of a sweep, how long to keep trying an unreachable store before leaving the records
    for ``sweep sync``."""


class StorageSpec(_Block):
    uri: str | None = None
    """Where Ray Tune keeps the sweep (its state and the trials' checkpoints) and the trials their work folders and
    decoded-data cache: a path every node mounts (NFS) or an object store, ``s3://bucket/prefix`` (each node then
    keeps its trials' folders and the decoded cache on its own disk). Default: the driver's ``results/<name>``,
    which is all one machine needs. ``sweep run --storage URI`` sets it."""
    endpoint: str | None = None
    """An S3-compatible store's address (MinIO, Ceph, moto: ``http://host:9000``); default: the environment's
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, else AWS itself. Credentials come from each machine's
    environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, an instance role), never from the spec."""

    @model_validator(mode="before")
    @classmethod
    def _uri_alone(cls, value: Any) -> Any:
        return {"uri": value} if isinstance(value, str) else value  # ``storage: s3://…``

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        if uri and "://" in uri and not uri.startswith(("s3://", "file://")):
            raise ValueError("expected a path or s3://bucket/prefix")
        if uri and uri.startswith("s3://") and not uri.removeprefix("s3://").strip("/"):
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return uri

    @field_validator("endpoint")
    @classmethod
    def _http(cls, endpoint: str | None) -> str | None:
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise ValueError("expected http://host:port or https://host")
        return endpoint


class RawSpec(_Block):
    """The structure of the YAML file; trainer-specific blocks are checked by the trainer's schemas."""

    name: str = Field(pattern=NAME_PATTERN)
    trainer: str
    description: str = ""
    dataset: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    sampler: SamplerSpec = SamplerSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    metric: MetricSpec = MetricSpec()
    budget: BudgetSpec
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: StorageSpec = StorageSpec()
    seed: int = 0
    """Seed of every trial's initialisation and data order, so trials differ only in their parameters."""


@dataclass(frozen=True)
class Spec:
    """A validated sweep spec."""

    name: str
    trainer: str
    description: str
    dataset: BaseModel
    model: BaseModel
    fixed: Mapping[str, Any]
    search: Mapping[str, SearchParam]
    sampler: SamplerSpec
    scheduler: SchedulerSpec
    metric: MetricSpec
    budget: BudgetSpec
    resources: ResourcesSpec
    tracking: TrackingSpec
    storage: StorageSpec
    seed: int
    source: str
    """Where the spec came from (a file path), for messages."""
    digest: str
    """sha256 of the spec after overrides: which trials belong to the same question."""
    raw: Mapping[str, Any]

    @property
    def entry(self) -> TrainerEntry:
        return TRAINERS.get(self.trainer)

    def weight_sources(self) -> tuple[str, ...]:
        """Every starting point the trials may use: the searched choices, the fixed value, or the model's."""
        if "weights" in self.search:
            return tuple(str(c) for c in self.search["weights"].choices)  # type: ignore[union-attr]
        if self.fixed.get("weights"):
            return (str(self.fixed["weights"]),)
        return (str(getattr(self.model, "weights", "none")),)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can run (the early-stopping schedulers' horizon)."""
        if "epochs" in self.search:
            p = self.search["epochs"]
            return int(max(p.choices) if isinstance(p, CategoricalParam) else p.high)  # type: ignore[type-var]
        epochs = self.fixed.get("epochs", self.entry.hparams.model_fields["epochs"].default)
        return int(epochs)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read, override and validate a spec file; raise :class:`SpecError` with every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError([f"cannot read the spec: {e.strerror}"], source=str(path)) from None
    except UnicodeDecodeError as e:
        raise SpecError([f"byte {e.start}: not UTF-8 text; save the spec as UTF-8"], source=str(path)) from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader that refuses duplicate keys)
    except yaml.YAMLError as e:
        raise SpecError([yaml_problem(e)], source=str(path)) from None
    return parse_spec(data, overrides, source=str(path))


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML ({getattr(error, 'problem', None) or error})"


def parse_spec(data: Any, overrides: Sequence[str] = (), source: str = "spec") -> Spec:
    """Validate an already-loaded spec mapping (see :func:`load_spec`)."""
    if not isinstance(data, dict):
        raise SpecError([f"the top level must be a mapping of keys, got {type(data).__name__}"], source)
    data = copy.deepcopy(data)
    problems = [p for o in overrides for p in apply_override(data, o)]
    try:
        raw = RawSpec.model_validate(data)
        broken: set[str] = set()
    except ValidationError as e:
        problems += pydantic_problems(e, RawSpec)
        raw, broken = _lenient(data, e)
    problems += _semantic_problems(raw, broken)
    if problems:
        raise SpecError(problems, source)
    return _build(raw, data, source)


def _lenient(data: Mapping[str, Any], error: ValidationError) -> tuple[RawSpec, set[str]]:
    """The spec with its broken top-level blocks replaced by defaults, so the remaining blocks
    still get their deeper checks and one run reports every problem."""
    broken = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
    stand_ins = {"name": "spec", "trainer": "classifier", "budget": {"trials": 1}}
    kept = {k: v for k, v in data.items() if k in RawSpec.model_fields and k not in broken}
    return RawSpec.model_validate(stand_ins | kept), broken


def apply_override(data: dict[str, Any], override: str) -> list[str]:
    """Apply ``a.b.c=value`` (value parsed as YAML) to ``data`` in place."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        return [f"--set {override}: expected key.path=value"]
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return [f"--set {override}: '{part}' is not a mapping"]
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value else None
    except yaml.YAMLError as e:
        return [f"--set {override}: the value is {yaml_problem(e)}"]
    return []


def pydantic_problems(error: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One line per pydantic error: ``path: message, got value``."""
    out = []
    for err in error.errors():
        path = _path([prefix, *err["loc"]] if prefix else list(err["loc"]))
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            hint = did_you_mean(str(err["loc"][-1]), allowed)
            out.append(f"{path}: unknown key{hint}; allowed: {', '.join(allowed)}")
        elif kind == "missing":
            out.append(f"{path}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(f"{path}: {msg[0].lower() + msg[1:]}, got {err['input']!r}")
    return out


def _path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _allowed_keys(model: type[BaseModel] | None, loc: Sequence[Any]) -> list[str]:
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(model.model_fields) if model else []


def _semantic_problems(raw: RawSpec, broken: set[str]) -> list[str]:
    problems = []
    if "sampler" not in broken:
        problems += _name_problem("sampler.name", raw.sampler.name, SAMPLERS.names(), "sampler")
    if "scheduler" not in broken:
        problems += _name_problem("scheduler.name", raw.scheduler.name, SCHEDULERS.names(), "scheduler")
    if "trainer" in broken:
        return problems
    if raw.trainer not in TRAINERS:
        return [f"trainer: {TRAINERS.unknown(raw.trainer)}", *problems]
    entry = TRAINERS.get(raw.trainer)
    problems += _block_problems("dataset", raw.dataset, entry.data)
    problems += _block_problems("model", raw.model, entry.model)
    problems += _block_problems("fixed", raw.fixed, entry.hparams)
    search, search_problems = _parse_search(raw.search, raw.fixed, entry.hparams)
    problems += search_problems + _cross_problems(raw, search)
    if entry.metrics and "metric" not in broken:
        for i, name in enumerate(raw.metric.names):
            if name not in entry.metrics:
                where = f"metric.name[{i}]" if isinstance(raw.metric.name, list) else "metric.name"
                problems.append(
                    f"{where}: the {raw.trainer} trainer reports no '{name}'{did_you_mean(name, list(entry.metrics))}"
                    f"; choose one of: {', '.join(entry.metrics)}"
                )
    return problems


def _name_problem(path: str, name: str, allowed: Sequence[str], what: str) -> list[str]:
    if name in allowed:
        return []
    return [f"{path}: unknown {what} '{name}'{did_you_mean(name, list(allowed))}; choose one of: {', '.join(allowed)}"]


def _block_problems(prefix: str, block: Mapping[str, Any], model: type[BaseModel]) -> list[str]:
    try:
        model.model_validate(block)
    except ValidationError as e:
        return pydantic_problems(e, model, prefix)
    return []


def _parse_search(
    search: Mapping[str, Any], fixed: Mapping[str, Any], hparams: type[BaseModel]
) -> tuple[dict[str, SearchParam], list[str]]:
    params: dict[str, SearchParam] = {}
    problems: list[str] = []
    known = sorted(hparams.model_fields)
    for name, body in search.items():
        at = f"search.{name}"
        if name not in hparams.model_fields:
            problems.append(f"{at}: unknown parameter{did_you_mean(name, known)}; parameters: {', '.join(known)}")
            continue
        if name in fixed:
            problems.append(f"{at}: also set in fixed; a parameter is either fixed or searched")
        if not isinstance(body, dict):
            problems.append(f"{at}: expected a mapping with a type (float, int, categorical), got {body!r}")
            continue
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in PARAM_TYPES:
            hint = did_you_mean(str(kind), list(PARAM_TYPES))
            problems.append(f"{at}.type: must be one of float, int, categorical{hint}, got {kind!r}")
            continue
        try:
            param = TypeAdapter(PARAM_TYPES[kind]).validate_python(body)
        except ValidationError as e:
            problems += pydantic_problems(e, PARAM_TYPES[kind], at)
            continue
        problems += range_problems(name, param) or _value_problems(name, param, hparams)  # type: ignore[arg-type]
        params[name] = param  # type: ignore[assignment]
    problems += condition_problems(params)
    return params, problems


def _value_problems(name: str, param: SearchParam, hparams: type[BaseModel]) -> list[str]:
    """Every value the sampler may choose must be a valid value of the trainer's parameter."""
    values: dict[str, Any] = (
        {f"choices[{i}]": c for i, c in enumerate(param.choices)}
        if isinstance(param, CategoricalParam)
        else {"low": param.low, "high": param.high}
    )
    problems = []
    for where, value in values.items():
        try:
            hparams.model_validate({name: value})
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            problems.append(f"search.{name}.{where}: {msg[0].lower() + msg[1:]}, got {value!r}")
    return problems


def _cross_problems(raw: RawSpec, search: Mapping[str, SearchParam]) -> list[str]:
    problems = []
    metric = raw.metric
    if isinstance(metric.mode, list) and len(metric.mode) != len(metric.names):
        problems.append(f"metric.mode: {len(metric.mode)} modes for {len(metric.names)} metrics")
    if len(metric.names) > 1:
        if raw.scheduler.name != "fifo":
            problems.append(
                f"scheduler.name: early stopping needs a single metric; with {len(metric.names)} metrics use fifo,"
                f" got {raw.scheduler.name!r}"
            )
        if raw.sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
            problems.append(
                f"sampler.name: {raw.sampler.name!r} optimises one metric; for several use one of: "
                + ", ".join(MULTI_OBJECTIVE_SAMPLERS)
            )
    if raw.sampler.name == "grid":
        for name, p in search.items():
            if p.grid() is None:
                problems.append(
                    f"search.{name}: the grid sampler needs a finite set of values"
                    " (categorical, int, or float with step)"
                )
    if raw.resources.gpus_per_trial > 1 and not float(raw.resources.gpus_per_trial).is_integer():
        problems.append(f"resources.gpus_per_trial: above 1 must be a whole number, got {raw.resources.gpus_per_trial}")
    if not search:
        problems.append("search: nothing to search; add at least one parameter")
    return problems


def _build(raw: RawSpec, data: Mapping[str, Any], source: str) -> Spec:
    entry = TRAINERS.get(raw.trainer)
    search, _ = _parse_search(raw.search, raw.fixed, entry.hparams)
    fixed = entry.hparams.model_validate(raw.fixed).model_dump(include=set(raw.fixed))
    # Records keep no credentials: a URI's password in the spec (tracking.uri) is replaced by ***.
    data = json.loads(redact(json.dumps(data, default=str)))
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return Spec(
        name=raw.name,
        trainer=raw.trainer,
        description=raw.description,
        dataset=entry.data.model_validate(raw.dataset),
        model=entry.model.model_validate(raw.model),
        fixed=fixed,
        search=search,
        sampler=raw.sampler,
        scheduler=raw.scheduler,
        metric=raw.metric,
        budget=raw.budget,
        resources=raw.resources,
        tracking=raw.tracking,
        storage=raw.storage,
        seed=raw.seed,
        source=source,
        digest=digest,
        raw=data,
    )
