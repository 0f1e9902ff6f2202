"""A wandb sweep file, read and checked: the keys the runner supports and each run's command line.

The file is wandb's own format, so ``wandb sweep FILE`` takes it unchanged::

    program: train.py
    method: grid                     # grid | random | bayes
    metric: {name: eval_top1, goal: maximize}
    parameters:
      model: {values: [resnet18, resnet18_op3]}
      lr: {distribution: log_uniform_values, min: 0.01, max: 0.1}
    early_terminate: {type: hyperband, min_iter: 1, eta: 3}
    command: [${env}, ${interpreter}, ${program}, --epochs, "5", ${args}]

``load_sweep`` returns a ``SweepSpec``; a key, distribution or macro the runner does not support,
a missing or malformed value, or (when the program is ``train.py``) a parameter that is not a
``TrainConfig`` key or a value it refuses, is a ``ValueError`` naming it and what is supported.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm_overparam.core.yaml_file import read_yaml_file
from timm_overparam.sweep.distributions import Parameter, SearchSpace

__all__ = [
    "MACROS",
    "METHODS",
    "SUPPORTED_KEYS",
    "Hyperband",
    "Metric",
    "SweepSpec",
    "load_sweep",
    "parse_sweep",
]

SUPPORTED_KEYS = (
    "program",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "command",
    "name",
    "description",
    "project",
    "entity",
    "run_cap",
)
METHODS = ("grid", "random", "bayes")
MACROS = (
    "env",
    "interpreter",
    "program",
    "args",
    "args_no_equals",
    "args_no_hyphens",
    "args_no_boolean_flags",
    "args_json",
    "args_json_file",
    "args_append_hydra",
    "args_override_hydra",
)
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")  # wandb's
RUNNER_KEYS = ("output", "experiment", "resume")  # train.py keys the runner sets for every run
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # wandb's parameter names
_MACRO = re.compile(r"\$\{([^}]*)\}")
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # wandb replaces these inside any command item


@dataclass(frozen=True)
class Metric:
    """The sweep's ``metric``: a ``summary.csv`` column and whether to maximize or minimize it;
    ``target`` ends the sweep once a finished run reaches it.

    >>> Metric("eval_top1", "maximize").reached(0.99), Metric("eval_top1", "maximize", 0.9).reached(0.95)
    (False, True)
    """

    name: str
    goal: str = "minimize"  # wandb's default
    target: float | None = None

    def reached(self, value: float) -> bool:
        """Whether ``value`` reaches the target (never without one)."""
        if self.target is None:
            return False
        return value >= self.target if self.goal == "maximize" else value <= self.target


@dataclass(frozen=True)
class Hyperband:
    """``early_terminate: {type: hyperband, ...}``: wandb's bands (``hyperband_stop_runs`` of
    wandb's ``sweeps`` package), judged by the runner's ``WandbHyperbandPruner``.

    wandb has two forms: ``min_iter`` (bands ``int(min_iter * eta^k)``, k = 0..99) or ``max_iter``
    and ``s`` (at most ``s`` bands: ``max_iter / eta^k`` for k = 1..s, stopping below 1, as ints,
    sorted). A band b is a position in a run's history: ``history[b]``, its (b + 1)-th value.

    >>> Hyperband(eta=3, max_iter=27, s=2).bands()
    [3, 9]
    >>> Hyperband(eta=2, max_iter=5, s=2).bands()
    [1, 2]
    >>> Hyperband(eta=2, min_iter=1).bands()[:5]
    [1, 2, 4, 8, 16]
    """

    eta: int = 3
    min_iter: int | None = None
    max_iter: int | None = None
    s: int | None = None

    def bands(self) -> list[int]:
        """wandb's bands, ascending (history positions where runs are compared)."""
        if self.min_iter is not None:
            return [int(self.min_iter * self.eta**k) for k in range(100)]
        assert self.max_iter is not None and self.s is not None
        band, bands = float(self.max_iter), []
        for _ in range(self.s):
            band /= self.eta  # wandb divides a float: int() of each, like its own loop
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file (see the module docstring); ``command_line`` builds a run's command.

    >>> spec = parse_sweep({"method": "grid", "program": "fit.py", "parameters": {"lr": {"values": [0.1]}}})
    >>> spec.command_line({"lr": 0.1}, interpreter=["python"])[1:]
    ['python', 'fit.py', '--lr=0.1']
    """

    name: str
    method: str
    space: SearchSpace
    command: tuple[str, ...] = DEFAULT_COMMAND
    program: str | None = None
    metric: Metric | None = None
    early_terminate: Hyperband | None = None
    run_cap: int | None = None
    project: str | None = None
    entity: str | None = None
    description: str | None = None
    source: str = "sweep"
    fingerprint: str = ""  # what must not change between invocations of one sweep (JSON)

    @property
    def is_train_py(self) -> bool:
        """Whether the program is a train.py (its parameters are then ``TrainConfig`` keys)."""
        return self.program is not None and Path(self.program).name == "train.py"

    def uses(self, macro: str) -> bool:
        """Whether the command has the item ``${macro}``.

        >>> parse_sweep({"method": "grid", "program": "p.py", "parameters": {"a": {"value": 1}}}).uses("args")
        True
        """
        return "${" + macro + "}" in self.command

    def flag_given(self, key: str) -> bool:
        """Whether the command or a parameter sets the flag of ``key`` (either spelling).

        >>> parse_sweep({"method": "grid", "command": ["x", "--log-wandb"], "parameters": {"a": {"value": 1}}}).flag_given("log_wandb")
        True
        """
        names = {key, key.replace("_", "-")}
        given = {item.partition("=")[0][2:] for item in self.command if item.startswith("--")}
        return bool(names & (given | {p.name for p in self.space.parameters}))

    def command_line(
        self, values: dict[str, Any], interpreter: list[str], args_json_file: str | None = None
    ) -> list[str]:
        """The run's command: the sweep's ``command`` with wandb's macros filled in for ``values``
        (``${interpreter}`` -> ``interpreter``, ``${args}`` -> ``--name=value`` with Python's
        ``str(value)``, as wandb's agent writes them).

        >>> spec = parse_sweep({"method": "grid", "program": "p.py", "command": ["${program}", "${args_no_boolean_flags}"],
        ...                     "parameters": {"amp": {"values": [True, False]}}})
        >>> spec.command_line({"amp": True}, []), spec.command_line({"amp": False}, [])
        (['p.py', '--amp'], ['p.py'])
        """
        pairs = [(k, str(v)) for k, v in values.items()]
        macros = {
            "env": ["/usr/bin/env"] if os.name != "nt" else [],
            "interpreter": list(interpreter),
            "program": [self.program or ""],
            "args": [f"--{k}={v}" for k, v in pairs],
            "args_no_equals": [x for k, v in pairs for x in (f"--{k}", v)],
            "args_no_hyphens": [f"{k}={v}" for k, v in pairs],
            "args_no_boolean_flags": [
                f"--{k}" if v is True else f"--{k}={v}" for k, v in values.items() if v is not False
            ],
            "args_json": [json.dumps(values)],
            "args_json_file": [args_json_file or ""],
            "args_append_hydra": [f"+{k}={v}" for k, v in pairs],
            "args_override_hydra": [f"++{k}={v}" for k, v in pairs],
        }
        out: list[str] = []
        for item in self.command:
            whole = _MACRO.fullmatch(item)
            if whole and whole.group(1) in macros:
                out += macros[whole.group(1)]
            else:
                out.append(_ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), item))
        return out

    def check_config(self, values: dict[str, Any]) -> None:
        """For a train.py program, check a configuration as train.py will read it (``TrainConfig``);
        errors name the parameter. Other programs take any values.

        >>> spec = parse_sweep({"method": "grid", "program": "train.py", "parameters": {"epochs": {"values": [1]}}})
        >>> spec.check_config({"epochs": 0})
        Traceback (most recent call last):
        ...
        ValueError: sweep 'sweep': parameter 'epochs' = 0: epochs must be >= 1, got 0
        """
        if not self.is_train_py:
            return
        from timm_overparam.train.config import TrainConfig

        for name, value in values.items():
            where = f"sweep {self.source!r}: parameter {name!r} = {value!r}"
            if not isinstance(value, (bool, int, float, str)):
                raise ValueError(
                    f"{where}: train.py reads one --{name}=value flag per parameter, which cannot "
                    "carry a list, a mapping or null; give each value as a plain number, text or boolean"
                )
            try:
                TrainConfig.from_dict({name.replace("-", "_"): value})
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a wandb sweep YAML file; its name defaults to the file's stem.

    Example: ``load_sweep("configs/sweeps/digits_depth.yaml").space.grid_size()``
    """
    config = read_yaml_file(path, "sweep file")
    return parse_sweep(config, source=str(path), name=Path(path).stem)


def parse_sweep(config: Any, source: str = "sweep", name: str = "sweep") -> SweepSpec:
    """Check a sweep mapping (a parsed sweep file) and build its ``SweepSpec``; ``name`` is used when
    the mapping has none.

    >>> spec = parse_sweep({"method": "random", "program": "p.py", "parameters": {"lr": {"min": 0.1, "max": 1.0}}})
    >>> spec.space.parameters[0].distribution
    'uniform'
    """
    where = f"sweep {source!r}"
    if not isinstance(config, dict):
        raise ValueError(f"{where} must be a mapping of wandb sweep keys, got {type(config).__name__}")
    unknown = sorted(set(config) - set(SUPPORTED_KEYS))
    if unknown:
        raise ValueError(f"{where}: unsupported key(s) {unknown}; the runner supports {list(SUPPORTED_KEYS)}")
    method = config.get("method")
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {list(METHODS)}, got {method!r}")
    for key in ("program", "name", "description", "project", "entity"):
        if key in config and not isinstance(config[key], str):
            raise ValueError(f"{where}: {key} must be text, got {config[key]!r}")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError(f"{where}: parameters must be a non-empty mapping of name -> {{values: [...]}} etc.")
    for pname in parameters:
        if not isinstance(pname, str) or not _NAME.fullmatch(pname):
            raise ValueError(f"{where}: parameter name {pname!r} must match {_NAME.pattern} (wandb's rule)")
    space = SearchSpace(tuple(Parameter.parse(k, v, f"{where}: parameters") for k, v in parameters.items()))
    if method == "grid":
        try:
            space.grid()  # errors name a parameter that cannot be a grid dimension
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    metric = _metric(where, config.get("metric"))
    if method == "bayes" and metric is None:
        raise ValueError(
            f"{where}: method bayes needs a metric: {{name: <summary.csv column>, goal: maximize}}"
        )
    hyperband = _hyperband(where, config.get("early_terminate"))
    if hyperband is not None and metric is None:
        raise ValueError(f"{where}: early_terminate needs a metric to compare runs by")
    run_cap = config.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise ValueError(f"{where}: run_cap must be an integer >= 1, got {run_cap!r}")
    command = _command(where, config.get("command", list(DEFAULT_COMMAND)))
    program = config.get("program")
    if program is None and "${program}" in command:
        raise ValueError(f"{where}: the command runs ${{program}}: give program (e.g. program: train.py)")
    fingerprint = json.dumps(
        {
            k: config.get(k)
            for k in ("program", "method", "metric", "parameters", "early_terminate", "command")
        },
        sort_keys=True,
        default=str,
    )
    spec = SweepSpec(
        name=config.get("name", name),
        method=method,
        space=space,
        command=command,
        program=program,
        metric=metric,
        early_terminate=hyperband,
        run_cap=run_cap,
        project=config.get("project"),
        entity=config.get("entity"),
        description=config.get("description"),
        source=source,
        fingerprint=fingerprint,
    )
    if spec.is_train_py:
        _check_train_parameters(spec)
    return spec


def _metric(where: str, metric: Any) -> Metric | None:
    if metric is None:
        return None
    supported = ("name", "goal", "target")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise ValueError(
            f"{where}: metric must be a mapping with a name, e.g. {{name: eval_top1, goal: maximize}}"
        )
    unknown = sorted(set(metric) - set(supported))
    if unknown:
        raise ValueError(
            f"{where}: metric key(s) {unknown} are not supported; the runner supports {list(supported)}"
        )
    goal = metric.get("goal", "minimize")
    if goal not in ("minimize", "maximize"):
        raise ValueError(f"{where}: metric.goal must be minimize or maximize, got {goal!r}")
    target = metric.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise ValueError(f"{where}: metric.target must be a number, got {target!r}")
    return Metric(metric["name"], goal, None if target is None else float(target))


def _whole(where: str, key: str, value: Any, minimum: int) -> int:
    """An integer setting (integral floats accepted, as wandb's schema types some as numbers)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != int(value)
        or value < minimum
    ):
        raise ValueError(f"{where}: early_terminate.{key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _hyperband(where: str, et: Any) -> Hyperband | None:
    if et is None:
        return None
    supported = ("type", "min_iter", "max_iter", "s", "eta", "strict")
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        raise ValueError(
            f"{where}: early_terminate must be {{type: hyperband, ...}} (wandb's only type), got {et!r}"
        )
    unknown = sorted(set(et) - set(supported))
    if unknown:
        raise ValueError(
            f"{where}: early_terminate key(s) {unknown} are not supported; supported: {list(supported)}"
        )
    if et.get("strict", True) is not True:
        raise ValueError(
            f"{where}: early_terminate.strict must be true (wandb's default; its sweeps package implements "
            "no other rule, so the runner follows that one)"
        )
    eta = _whole(where, "eta", et.get("eta", 3), 2)
    values = {k: _whole(where, k, et[k], 1) for k in ("min_iter", "max_iter", "s") if k in et}
    if set(values) == {"min_iter"}:
        return Hyperband(eta=eta, min_iter=values["min_iter"])
    if set(values) == {"max_iter", "s"}:
        hyperband = Hyperband(eta=eta, max_iter=values["max_iter"], s=values["s"])
        if values["max_iter"] < eta:
            raise ValueError(
                f"{where}: early_terminate: max_iter {values['max_iter']} / eta {eta} leaves no band "
                "below max_iter; raise max_iter or lower eta"
            )
        return hyperband
    raise ValueError(
        f"{where}: early_terminate needs min_iter, or max_iter and s (wandb's two forms), got {sorted(values)}"
    )


def _command(where: str, command: Any) -> tuple[str, ...]:
    if not isinstance(command, list) or not command:
        raise ValueError(f"{where}: command must be a non-empty list, e.g. {list(DEFAULT_COMMAND)}")
    items = []
    for item in command:
        if isinstance(item, (dict, list)) or item is None:
            raise ValueError(f"{where}: command item {item!r} must be text")
        item = str(item)
        whole = _MACRO.fullmatch(item)
        if whole and whole.group(1) not in MACROS:
            raise ValueError(
                f"{where}: command macro {item} is not one of {['${' + m + '}' for m in MACROS]}"
            )
        if not whole and "${" in _ENVVAR.sub("", item):
            raise ValueError(
                f"{where}: command item {item!r}: a macro must be a whole item (only ${{envvar:NAME}} may be inside one)"
            )
        items.append(item)
    return tuple(items)


def _check_train_parameters(spec: SweepSpec) -> None:
    """train.py: every parameter a TrainConfig key (either spelling), not one the runner sets, and
    every value it can take accepted (grid: all of them; a law: its ends and median)."""
    from timm_overparam.train.config import TrainConfig

    keys = TrainConfig.keys()
    for p in spec.space.parameters:
        key = p.name.replace("-", "_")
        if key in RUNNER_KEYS:
            raise ValueError(
                f"sweep {spec.source!r}: parameter {p.name!r} is set by the runner for every run "
                "(<out>/runs/trial-NNNN); remove it"
            )
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=3)
            hint = f"; did you mean {close}?" if close else f"; valid: {sorted(keys)}"
            raise ValueError(
                f"sweep {spec.source!r}: parameter {p.name!r} is not a train.py flag (a TrainConfig key, "
                f"written with - or _){hint}"
            )
        for value in _representatives(p):
            spec.check_config({p.name: value})


def _representatives(p: Parameter) -> list[Any]:
    """Values that stand for what a parameter can take: all of a discrete one, the ends and median
    of a law."""
    s = p.settings
    if p.distribution in ("constant", "categorical", "categorical_w_probabilities"):
        return [s["value"]] if "value" in s else list(s["values"])
    if p.distribution == "int_uniform":
        return [s["min"], s["max"]]
    if p.distribution == "uniform":
        return [float(s["min"]), float(s["max"])]
    if p.native:
        return list(p.log_bounds())
    return [p.value_at(u) for u in (0.0, 0.5, 1.0)]
