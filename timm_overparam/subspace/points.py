"""Points of a subspace: move to one, draw one, train at sampled ones, extract one as the stock model.

A point is a number in [0, 1] for lines and curves, barycentric coordinates for simplexes, or a
``{module name: point}`` dict (layerwise).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from timm_overparam.core.unparametrize import unparametrize
from timm_overparam.core.walk import restore_base_cfg
from timm_overparam.subspace.bn import BNStats, current_bn_stats, load_bn_stats
from timm_overparam.subspace.parametrization import (
    SubspaceConfig,
    SubspaceParam,
    _config,
    _subspace_tensors,
    coefficients,
)

# a number for lines and curves, barycentric coordinates for simplexes; or one per module name
Point = float | Sequence[float] | Mapping[str, float | Sequence[float]]


def set_point(model: nn.Module, point: Point) -> None:
    """Move every subspace tensor to ``point``, or the named modules each to its own (``{name: point}``).

    >>> from timm_overparam.subspace import subspace
    >>> set_point(subspace(nn.Linear(2, 2), init="copy"), 0.25)
    """
    groups = _subspace_tensors(model)
    points = point if isinstance(point, Mapping) else dict.fromkeys(groups, point)
    unknown = [name for name in points if name not in groups]
    if unknown:
        raise ValueError(f"no subspace tensors in module(s) {unknown}; modules: {list(groups)}")
    done: dict[tuple[str, int, int], Tensor] = {}  # one validation per point object (shared: one)
    for name, p in points.items():
        for param in groups[name]:
            key = (param.shape, param.n, id(p))
            if key not in done:
                done[key] = torch.tensor(coefficients(param.shape, param.n, p), dtype=torch.float64)
            param.coefficients.copy_(done[key])


@contextmanager
def at_point(model: nn.Module, point: Point, bn_stats: BNStats | None = None) -> Iterator[nn.Module]:
    """Within the block the model sits at ``point`` (and uses ``bn_stats``); both are restored after.

    Example: ``with at_point(model, 0.5): y = model(x)``
    """
    params = [p for group in _subspace_tensors(model).values() for p in group]
    before = [p.coefficients.clone() for p in params]
    stats_before = current_bn_stats(model) if bn_stats is not None else None
    try:
        set_point(model, point)
        if bn_stats is not None:
            load_bn_stats(model, bn_stats)
        yield model
    finally:
        for p, c in zip(params, before, strict=True):
            p.coefficients.copy_(c)
        if stats_before is not None:
            load_bn_stats(model, stats_before)


def _draw(config: SubspaceConfig, generator: torch.Generator | None) -> float | tuple[float, ...]:
    """A ~ U(0, 1) for lines and curves; Dirichlet(1, ..., 1) (normalised exponentials) for simplexes."""
    if config.shape != "simplex":
        return torch.rand((), generator=generator, dtype=torch.float64).item()
    e = torch.empty(config.n, dtype=torch.float64).exponential_(generator=generator)
    return tuple((e / e.sum()).tolist())


def sample_point(model: nn.Module, generator: torch.Generator | None = None) -> Point:
    """Draw a point (one per module when the model is layerwise), move there and return it.

    >>> from timm_overparam.subspace import subspace
    >>> round(sample_point(subspace(nn.Linear(2, 2)), torch.Generator().manual_seed(0)), 3)
    0.97
    """
    config = _config(model)
    if config.layerwise:
        point: Point = {name: _draw(config, generator) for name in _subspace_tensors(model)}
    else:
        point = _draw(config, generator)
    set_point(model, point)
    return point


def sampled_loss(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean over ``num_samples`` chunks of the batch of the chunk's loss, each at a freshly sampled point.

    One backward of the result trains every chunk's point (as the original's ``num_samples``).

    Example: ``loss = sampled_loss(model, F.cross_entropy, x, y, num_samples=2)``
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if num_samples > len(inputs):
        raise ValueError(f"num_samples={num_samples} is more than the batch size {len(inputs)}: lower it")
    losses = []
    for x, y in zip(inputs.tensor_split(num_samples), targets.tensor_split(num_samples), strict=True):
        sample_point(model, generator)
        losses.append(criterion(model(x), y))
    return torch.stack(losses).mean()


def extract_point(model: nn.Module, point: Point, bn_stats: BNStats | None = None) -> nn.Module:
    """A deep copy of ``model`` as the stock model at ``point`` (with ``bn_stats`` if given).

    Its state_dict keys are the base architecture's (strict-loadable); pretrained_cfg names the base.

    >>> from timm_overparam.subspace import subspace
    >>> list(extract_point(subspace(nn.Linear(2, 2)), 0.5).state_dict())
    ['weight', 'bias']
    """
    plain = copy.deepcopy(model)
    set_point(plain, point)
    if bn_stats is not None:
        load_bn_stats(plain, bn_stats)
    for module in list(plain.modules()):
        names = [
            name
            for name, p in getattr(module, "parametrizations", {}).items()
            if isinstance(p[0], SubspaceParam)
        ]
        if names:
            requires_grad = module.parametrizations[names[0]][0].vertices[0].requires_grad
            unparametrize(module, names, requires_grad)
    plain.__dict__.pop("subspace_config", None)
    restore_base_cfg(plain)
    return plain
