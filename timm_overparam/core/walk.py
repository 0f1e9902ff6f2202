"""The conversion walk shared by both families: selection, report, refusal of stacked conversions, cfg names."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from timm_overparam.core.unparametrize import guard_rnns


@dataclass
class ConversionReport:
    """What a conversion did: converted modules or tensors (with details), skipped ones (with why).

    >>> r = ConversionReport("op", converted={"fc": "depth 3"}, skipped={"head": "excluded by 'head*'"})
    >>> r.summary()
    'op: 1 converted, 1 skipped'
    """

    family: str
    converted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    base: str | None = None
    # pretrained_cfg / timm _traits entries the conversion re-pointed, as they were (restored on export)
    cfg_before: dict[str, Any] = field(default_factory=dict, repr=False)
    traits_before: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        """One line: how many modules were converted and skipped."""
        return f"{self.family}: {len(self.converted)} converted, {len(self.skipped)} skipped"

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  + {n}: {d}" for n, d in self.converted.items()]
        lines += [f"  - {n}: {r}" for n, r in self.skipped.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Selection:
    """Which modules or tensors a conversion touches: name patterns (fnmatch) and a minimum size.

    >>> Selection(exclude=("head*",)).skip_reason("head.fc", numel=6)
    "excluded by pattern 'head*'"
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    min_params: int = 0

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
                raise TypeError(f"{name} must be a list of fnmatch patterns, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.min_params, int) or isinstance(self.min_params, bool) or self.min_params < 0:
            raise ValueError(f"min_params must be an integer >= 0, got {self.min_params!r}")

    def skip_reason(self, name: str, numel: int) -> str | None:
        """Why the module or tensor ``name`` (``numel`` parameters) is left alone, or None."""
        if not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return f"not matched by include {list(self.include)}"
        for p in self.exclude:
            if fnmatch.fnmatchcase(name, p):
                return f"excluded by pattern {p!r}"
        if numel < self.min_params:
            return f"{numel} parameters < min_params={self.min_params}"
        return None


@dataclass(frozen=True)
class Target:
    """What a conversion visits: a module, or one parameter ``tensor`` of it (``name`` ends with it).

    >>> Target("fc.bias", nn.Linear(2, 3), "bias").numel
    3
    """

    name: str
    module: nn.Module
    tensor: str | None = None

    @property
    def numel(self) -> int:
        """Parameters of the tensor, or of the module itself (not its children)."""
        if self.tensor is not None:
            return self.module._parameters[self.tensor].numel()
        return sum(p.numel() for p in self.module.parameters(recurse=False))


def _targets(model: nn.Module, tensors: bool) -> Iterator[Target]:
    """Every module (or every parameter of every module), parametrizations' insides left out."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in inside):
            continue
        if parametrize.is_parametrized(module):
            inside.append(f"{name}.parametrizations" if name else "parametrizations")
        if not tensors:
            yield Target(name, module)
            continue
        names = [t for t, p in module._parameters.items() if p is not None]
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations)
        for t in names:
            yield Target(f"{name}.{t}" if name else t, module, t)


def walk(
    model: nn.Module,
    family: str,
    candidate: Callable[[Target], str | bool],
    selection: Selection,
    apply: Callable[[Target], str],
    tensors: bool = False,
) -> ConversionReport:
    """Visit every module (or, with ``tensors``, every parameter) once; convert what is selected.

    ``candidate`` returns True, False (not this family's business) or a reason it cannot be
    converted; ``apply`` converts one target and returns a detail line (or raises ``Skip``).
    """
    _refuse_converted(model, family)
    report = ConversionReport(family, base=(getattr(model, "pretrained_cfg", None) or {}).get("architecture"))
    for target in list(_targets(model, tensors)):
        verdict = candidate(target)
        if verdict is False:
            continue
        if isinstance(verdict, str):
            reason = verdict
        elif parametrize.is_parametrized(target.module, target.tensor):
            reason = "already parametrized"
        else:
            reason = selection.skip_reason(target.name, target.numel)
        if reason is None:
            try:
                report.converted[target.name] = apply(target)
                continue
            except Skip as e:
                reason = str(e)
        report.skipped[target.name] = reason
    guard_rnns(model)
    _carry_no_weight_decay(model)
    _retarget_cfg(model, report)
    return report


def find_parametrized(model: nn.Module, kind: type) -> str | None:
    """The first ``module.tensor`` of ``model`` re-parameterized by a ``kind`` parametrization, or None."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor, plist in module.parametrizations.items():
                if isinstance(plist[0], kind):
                    return f"{name}.{tensor}" if name else tensor
    return None


def _refuse_converted(model: nn.Module, family: str) -> None:
    """Converting a converted model (twice, or both families) is refused: export it first."""
    from timm_overparam.expand.parametrization import ExpandProject
    from timm_overparam.subspace.parametrization import SubspaceParam

    where = find_parametrized(model, ExpandProject)
    if where is not None:
        raise ValueError(
            f"cannot convert to {family}: {where!r} is already an expand-and-project chain "
            "(converting twice or stacking families is not supported); convert "
            "timm_overparam.collapse(model), the stock model, instead"
        )
    where = find_parametrized(model, SubspaceParam)
    if where is not None:
        raise ValueError(
            f"cannot convert to {family}: {where!r} is already a subspace tensor "
            "(converting twice or stacking families is not supported); convert "
            "timm_overparam.extract_point(model, point), the stock model at a point, instead"
        )


# pretrained_cfg keys that name modules by their ``.weight``; True: only the tensors reading the input
_CFG_NAMES = {"first_conv": True, "classifier": False}


def slot_names(model: nn.Module, names: str | Sequence[str], inputs_only: bool) -> str | tuple[str, ...]:
    """``names`` of timm's ``first_conv``/``classifier`` with every converted module replaced by its tensors.

    A converted module keeps no ``<name>.weight`` in the state_dict: its tensors are the ``.weight``
    of the parametrization's slots, and timm's loader adapts (``inputs_only``: those that read the
    input) or resets those instead. Unconverted names are kept.

    >>> from timm_overparam import overparameterize
    >>> net = overparameterize(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), depth=2, include=["1"])
    >>> slot_names(net, ("0", "1"), inputs_only=False)
    ('0', '1.parametrizations.weight.0.factors.0', '1.parametrizations.weight.0.factors.1')
    """
    out: list[str] = []
    for name in (names,) if isinstance(names, str) else names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        chain = module.parametrizations.weight[0] if parametrize.is_parametrized(module, "weight") else None
        if callable(getattr(chain, "slots", None)):
            out += [f"{name}.parametrizations.weight.0.{slot}" for slot in chain.slots(inputs_only)]
        else:
            out.append(name)
    return out[0] if isinstance(names, str) and len(out) == 1 else tuple(out)


def _retarget_cfg(model: nn.Module, report: ConversionReport) -> None:
    """Make the model's ``first_conv``/``classifier`` (pretrained_cfg, timm's ``_traits``) name its tensors."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        for key, inputs_only in _CFG_NAMES.items():
            if cfg.get(key):
                mapped = slot_names(model, cfg[key], inputs_only)
                if mapped != cfg[key]:
                    report.cfg_before[key] = cfg[key]
        if report.cfg_before:
            new = {k: slot_names(model, v, _CFG_NAMES[k]) for k, v in report.cfg_before.items()}
            model.pretrained_cfg = model.default_cfg = {**cfg, **new}
    traits = getattr(model, "_traits", None)
    if isinstance(traits, dict) and traits.get("first_conv"):
        mapped = slot_names(model, traits["first_conv"], inputs_only=True)
        if mapped != traits["first_conv"]:
            report.traits_before["first_conv"] = traits["first_conv"]
            model._traits = {**traits, "first_conv": mapped}


@dataclass(frozen=True)
class NoWeightDecay:
    """A model's ``no_weight_decay()`` after conversion: the base names plus their parametrized names."""

    patterns: frozenset[str]

    def __call__(self) -> set[str]:
        return set(self.patterns)


def _carry_no_weight_decay(model: nn.Module) -> None:
    """Keep timm's optimizer factory from decaying what the base model exempts (``pos_embed`` -> vertices)."""
    base = getattr(model, "no_weight_decay", None)
    if not callable(base):
        return
    patterns = set(base())
    for pattern in list(patterns):
        head, _, last = pattern.rpartition(".")
        patterns.add(f"{head}.parametrizations.{last}.*" if head else f"parametrizations.{last}.*")
    model.no_weight_decay = NoWeightDecay(frozenset(patterns))


class Skip(Exception):
    """Raised by a family's ``apply`` when one module cannot be converted (with the reason)."""


def restore_base_cfg(model: nn.Module) -> None:
    """Drop the conversion's report and no_weight_decay; pretrained_cfg (and ``_traits``) name the base again.

    >>> from timm_overparam import overparameterize
    >>> net = overparameterize(nn.Sequential(nn.Linear(4, 2)))
    >>> restore_base_cfg(net); hasattr(net, "overparam_report")
    False
    """
    report = model.__dict__.pop("overparam_report", None)
    model.__dict__.pop("no_weight_decay", None)
    if report is None:
        return
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        restored = {**cfg, **report.cfg_before}
        if report.base:
            restored["architecture"] = report.base
        model.pretrained_cfg = model.default_cfg = restored
    traits = getattr(model, "_traits", None)
    if isinstance(traits, dict) and report.traits_before:
        model._traits = {**traits, **report.traits_before}
