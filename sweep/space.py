"""The ``search:`` block: YAML entries that map 1:1 onto Optuna distributions, sampled define-by-run.

A parameter with ``when: {other: value}`` (or ``{other: [v1, v2]}``) is suggested only in trials
where every condition holds, so it is absent from the other trials' configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainers.registry import did_you_mean

if TYPE_CHECKING:
    import optuna

Scalar = bool | int | float | str


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: dict[str, Scalar | list[Scalar]] | None = None
    """Suggest this parameter only when every named earlier parameter has one of these values."""

    def active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter exists, given the values chosen before it."""
        for name, want in (self.when or {}).items():
            if name not in chosen:
                return False
            allowed = want if isinstance(want, list) else [want]
            if chosen[name] not in allowed:
                return False
        return True


class FloatParam(_Param):
    """``optuna.distributions.FloatDistribution``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Scalar] | None:
        if self.step is None:
            return None
        n = int(round((self.high - self.low) / self.step))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]


class IntParam(_Param):
    """``optuna.distributions.IntDistribution``."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Scalar] | None:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalParam(_Param):
    """``optuna.distributions.CategoricalDistribution``."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    def suggest(self, trial: optuna.Trial, name: str) -> Scalar:
        value = trial.suggest_categorical(name, self.choices)
        assert value is not None
        return value

    def grid(self) -> list[Scalar] | None:
        return list(self.choices)


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES: dict[str, type[_Param]] = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


def range_problems(name: str, p: FloatParam | IntParam | CategoricalParam) -> list[str]:
    """The rules Optuna's distributions enforce, as messages with YAML paths."""
    at = f"search.{name}"
    if isinstance(p, CategoricalParam):
        return []
    problems = []
    if p.low > p.high:
        problems.append(f"{at}: low <= high must hold, but got low={p.low}, high={p.high}")
    if p.log and p.low <= 0:
        problems.append(f"{at}.low: must be > 0 for a log scale, got {p.low}")
    if p.log and (p.step is not None and (isinstance(p, FloatParam) or p.step != 1)):
        problems.append(f"{at}: log and step cannot be used together")
    return problems


def condition_problems(params: Mapping[str, FloatParam | IntParam | CategoricalParam]) -> list[str]:
    """``when`` may only name parameters searched earlier, with values they can take."""
    problems = []
    seen: dict[str, FloatParam | IntParam | CategoricalParam] = {}
    for name, p in params.items():
        for ref, want in (p.when or {}).items():
            at = f"search.{name}.when.{ref}"
            if ref not in seen:
                where = "not searched" if ref not in params else f"searched after '{name}'"
                hint = did_you_mean(ref, list(seen))
                problems.append(
                    f"{at}: a condition must name a parameter searched before '{name}', but '{ref}' is {where}{hint}"
                )
                continue
            target = seen[ref]
            values = want if isinstance(want, list) else [want]
            if isinstance(target, CategoricalParam):
                bad = [v for v in values if v not in target.choices]
                if bad:
                    problems.append(f"{at}: {bad[0]!r} is not a choice of '{ref}' (choices: {target.choices})")
            elif any(isinstance(v, (bool, str)) or not target.low <= v <= target.high for v in values):
                problems.append(f"{at}: {values} is outside the range of '{ref}' [{target.low}, {target.high}]")
        seen[name] = p
    return problems


class DefineByRun:
    """The callable OptunaSearch runs for each trial. A class, not a closure, so Ray can pickle it
    into the experiment state and ``--resume`` gets the same search space back."""

    def __init__(self, params: Mapping[str, FloatParam | IntParam | CategoricalParam]) -> None:
        self.params = dict(params)

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for name, p in self.params.items():
            if p.active(chosen):
                chosen[name] = p.suggest(trial, name)


def sample(params: Mapping[str, FloatParam | IntParam | CategoricalParam], trial: optuna.Trial) -> dict[str, Any]:
    """Suggest every active parameter on ``trial`` and return what was chosen."""
    DefineByRun(params)(trial)
    return dict(trial.params)
