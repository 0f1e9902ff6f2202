"""Expand-and-project conversion of any model: ``overparameterize``, ``collapse``, ``is_expanded``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import nn
from torch.nn.utils import parametrize

from timm_overparam.core.walk import Selection, Skip, Target, find_parametrized, restore_base_cfg, walk
from timm_overparam.expand.layout import layout_of
from timm_overparam.expand.options import ExpandOptions
from timm_overparam.expand.parametrization import ExpandProject, collapse_module, expand_module

_OP_TYPES = ("conv", "linear")


def _op_candidate(types: Sequence[str]) -> Callable[[Target], str | bool]:
    def candidate(target: Target) -> str | bool:
        module = target.module
        if isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
            return "transposed convolutions are not expanded" if "conv" in types else False
        if isinstance(getattr(module, "weight", None), nn.parameter.UninitializedParameter):
            return "lazy module not initialised: run one forward pass before converting"
        layout = layout_of(module)
        if layout is None:
            return False
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        if kind not in types:
            return False
        if not isinstance(module.weight, nn.Parameter):
            return "weight is not an nn.Parameter"
        return True

    return candidate


def _op_apply(options: ExpandOptions) -> Callable[[Target], str]:
    def apply(target: Target) -> str:
        module = target.module
        try:
            chain = expand_module(module, options)
        except ValueError as e:
            raise Skip(str(e)) from e
        parts = [f"depth {options.depth}", f"hidden {chain.hidden}"]
        if options.residual:
            parts.append(f"residual {list(chain.intervals)}" if chain.intervals else "no residual (shapes)")
        if options.batch_norm:
            if chain.norms is not None:
                parts.append("batch_norm")
            elif not chain.chain_capable:
                parts.append(f"no batch_norm ({type(module).__name__} has its own forward)")
            else:
                parts.append("no batch_norm (module has no bias to fold the shift into)")
        parts.append("chain" if chain.chain_capable else "composed")
        return ", ".join(parts)

    return apply


def overparameterize(
    model: nn.Module,
    depth: int = 2,
    width: float = 1.0,
    *,
    hidden: str = "min",
    batch_norm: bool = False,
    residual: bool = False,
    residual_intervals: int | Sequence[int] = 2,
    learnable_residual: bool = False,
    factor_bias: bool = False,
    init: str = "preserve",
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    types: Sequence[str] = _OP_TYPES,
    min_params: int = 0,
) -> nn.Module:
    """Expand every selected conv/linear weight of ``model`` into a chain of factors, in place.

    With ``init='preserve'`` (default) the model computes exactly what it computed before, so a
    pretrained model can be fine-tuned; ``init='original'`` draws the factors as the original
    paper did. The report is in ``model.overparam_report``.

    >>> net = overparameterize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), depth=3)
    >>> net.overparam_report.summary()
    'op: 2 converted, 0 skipped'
    """
    given = types
    types = (types,) if isinstance(types, str) else tuple(types) if isinstance(types, (list, tuple)) else ()
    if not types or any(t not in _OP_TYPES for t in types):
        raise ValueError(f"types must be a subset of {list(_OP_TYPES)}, got {given!r}")
    options = ExpandOptions(
        depth=depth,
        width=width,
        hidden=hidden,
        batch_norm=batch_norm,
        residual=residual,
        residual_intervals=residual_intervals,
        learnable_residual=learnable_residual,
        factor_bias=factor_bias,
        init=init,
    )
    selection = Selection(include, exclude, min_params)
    model.overparam_report = walk(model, "op", _op_candidate(types), selection, _op_apply(options))
    return model


def is_expanded(module: nn.Module) -> bool:
    """True when ``module.weight`` is an expand-and-project chain."""
    return parametrize.is_parametrized(module, "weight") and isinstance(
        module.parametrizations.weight[0], ExpandProject
    )


def collapse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The stock model: every chain replaced by its effective weight (a copy unless ``inplace``).

    The state_dict keys are those of the unconverted architecture, so it loads with strict=True.

    >>> net = overparameterize(nn.Sequential(nn.Linear(4, 2)), depth=3)
    >>> sorted(collapse(net).state_dict())
    ['0.bias', '0.weight']
    """
    from timm_overparam.subspace.parametrization import SubspaceParam

    where = find_parametrized(model, SubspaceParam)
    if where is not None:
        raise ValueError(
            f"{where!r} is a subspace tensor: collapse() exports expand-and-project models; the stock "
            "model of a subspace model is a point of it: use timm_overparam.extract_point(model, point)"
        )
    if not inplace:
        model = copy.deepcopy(model)
    for module in list(model.modules()):
        if is_expanded(module):
            collapse_module(module)
    restore_base_cfg(model)
    return model
