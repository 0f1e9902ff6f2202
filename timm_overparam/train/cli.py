"""Command lines of train.py and validate.py: flags built from the run configs, YAML ``-c`` files.

Every flag is a key of ``TrainConfig``/``ValidateConfig`` (``train/config.py``) with dashes:
timm's names and meanings (``--model --epochs --lr --opt --sched -b --model-kwargs ...``) plus the
families' ``--subspace-beta --layerwise --num-samples --eval-points --eval-ensembles
--bn-recal-batches`` and ``--callback module:Class``. ``-c config.yaml`` sets defaults from a YAML
file (keys are flag names with underscores); an unknown key or a bad value is an error that names
it. This is the only module that imports argparse: ``parse_args`` returns the config object that
``train``/``validate`` take.
"""

from __future__ import annotations

import argparse
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


def _add_flag(group: Any, key: str, f: Any) -> None:
    """One argparse flag for the config field ``f`` (its metadata says how)."""
    meta = f.metadata
    default = f.default_factory() if callable(f.default_factory) else f.default
    kwargs: dict[str, Any] = dict(dest=key, default=default, help=meta["help"])
    flags = meta["flags"] or (flag_name(key),)
    kind = meta["kind"]
    if kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction if meta["negatable"] else "store_true"
    elif kind == "kwargs":
        kwargs |= dict(nargs="*", action=KeyValues)
    elif kind == "callbacks":
        kwargs |= dict(action="append", metavar=meta["metavar"])
    else:
        kwargs["type"] = {"int": int, "float": float, "str": None}[kind]
        for name in ("nargs", "choices", "metavar"):
            if meta[name] is not None:
                kwargs[name] = meta[name]
    group.add_argument(*flags, **kwargs)


def config_parser(config_class: type) -> argparse.ArgumentParser:
    """The parser of a config class: one flag per key, grouped like the config.

    >>> config_parser(TrainConfig).parse_args(["--epochs", "2"]).epochs
    2
    """
    parser = argparse.ArgumentParser(
        description=_DESCRIPTIONS.get(config_class), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
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
