"""Derived timm entrypoints: ``<arch>_<variant>`` for every architecture in timm's registry.

Each derived entrypoint pops its family's kwargs (``op_*``, ``subspace_*``), calls the BASE
entrypoint with the rest (so ``pretrained=True`` and ``pretrained_cfg_overlay=dict(file=...)`` load
base weights, with timm's classifier reset and input-conv adaptation) and converts the result. A
pretrained source that is a checkpoint of the derived model itself (``save_weights(model, file,
parametrized=True)``) is loaded after the conversion, by timm's loader with the derived cfg.
Derived pretrained cfgs are the base's, without hub ids, with ``first_conv``/``classifier`` naming
the derived tensors (a converted module has no ``<name>.weight`` in the state_dict).

Architectures registered with timm after ``import timm_overparam`` get their derived names from
one call: ``register_new_models()`` (all new ones), ``register_architecture(name)`` (one), or by
registering them with this module's ``register_model`` decorator instead of timm's. timm's
registry has no hook for doing it automatically, and this plugin does not patch timm.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import timm
from safetensors import safe_open
from timm.models import _registry, load_pretrained
from timm.models._builder import resolve_pretrained_cfg
from torch import nn

_DERIVED: set[str] = set()  # names this plugin registered, never used as a base
_FAMILIES: list[Family] = []  # every family registered so far (``register_family``)
_BASES: set[str] = set()  # architectures every registered family has derived (``register_new_models``)


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
    # (variant options, inputs_only) -> names of a converted weight's tensors, relative to its
    # parametrization: what registered cfgs' first_conv/classifier point at
    slots: Callable[[Mapping[str, Any], bool], tuple[str, ...]] | None = None

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
        own = pretrained and _derived_source(base, kwargs)  # a checkpoint of the derived model
        model = build(pretrained=pretrained and not own, **kwargs)
        if family.factory is not None:
            options[family.factory] = lambda: build(pretrained=False, **kwargs)
        family.convert(model, **options)
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": derived}
        if own:
            _load_derived(model, kwargs)
        return model

    create.__name__ = create.__qualname__ = derived
    create.__module__ = family.module
    create.__doc__ = f"timm's {base} converted by {family.module} with {dict(fixed)}."
    return create


def _is_derived_state(keys: Iterable[str]) -> bool:
    return any(k.startswith("parametrizations.") or ".parametrizations." in k for k in keys)


def _derived_source(base: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the pretrained source given to create_model (``file`` or ``state_dict``) holds derived tensors."""
    try:
        cfg = resolve_pretrained_cfg(
            base, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")
        ).to_dict()
    except Exception:  # no cfg to resolve: the base entrypoint reports it
        return False
    if cfg.get("state_dict"):
        return _is_derived_state(cfg["state_dict"])
    file = cfg.get("file")
    if not file or cfg.get("source") in ("hf-hub", "local-dir"):
        return False
    try:
        if str(file).endswith(".safetensors"):
            with safe_open(file, framework="pt") as f:
                return _is_derived_state(f.keys())
        return _is_derived_state(timm.models.load_state_dict(file))
    except Exception:  # unreadable: the base entrypoint's loader reports it
        return False


def _load_derived(model: nn.Module, kwargs: Mapping[str, Any]) -> None:
    """Load a derived checkpoint with timm's loader: the derived cfg names the tensors to adapt and reset.

    timm adapts the input tensors (``first_conv``) to ``in_chans`` and, for another ``num_classes``,
    drops the classifier's ``.weight`` tensors; the rest of each classifier module (its own bias,
    factor biases, bias vertices) is dropped with them here.
    """
    cfg = {**model.pretrained_cfg, "label_offset": 0}  # a derived checkpoint has the model's classes
    num_classes = getattr(model, "num_classes", kwargs.get("num_classes", 1000))
    heads = model.overparam_report.cfg_before.get("classifier", cfg.get("classifier")) or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    reset = bool(heads) and num_classes != cfg.get("num_classes")
    prefixes = tuple(f"{h}." for h in heads)

    def drop_heads(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        return {k: v for k, v in state.items() if not (reset and k.startswith(prefixes))}

    in_chans = kwargs.get("in_chans", 3)
    try:
        load_pretrained(model, cfg, num_classes, in_chans, filter_fn=drop_heads)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise ValueError(
            f"the derived checkpoint {cfg.get('file') or 'state_dict'} does not fit "
            f"{cfg.get('architecture')} with in_chans={in_chans}, num_classes={num_classes} and these "
            "options: an expanded input layer's hidden size depends on its input channels, so only "
            "subspace checkpoints adapt to another in_chans; create the model with the checkpoint's "
            "in_chans and options, or adapt the base model (collapse, save_weights, then load that "
            f"file as the pretrained base): {str(e).splitlines()[-1].strip()}"
        ) from e


def _slot_names(names: Any, slots: tuple[str, ...]) -> Any:
    return _cached_slot_names(tuple(names) if isinstance(names, list) else names, slots)


@functools.cache  # ~25,000 calls at import over a few hundred distinct names
def _cached_slot_names(names: Any, slots: tuple[str, ...]) -> Any:
    if not names:
        return names
    out = tuple(
        f"{n}.parametrizations.weight.0.{s}"
        for n in ((names,) if isinstance(names, str) else names)
        for s in slots
    )
    return out[0] if isinstance(names, str) and len(out) == 1 else out


_SLOTS: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[Any, Any]] = {}


