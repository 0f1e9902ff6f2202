"""Exact solve for a pretrained start: one factor chosen so that the composed weight is a given weight.

The first factor is solved when every hidden size is at least ``out`` (minimum-norm solution through
the transfer matrix from node 1 to the output, which has full row rank), the last one otherwise
(expanding layers with ``hidden='min'``: the map to node ``d-1`` has full column rank). Both are
least-squares solves through the Cholesky factor of a Gram matrix (``torch.cholesky_solve``).
Everything here runs in the dtype of the tensors given (``ExpandProject.solve`` uses float64).

>>> from torch import nn
>>> from timm_overparam.expand.compose import compose_weight, plan_chain
>>> from timm_overparam.expand.layout import layout_of
>>> from timm_overparam.expand.options import ExpandOptions
>>> plan = plan_chain(layout_of(nn.Linear(3, 3)), ExpandOptions(depth=2))
>>> factors = [torch.zeros(3, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)]
>>> target = torch.randn(3, 3, dtype=torch.float64)
>>> factors[solve_index(plan)] = solve_factor(plan, factors, None, target)
>>> torch.allclose(compose_weight(plan, factors), target)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from timm_overparam.expand.compose import Plan, dirac, node_maps, propagate


def solve_index(plan: Plan) -> int:
    """The factor that the solve sets: the first while every hidden size >= out, else the last.

    >>> from torch import nn
    >>> from timm_overparam.expand.compose import plan_chain
    >>> from timm_overparam.expand.layout import layout_of
    >>> from timm_overparam.expand.options import ExpandOptions
    >>> solve_index(plan_chain(layout_of(nn.Linear(4, 16)), ExpandOptions(depth=3)))
    2
    """
    return 0 if min(plan.sizes[1:]) >= plan.layout.out else plan.depth - 1


def check_solvable(plan: Plan, weight_shape: Sequence[int], gated: bool) -> None:
    """Raise ``ValueError`` when no factor can be solved to give a weight of this shape exactly.

    >>> from torch import nn
    >>> from timm_overparam.expand.compose import plan_chain
    >>> from timm_overparam.expand.layout import layout_of
    >>> from timm_overparam.expand.options import ExpandOptions
    >>> check_solvable(plan_chain(layout_of(nn.Linear(4, 4)), ExpandOptions()), (4, 4), gated=False)
    """
    if not plan.matrix_form:
        raise ValueError(
            "a chain with inner kernels > 1 cannot be solved for a given weight; "
            "use kernel_sizes=[k, 1, ..., 1] or init='original'"
        )
    lay, d = plan.layout, plan.depth
    if min(plan.sizes[1:]) < lay.out and plan.sizes[d - 1] < lay.groups * lay.fan_in and not gated:
        raise ValueError(
            f"hidden size {plan.sizes[1]} is too small to represent a {tuple(weight_shape)} "
            "weight exactly; use width >= 1 or init='original'"
        )


def solve_factor(
    plan: Plan, factors: Sequence[Tensor], scales: Sequence[Tensor] | None, target: Tensor
) -> Tensor:
    """The value of factor ``solve_index(plan)`` that makes the composed weight ``target``.

    ``scales`` are the folded batch-norm scales after each factor (None: no batch-norm).
    """
    lay = plan.layout
    target = target.reshape(*lay.experts, lay.groups, lay.out // lay.groups, -1)
    if solve_index(plan) == 0:
        solved = _solve_first(plan, factors, scales, target)
    else:
        solved = _solve_last(plan, factors, scales, target)
    return solved.reshape(factors[solve_index(plan)].shape)


def _solve_first(
    plan: Plan, factors: Sequence[Tensor], scales: Sequence[Tensor] | None, target: Tensor
) -> Tensor:
    lay, g, d = plan.layout, plan.layout.groups, plan.depth
    h1 = plan.sizes[1] // g
    w0 = factors[0]
    e = (1,) * len(lay.experts)
    eye = torch.eye(h1, dtype=w0.dtype, device=w0.device).expand(*e, g, h1, h1)
    # T: node-1 content -> output; C: what reaches the output without passing through W_1
    zeros = torch.zeros(*e, g, lay.in_per_group, h1, dtype=w0.dtype, device=w0.device)
    transfer = propagate(plan, factors, scales, [zeros, eye], 1, d)[-1]
    if plan.intervals:
        target = target - propagate(plan, factors, scales, _skip_only_start(plan, w0), 1, d)[-1]
    # minimum-norm solution of T X = target (T has full row rank): X = T^T (T T^T)^-1 target
    t_t = transfer.transpose(-2, -1)
    gram = torch.linalg.cholesky(transfer @ t_t)
    solved = t_t @ torch.cholesky_solve(target, gram)
    if scales is not None:
        solved = solved / scales[0].reshape(g, -1, 1)
    return solved


def _skip_only_start(plan: Plan, w0: Tensor) -> list[Tensor]:
    """Node maps 0 and 1 of the chain with W_1 = 0: only the residual identities carry the input."""
    lay = plan.layout
    node0 = dirac(lay, w0.dtype, w0.device)
    if 1 in plan.intervals:
        return [node0, node0]
    e = (1,) * len(lay.experts)
    shape = (*e, lay.groups, plan.sizes[1] // lay.groups, node0.shape[-1])
    return [node0, torch.zeros(shape, dtype=w0.dtype, device=w0.device)]


def _solve_last(
    plan: Plan, factors: Sequence[Tensor], scales: Sequence[Tensor] | None, target: Tensor
) -> Tensor:
    d, g = plan.depth, plan.layout.groups
    nodes = node_maps(plan, factors, scales, d - 1)
    rhs = target - sum((nodes[d - n] for n in plan.intervals if d % n == 0), torch.zeros_like(target))
    if scales is not None:
        rhs = rhs / scales[d - 1].reshape(g, -1, 1)
    # M (input -> node d-1) has full column rank: X = rhs (M^T M)^-1 M^T = (M (M^T M)^-1 rhs^T)^T
    m = nodes[d - 1]
    gram = torch.linalg.cholesky(m.transpose(-2, -1) @ m)
    return (m @ torch.cholesky_solve(rhs.transpose(-2, -1), gram)).transpose(-2, -1)
