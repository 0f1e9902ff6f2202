"""Derived timm entrypoints: ``<arch>_<variant>`` for every architecture in timm's registry.

Each derived entrypoint pops its family's kwargs (``op_*``, ``subspace_*``), calls the BASE
entrypoint with the rest (so ``pretrained=True`` and ``pretrained_cfg_overlay=dict(file=...)`` load
base weights) and converts the result. Derived pretrained cfgs are the base's, without hub ids.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import timm
from timm.models import _registry
from torch import nn

_DERIVED: set[str] = set()  # names this plugin registered, never used as a base


@dataclass(frozen=True)
class Family:
    """A conversion family as the registry sees it.

    ``variants`` maps a name suffix to the options it fixes (``{'op3': {'depth': 3}}``);
    ``convert(model, **options)`` converts in place; ``prefix`` marks its create_model kwargs.
    ``factory`` names the convert keyword, if any, that receives a zero-argument function making
    fresh base models (same kwargs, ``pretrained=False``), for families that draw from timm's init.
    """

    module: str
    prefix: str
    variants: Mapping[str, Mapping[str, Any]]
    convert: Callable[..., nn.Module]
    factory: str | None = None

    @property
    def options(self) -> list[str]:
        return [p for p in inspect.signature(self.convert).parameters if p not in ("model", self.factory)]


def _split_options(family: Family, derived: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``<prefix>*`` kwargs and check them against the family's options."""
    options = {}
    for key in [k for k in kwargs if k.startswith(family.prefix)]:
        name = key[len(family.prefix) :]
        if name not in family.options:
            valid = ", ".join(family.prefix + o for o in family.options)
            raise TypeError(f"{derived} got an unknown option {key}={kwargs[key]!r}; valid options: {valid}")
        options[name] = kwargs.pop(key)
    return options


def _entrypoint(
    family: Family, base: str, derived: str, fixed: Mapping[str, Any]
) -> Callable[..., nn.Module]:
    def create(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        options = {**fixed, **_split_options(family, derived, kwargs)}
        build = _registry.model_entrypoint(base)
        model = build(pretrained=pretrained, **kwargs)
        if family.factory is not None:
            options[family.factory] = lambda: build(pretrained=False, **kwargs)
        family.convert(model, **options)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": derived}
        return model

    create.__name__ = create.__qualname__ = derived
    create.__module__ = family.module
    create.__doc__ = f"timm's {base} converted by {family.module} with {dict(fixed)}."
    return create


def _derived_cfg(base: str) -> _registry.DefaultCfg | None:
    """The base's pretrained cfgs, stripped of everything that points at downloadable weights."""
    default = _registry._model_default_cfgs.get(base)
    if default is None:
        return None
    cfgs = {}
    for tag, cfg in default.cfgs.items():
        cfgs[tag] = copy.copy(cfg)  # dataclasses.replace costs 10x more, and this runs ~2000 times
        for key in ("hf_hub_id", "url", "file", "hf_hub_filename", "state_dict"):
            setattr(cfgs[tag], key, None)
    return _registry.DefaultCfg(tags=deque(default.tags), cfgs=cfgs)


def register_architecture(base: str, family: Family) -> list[str]:
    """Register the family's derived names for one base architecture; returns them.

    Use it for architectures registered with timm after ``import timm_overparam``; names already
    registered are left as they are.

    >>> from timm_overparam.models.op import FAMILY
    >>> register_architecture("resnet18", FAMILY)
    ['resnet18_op2', 'resnet18_op3', 'resnet18_op4']
    """
    if not _registry.is_model(base):
        raise ValueError(f"unknown timm architecture {base!r}; see timm.list_models() for the names")
    mod = sys.modules[family.module]
    cfg = _derived_cfg(base)
    names = []
    for suffix, fixed in family.variants.items():
        derived = f"{base}_{suffix}"
        names.append(derived)
        if derived in _DERIVED:  # registering twice is a no-op
            continue
        if cfg is not None:
            mod.default_cfgs[derived] = cfg
        _registry.register_model(_entrypoint(family, base, derived, fixed))
        _DERIVED.add(derived)
    return names


class _Names(list):
    """A module ``__all__`` with O(1) membership: timm's register_model checks it on every call."""

    def __init__(self) -> None:
        super().__init__()
        self._set: set[str] = set()

    def append(self, name: str) -> None:
        super().append(name)
        self._set.add(name)

    def __contains__(self, name: object) -> bool:
        return name in self._set


def register_family(family: Family) -> None:
    """Register derived entrypoints for every architecture currently in timm's registry."""
    sys.modules[family.module].__all__ = _Names()
    for base in timm.list_models():
        if base not in _DERIVED:
            register_architecture(base, family)
