"""The parameters of a wandb sweep file as Optuna search dimensions, drawing wandb's exact laws.

Every distribution of wandb's sweep schema is a ``Parameter``. Where Optuna has the same law
natively it is suggested natively (so TPE models it directly): ``categorical`` ->
``suggest_categorical``, ``int_uniform`` -> ``suggest_int``, ``uniform`` -> ``suggest_float``, and the
four log-uniform laws -> ``suggest_float(log=True)``: ``log_uniform_values`` and
``inv_log_uniform_values`` on ``[min, max]``, ``log_uniform`` on ``[e^min, e^max]`` and
``inv_log_uniform`` on ``[e^-max, e^-min]`` (wandb draws ``exp(-U(min, max))``, whose logarithm is
uniform on ``[-max, -min]``). Every other law is a quantile ``u`` suggested as a float in ``[0, 1]``
(the Optuna parameter ``<name>.quantile``) and mapped through its inverse CDF (``scipy.stats``), so
random sampling draws exactly wandb's law; the ``q_*`` laws then round like wandb,
``round(x / q) * q``, integers when ``q`` is an integer. The value passed to the run is what
``SearchSpace.sample`` returns (the runner records it in the trial's user attributes).

A grid takes ``constant``, ``categorical``, ``int_uniform`` (``min..max``) and ``q_uniform``
(wandb's ``numpy.arange(min, max, q)``: ``max`` itself is left out), as wandb's grid search does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from scipy import stats

__all__ = ["DISTRIBUTIONS", "GRID_DISTRIBUTIONS", "Parameter", "SearchSpace"]

# distribution -> (required keys, optional keys with wandb's defaults)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": (("value",), {}),
    "categorical": (("values",), {}),
    "categorical_w_probabilities": (("values", "probabilities"), {}),
    "int_uniform": (("min", "max"), {}),
    "uniform": (("min", "max"), {}),
    "q_uniform": (("min", "max"), {"q": 1.0}),
    "log_uniform": (("min", "max"), {}),
    "log_uniform_values": (("min", "max"), {}),
    "q_log_uniform": (("min", "max"), {"q": 1.0}),
    "q_log_uniform_values": (("min", "max"), {"q": 1.0}),
    "inv_log_uniform": (("min", "max"), {}),
    "inv_log_uniform_values": (("min", "max"), {}),
    "normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": ((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": ((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": ((), {"a": 1.0, "b": 1.0}),
    "q_beta": ((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
_PRIMITIVE = (str, int, float, bool, type(None))
_U_LOW, _U_HIGH = float(np.finfo(float).tiny), float(np.nextafter(1.0, 0.0))  # ppf(0) is -inf for normals


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number_error(where: str, key: str, value: Any) -> ValueError:
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = f" (YAML reads {value} as text: write it with a decimal point, e.g. 1.0e-3)"
        except ValueError:
            pass
    return ValueError(f"{where}: {key} must be a number, got {value!r}{hint}")


@dataclass(frozen=True)
class Parameter:
    """One sweep parameter: its name, wandb distribution and that distribution's settings.

    ``Parameter.parse(name, mapping)`` reads a sweep file's entry (the distribution inferred as wandb
    does when it is not given) and checks it; errors are ``ValueError`` naming the parameter and key.

    >>> Parameter.parse("lr", {"min": 0.001, "max": 0.1}).distribution
    'uniform'
    >>> Parameter.parse("lr", {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2}).value_at(0.7)
    8
    """

    name: str
    distribution: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, entry: Any, where: str = "parameters") -> Parameter:
        """Check a sweep file's ``parameters: {name: entry}`` and fill wandb's defaults.

        >>> Parameter.parse("seed", {"values": [0, 1]}).settings
        {'values': [0, 1]}
        """
        where = f"{where}.{name}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping such as {{values: [...]}}, got {entry!r}")
        if "parameters" in entry:
            raise ValueError(
                f"{where}: nested parameters are not supported (runs get flat --name=value flags); "
                "give each parameter its own entry"
            )
        distribution = entry.get("distribution", _inferred(entry))
        if distribution is None:
            raise ValueError(
                f"{where}: give `values`, `value`, min and max, or a distribution "
                f"(one of {sorted(DISTRIBUTIONS)}), got {entry!r}"
            )
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"{where}: unknown distribution {distribution!r}; supported: {sorted(DISTRIBUTIONS)}"
            )
        required, optional = DISTRIBUTIONS[distribution]
        allowed = {"distribution", *required, *optional}
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise ValueError(
                f"{where}: {distribution} takes no key(s) {unknown}; its keys: {sorted(allowed)}"
            )
        missing = [k for k in required if k not in entry]
        if missing:
            raise ValueError(f"{where}: {distribution} needs {missing}")
        settings = {**optional, **{k: v for k, v in entry.items() if k != "distribution"}}
        _check(where, distribution, settings)
        return cls(name, distribution, settings)

    # -- values
    @property
    def native(self) -> bool:
        """Whether Optuna suggests this law directly (else a quantile through the inverse CDF)."""
        return self.distribution in (
            "categorical",
            "int_uniform",
            "uniform",
            "log_uniform",
            "log_uniform_values",
            "inv_log_uniform",
            "inv_log_uniform_values",
        )

    def choices(self) -> list[Any]:
        """What Optuna chooses among for a categorical law: the values, or their indices when a
        value is a list or a mapping (Optuna stores only plain values).

        >>> Parameter.parse("scale", {"values": [[0.5, 1.0], [0.8, 1.0]]}).choices()
        [0, 1]
        """
        values = self.settings["values"]
        return list(values) if all(isinstance(v, _PRIMITIVE) for v in values) else list(range(len(values)))

    def grid_values(self) -> list[Any]:
        """The values of this parameter in a grid (wandb's expansion of int_uniform and q_uniform).

        >>> Parameter.parse("depth", {"min": 2, "max": 4}).grid_values()
        [2, 3, 4]
        """
        s = self.settings
        if self.distribution == "constant":
            return [s["value"]]
        if self.distribution == "categorical":
            return list(s["values"])
        if self.distribution == "int_uniform":
            return list(range(s["min"], s["max"] + 1))
        if self.distribution == "q_uniform":
            return [_plain(v) for v in np.arange(s["min"], s["max"], s["q"])]
        raise ValueError(
            f"parameters.{self.name}: {self.distribution} cannot be a grid dimension; a grid takes "
            f"{list(GRID_DISTRIBUTIONS)} (or use method: random/bayes)"
        )

    def value_at(self, u: float) -> Any:
        """wandb's value at quantile ``u`` of this law (its inverse CDF, then q rounding).

        >>> Parameter.parse("x", {"distribution": "normal", "mu": 1.0, "sigma": 2.0}).value_at(0.5)
        1.0
        """
        s, d = self.settings, self.distribution
        u = min(max(float(u), _U_LOW), _U_HIGH)
        if d == "categorical_w_probabilities":
            index = int(np.searchsorted(np.cumsum(s["probabilities"]), u, side="right"))
            return s["values"][min(index, len(s["values"]) - 1)]
        law = d[2:] if d.startswith("q_") else d
        if law == "uniform":
            x = stats.uniform.ppf(u, s["min"], s["max"] - s["min"])
        elif law in ("log_uniform", "log_uniform_values"):
            low, high = (
                (s["min"], s["max"]) if law == "log_uniform" else (math.log(s["min"]), math.log(s["max"]))
            )
            x = math.exp(stats.uniform.ppf(u, low, high - low))
        elif law == "normal":
            x = stats.norm.ppf(u, loc=s["mu"], scale=s["sigma"])
        elif law == "log_normal":
            x = stats.lognorm.ppf(u, s=s["sigma"], scale=math.exp(s["mu"]))
        elif law == "beta":
            x = stats.beta.ppf(u, s["a"], s["b"])
        else:
            raise ValueError(f"parameters.{self.name}: {d} is suggested natively, not through a quantile")
        if d.startswith("q_"):
            q = s["q"]
            x = round(float(x) / q) * q
            return int(x) if _is_int(q) else float(x)
        return float(x)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Suggest this parameter on an Optuna trial; returns the value the run gets.

        >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        >>> 1 <= Parameter.parse("depth", {"min": 1, "max": 4}).suggest(study.ask()) <= 4
        True
        """
        s, d = self.settings, self.distribution
        if d == "constant":
            return s["value"]
        if d == "categorical":
            choices = self.choices()
            choice = trial.suggest_categorical(self.name, choices)
            return choice if choices == s["values"] else s["values"][choice]
        if d == "int_uniform":
            return trial.suggest_int(self.name, s["min"], s["max"])
        if d == "uniform":
            return trial.suggest_float(self.name, s["min"], s["max"])
        if d in ("log_uniform", "log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"):
            return trial.suggest_float(self.name, *self.log_bounds(), log=True)
        return self.value_at(trial.suggest_float(f"{self.name}.quantile", 0.0, 1.0))

    def log_bounds(self) -> tuple[float, float]:
        """The values a log-uniform law spans: ``[min, max]``, ``[e^min, e^max]`` for log_uniform and
        ``[e^-max, e^-min]`` for inv_log_uniform (wandb's exp(-U(min, max))).

        >>> Parameter.parse("x", {"distribution": "inv_log_uniform", "min": 0, "max": 1}).log_bounds()
        (0.36787944117144233, 1.0)
        """
        low, high = self.settings["min"], self.settings["max"]
        if self.distribution == "log_uniform":
            return math.exp(low), math.exp(high)
        if self.distribution == "inv_log_uniform":
            return math.exp(-high), math.exp(-low)
        return float(low), float(high)


def _plain(x: Any) -> Any:
    """A numpy scalar as the Python number it holds."""
    return x.item() if isinstance(x, np.generic) else x


def _inferred(entry: dict[str, Any]) -> str | None:
    """wandb's distribution for an entry without one (the order of its schema's alternatives)."""
    if "values" in entry:
        return "categorical_w_probabilities" if "probabilities" in entry else "categorical"
    if "min" in entry and "max" in entry:
        return "int_uniform" if _is_int(entry["min"]) and _is_int(entry["max"]) else "uniform"
    if "value" in entry:
        return "constant"
    return None


def _check(where: str, distribution: str, s: dict[str, Any]) -> None:
    """The checks of wandb's schema (types, min < max, positive bounds) plus what scipy needs."""
    if "values" in s:
        if not isinstance(s["values"], list) or not s["values"]:
            raise ValueError(f"{where}: values must be a non-empty list, got {s['values']!r}")
    if "probabilities" in s:
        p = s["probabilities"]
        if (
            not isinstance(p, list)
            or len(p) != len(s["values"])
            or not all(_is_number(x) and x >= 0 for x in p)
            or not np.isclose(sum(p), 1.0)  # wandb's test
        ):
            raise ValueError(
                f"{where}: probabilities must be {len(s['values'])} numbers >= 0 summing to 1 "
                f"(one per value), got {p!r}"
            )
    for key in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if key in s and (not _is_number(s[key]) or not math.isfinite(s[key])):
            raise _number_error(where, key, s[key])
    if distribution == "int_uniform" and not (_is_int(s["min"]) and _is_int(s["max"])):
        raise ValueError(f"{where}: int_uniform needs integer min and max, got {s['min']!r}, {s['max']!r}")
    if "min" in s and s["min"] >= s["max"]:
        raise ValueError(f"{where}: min {s['min']} must be less than max {s['max']}")
    if distribution.endswith("_values") and s["min"] <= 0:
        raise ValueError(f"{where}: {distribution} needs min > 0 (its bounds are values, not logs)")
    for key in ("q", "sigma", "a", "b"):
        if key in s and s[key] <= 0:
            raise ValueError(f"{where}: {key} must be > 0, got {s[key]}")


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a sweep, sampled on an Optuna trial.

    >>> space = SearchSpace((Parameter.parse("lr", {"values": [0.1, 0.2]}), Parameter.parse("seed", {"value": 0})))
    >>> space.grid(), space.grid_size()
    ({'lr': [0.1, 0.2]}, 2)
    """

    parameters: tuple[Parameter, ...]

    def grid(self) -> dict[str, list[Any]]:
        """GridSampler's search space: every non-constant parameter's grid values (indices for
        non-plain values); errors name a parameter that cannot be a grid dimension.

        >>> SearchSpace((Parameter.parse("d", {"min": 1, "max": 2}),)).grid()
        {'d': [1, 2]}
        """
        grid = {}
        for p in self.parameters:
            values = p.grid_values()
            if p.distribution == "constant":
                continue
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"parameters.{p.name}: the grid values {values} repeat; list each once")
            grid[p.name] = (
                values if all(isinstance(v, _PRIMITIVE) for v in values) else list(range(len(values)))
            )
        return grid

    def grid_size(self) -> int:
        """The number of configurations in the grid.

        >>> SearchSpace((Parameter.parse("d", {"min": 1, "max": 3}),)).grid_size()
        3
        """
        return math.prod(len(v) for v in self.grid().values())

    def sample(self, trial: optuna.Trial, grid: bool = False) -> dict[str, Any]:
        """The configuration of ``trial``: parameter name -> the value the run gets. With ``grid``
        every dimension is a categorical over its grid values (what GridSampler fills in).

        >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        >>> SearchSpace((Parameter.parse("x", {"distribution": "q_uniform", "min": 0, "max": 9, "q": 3}),)).sample(
        ...     study.ask())["x"] % 3
        0
        """
        if not grid:
            return {p.name: _plain(p.suggest(trial)) for p in self.parameters}
        space, config = self.grid(), {}
        for p in self.parameters:
            if p.name not in space:
                config[p.name] = p.settings["value"]
                continue
            values = p.grid_values()
            choice = trial.suggest_categorical(p.name, space[p.name])
            config[p.name] = choice if space[p.name] == values else values[choice]
        return config