def _slots(family: Family, fixed: Mapping[str, Any]) -> tuple[Any, Any]:
    """``family.slots`` for inputs only and for every tensor, once per variant (not once per base)."""
    if family.slots is None:
        return None, None
    key = (family.module, tuple(sorted(fixed.items())))
    if key not in _SLOTS:
        _SLOTS[key] = (family.slots(fixed, True), family.slots(fixed, False))
    return _SLOTS[key]


def _derived_cfg(base: str, family: Family, fixed: Mapping[str, Any]) -> _registry.DefaultCfg | None:
    """The base's pretrained cfgs, stripped of everything that points at downloadable weights.

    ``first_conv``/``classifier`` name the tensors that replace those modules' weights under the
    variant's default conversion (the model's own cfg names what its conversion actually made).
    """
    default = _registry._model_default_cfgs.get(base)
    if default is None:
        return None
    inputs, every = _slots(family, fixed)
    cfgs = {}
    for tag, cfg in default.cfgs.items():
        # a shallow copy by hand: copy.copy (via __reduce_ex__) costs 4x more, and this runs 12,312 times
        cfgs[tag] = new = object.__new__(type(cfg))
        new.__dict__.update(cfg.__dict__)
        for key in ("hf_hub_id", "url", "file", "hf_hub_filename", "state_dict"):
            setattr(new, key, None)
        if inputs is not None:
            new.first_conv = _slot_names(cfg.first_conv, inputs)
            new.classifier = _slot_names(cfg.classifier, every)
    return _registry.DefaultCfg(tags=deque(default.tags), cfgs=cfgs)


def _register(base: str, family: Family, new: list[str] | None = None) -> list[str]:
    """Register one family's derived names for ``base`` (a known architecture); returns them.

    The names registered by this call (not before) are appended to ``new``.
    """
    mod = sys.modules[family.module]
    names = []
    for suffix, fixed in family.variants.items():
        derived = f"{base}_{suffix}"
        names.append(derived)
        if derived in _DERIVED:  # registering twice is a no-op
            continue
        cfg = _derived_cfg(base, family, fixed)
        if cfg is not None:
            mod.default_cfgs[derived] = cfg
        _registry.register_model(_entrypoint(family, base, derived, fixed))
        _DERIVED.add(derived)
        if new is not None:
            new.append(derived)
    return names


def register_architecture(base: str, family: Family | None = None) -> list[str]:
    """Register the derived names of one base architecture (every family's, or ``family``'s); returns them.

    For an architecture registered with timm after ``import timm_overparam`` (timm has no hook to
    do it automatically); names already registered are left as they are. See also
    ``register_new_models``.

    >>> register_architecture("resnet18")
    ['resnet18_op2', 'resnet18_op3', 'resnet18_op4', 'resnet18_line', 'resnet18_curve', 'resnet18_simplex']
    >>> from timm_overparam.models.op import FAMILY
    >>> register_architecture("resnet18", FAMILY)
    ['resnet18_op2', 'resnet18_op3', 'resnet18_op4']
    """
    if family is not None and not isinstance(family, Family):
        raise TypeError(
            f"family must be a timm_overparam.registry.Family (e.g. timm_overparam.models.op.FAMILY) "
            f"or None for every family, got {family!r}"
        )
    if not _registry.is_model(base):
        raise ValueError(f"unknown timm architecture {base!r}; see timm.list_models() for the names")
    if base in _DERIVED:
        raise ValueError(f"{base!r} is a name this plugin derived; register its base architecture instead")
    return [name for fam in (_FAMILIES if family is None else [family]) for name in _register(base, fam)]


def register_new_models() -> list[str]:
    """Give every timm architecture registered since ``import timm_overparam`` its derived names.

    One call after registering your own models with ``timm.models.register_model`` (the project's
    own model modules call it when they register theirs); returns the new derived names.

    Example: ``@register_model`` on ``def my_net(pretrained=False, **kwargs)``, then
    ``timm_overparam.register_new_models()`` makes ``my_net_op3``, ``my_net_line``, ...
    """
    new: list[str] = []
    for base in timm.list_models():
        if base not in _DERIVED and base not in _BASES:
            for family in _FAMILIES:
                _register(base, family, new)
            _BASES.add(base)
    return new


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """timm's ``register_model`` decorator that also registers the derived names of every family.

    For models of this project and of its users: whatever the import order, the architecture gets
    its ``_op*``/``_line``/... names (registered before the families, they derive it themselves).

    Example: ``@timm_overparam.registry.register_model`` over ``def my_net(pretrained=False, **kwargs)``
    """
    fn = _registry.register_model(fn)
    register_architecture(fn.__name__)
    return fn


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
    _FAMILIES.append(family)
    _BASES.clear()  # the new family has not derived the architectures registered before it
    for base in timm.list_models():
        if base not in _DERIVED:
            _register(base, family)
