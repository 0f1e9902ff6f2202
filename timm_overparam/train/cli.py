"""Command lines of train.py and validate.py: flags built from the run configs, YAML ``-c`` files.

Every flag is a key of ``TrainConfig``/``ValidateConfig`` (``train/config.py``) with dashes:
timm's names and meanings (``--model --epochs --lr --opt --sched -b --model-kwargs ...``) plus the
families' ``--subspace-beta --layerwise --num-samples --eval-points --eval-ensembles
--bn-recal-batches`` and ``--callback module:Class``. ``-c config.yaml`` sets defaults from a YAML
file (keys are flag names with underscores); an unknown key or a bad value is an error that names
it. This is the only module that imports argparse: ``parse_args`` returns the config object that
``train``/``validate`` take.

What a wandb sweep agent writes is read as well: every long flag also takes its underscore spelling
(``--batch_size=64``, wandb parameter names are often the config keys), and a boolean flag takes an
explicit value (``--amp=True``, ``--amp false``; ``--amp`` alone still means true, ``--no-x`` stays).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from timm.utils import ParseKwargs

from timm_overparam.train.config import (
    GROUP_TITLES,
    TrainConfig,
    ValidateConfig,
    flag_name,
)

__all__ = [
    "BoolFlag",
    "FlagParser",
    "KeyValues",
    "parse_args",
    "read_config",
    "train_parser",
    "validate_parser",
]

_DESCRIPTIONS = {
    TrainConfig: "Train an over-parameterized (op) or subspace timm model with accelerate.",
    ValidateConfig: "Evaluate a timm, op or subspace model (collapsed, or at chosen subspace points).",
}


class KeyValues(ParseKwargs):
    """timm's ``k=v`` action (values read as Python literals), with an error naming a pair without ``=``."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        for value in values:
            if value and "=" not in value:
                parser.error(f"{option}: {value!r} is not key=value (e.g. {value}=3)")
        super().__call__(parser, namespace, values, option)


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


class BoolFlag(argparse.Action):
    """A boolean flag that also takes a value: ``--amp`` and ``--amp=True`` set it, ``--amp=false``
    clears it, and with ``negatable=True`` so does ``--no-amp``. Values: true/false, yes/no, 1/0.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--amp", action=BoolFlag, negatable=True, default=False)
    >>> [p.parse_args(a).amp for a in (["--amp"], ["--amp=False"], ["--amp", "yes"], ["--no-amp"])]
    [True, False, True, False]
    """

    def __init__(
        self, option_strings: Sequence[str], dest: str, negatable: bool = False, **kwargs: Any
    ) -> None:
        self.negatives = [f"--no-{o[2:]}" for o in option_strings if o.startswith("--")] if negatable else []
        super().__init__([*option_strings, *self.negatives], dest, nargs="?", metavar="BOOL", **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        if option in self.negatives:
            if values is not None:
                parser.error(f"{option} takes no value (got {values!r}): write {option} alone")
            setattr(namespace, self.dest, False)
        elif values is None:
            setattr(namespace, self.dest, True)
        elif values.lower() in _TRUE + _FALSE:
            setattr(namespace, self.dest, values.lower() in _TRUE)
        else:
            parser.error(f"{option}: {values!r} is not a boolean; use true or false (or yes/no, 1/0)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help lines of boolean flags as ``--amp[=BOOL]`` (and a bare ``--no-amp``)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):
            return ", ".join(o if o in action.negatives else f"{o}[=BOOL]" for o in action.option_strings)
        return super()._format_action_invocation(action)


class FlagParser(argparse.ArgumentParser):
    """argparse with the underscore spelling of every long flag: ``--batch_size`` is ``--batch-size``.

    >>> p = FlagParser()
    >>> _ = p.add_argument("--batch-size", type=int)
    >>> p.parse_args(["--batch_size=8"]).batch_size
    8
    """

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_known_args(self._dashed(sys.argv[1:] if args is None else args), namespace)

    def _dashed(self, args: Sequence[str]) -> list[str]:
        out = list(args)
        for i, arg in enumerate(out):
            if arg == "--":
                break
            name, eq, value = arg.partition("=")
            dashed = name.replace("_", "-")
            if name.startswith("--") and dashed != name and dashed in self._option_string_actions:
                out[i] = dashed + eq + value
        return out


def _add_flag(group: Any, key: str, f: Any) -> None:
    """One argparse flag for the config field ``f`` (its metadata says how)."""
    meta = f.metadata
    default = f.default_factory() if callable(f.default_factory) else f.default
    kwargs: dict[str, Any] = dict(dest=key, default=default, help=meta["help"])
    flags = meta["flags"] or (flag_name(key),)
    kind = meta["kind"]
    if kind == "bool":
        kwargs |= dict(action=BoolFlag, negatable=meta["negatable"])
    elif kind == "kwargs":
        kwargs |= dict(nargs="*", action=KeyValues)
    elif kind == "callbacks":
        kwargs |= dict(action="append", metavar=meta["metavar"])
    else:
        kwargs["type"] = {"int": int, "float": float, "str": None}[kind]
        for name in ("nargs", "choices", "metavar", "const"):
            if meta.get(name) is not None:
                kwargs[name] = meta[name]
    group.add_argument(*flags, **kwargs)


def config_parser(config_class: type) -> argparse.ArgumentParser:
    """The parser of a config class: one flag per key, grouped like the config.

    >>> config_parser(TrainConfig).parse_args(["--epochs", "2"]).epochs
    2
    """
    parser = FlagParser(description=_DESCRIPTIONS.get(config_class), formatter_class=_Formatter)
    parser.set_defaults(_config_class=config_class)
    groups: dict[str | None, Any] = {None: parser}
    for key, (group, f) in config_class.keys().items():
        if group not in groups:
            groups[group] = parser.add_argument_group(GROUP_TITLES.get(group, group))
        _add_flag(groups[group], key, f)
    return parser


def train_parser() -> argparse.ArgumentParser:
    """The train.py parser (flags of ``TrainConfig``).

    >>> train_parser().parse_args(["--model", "resnet18_op3", "--epochs", "2"]).epochs
    2
    """
    return config_parser(TrainConfig)


def validate_parser() -> argparse.ArgumentParser:
    """The validate.py parser (flags of ``ValidateConfig``).

    >>> validate_parser().parse_args(["--model", "resnet18", "--results-format", "csv"]).results_format
    'csv'
    """
    return config_parser(ValidateConfig)


def _config_class(parser: argparse.ArgumentParser) -> Any:
    return parser.get_default("_config_class") or TrainConfig


def read_config(file: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The flag values of a YAML ``-c`` file, checked against the parser's config (names, types, choices).

    Example: ``read_config("configs/cifar10_resnet18_op3.yaml", train_parser())["model"]``
    """
    values = _config_class(parser).read_yaml(file)
    values.pop("config", None)
    return values


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` with ``parser`` after applying ``-c`` YAML defaults; returns the checked config
    (``TrainConfig`` for ``train_parser()``, ``ValidateConfig`` for ``validate_parser()``).

    >>> parse_args(train_parser(), []).dataset
    'sklearn/digits'
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default="")
    known, rest = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(known.config, parser))
    values = vars(parser.parse_args(rest))
    config_class = values.pop("_config_class", None) or TrainConfig
    values["config"] = known.config
    return config_class.from_dict(values, flag_name)
