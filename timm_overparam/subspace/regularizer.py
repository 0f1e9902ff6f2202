"""The subspace regulariser: squared cosine between two random vertices (the original's diversity term)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5
    from torch.distributed._tensor import DTensor

from timm_overparam.subspace.parametrization import SubspaceParam, _subspace_tensors


class _Sums(torch.autograd.Function):
    """``(a . b, |a|^2, |b|^2)`` over the concatenation of two lists of tensors, as a 3-vector.

    The gradient is written in closed form, ``d/da = g0 b + 2 g1 a`` and ``d/db = g0 a + 2 g2 b``:
    one tensor per vertex, where autograd through three dot products would build and add up six
    (2.5x faster on resnet18). New-style (``setup_context``, ``generate_vmap_rule``) so that it
    runs under ``torch.func`` transforms (vmap, grad, functional_call).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(k: int, *tensors: Tensor) -> Tensor:
        # one pair at a time (the second read hits the cache), added out of place: under vmap the
        # terms are batched, so an in-place add into a fresh unbatched tensor would fail
        sums = None
        for x, y in zip(tensors[:k], tensors[k:], strict=True):
            x, y = x.reshape(-1), y.reshape(-1)
            term = torch.stack((torch.dot(x, y), torch.dot(x, x), torch.dot(y, y)))
            sums = term if sums is None else sums + term
        return sums

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        k, *tensors = inputs
        ctx.k = k
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        tensors = ctx.saved_tensors
        a, b = tensors[: ctx.k], tensors[ctx.k :]
        g_dot, g_a, g_b = grad.unbind()
        g_a, g_b = 2 * g_a, 2 * g_b
        grad_a = [torch.addcmul(y * g_dot, x, g_a) for x, y in zip(a, b, strict=True)]
        grad_b = [torch.addcmul(x * g_dot, y, g_b) for x, y in zip(a, b, strict=True)]
        return None, *grad_a, *grad_b


def _pair(n: int, generator: torch.Generator | None) -> tuple[int, int]:
    """Two distinct random vertices; a line's pair is (0, 1) without a draw (``cos^2`` is symmetric)."""
    if n == 2:
        return 0, 1
    i, j = torch.randperm(n, generator=generator)[:2].tolist()
    return i, j


def _by_placement(params: list[SubspaceParam]) -> list[list[SubspaceParam]]:
    """``params`` split into those with plain vertices and those with sharded ones (DTensors:
    FSDP2 outside the forward of their group), each list non-empty."""
    sharded = [isinstance(p.vertices[0], DTensor) for p in params]
    parts = [[p for p, s in zip(params, sharded, strict=True) if s is flag] for flag in (False, True)]
    return [part for part in parts if part]


def subspace_regularizer(model: nn.Module, generator: torch.Generator | None = None) -> Tensor:
    """``cos^2`` between two distinct random vertices, over the concatenation of the regularized tensors.

    Draws two distinct vertices ``i, j`` (with ``generator``; a line, 2 vertices, always takes
    ``0, 1`` and draws nothing) and returns ``(sum v_i . v_j)^2 / (sum |v_i|^2 sum |v_j|^2)``, the sums
    running over every regularized subspace tensor, as the original (which added ``beta`` times it
    to the loss). Half precision vertices are summed in float32. The three sums have a closed-form
    gradient; the whole works under ``torch.func`` transforms (e.g. vmap of ``functional_call``
    over stacked copies of a model; the draw, for more than 2 vertices, needs ``randomness='same'``)
    and on FSDP2-sharded vertices (each process sums its shards; the sums are then all-reduced).

    Example: ``loss = loss + 1.0 * subspace_regularizer(model)``
    """
    params = [p for group in _subspace_tensors(model).values() for p in group if p.regularized]
    if not params:
        raise ValueError("no subspace tensor is regularized: see subspace(regularize=...)")
    i, j = _pair(params[0].n, generator)

    def vertex(p: SubspaceParam, k: int) -> Tensor:  # half precision sums in float32
        return p.vertices[k].to(torch.promote_types(p.vertices[k].dtype, torch.float32))

    sums = None
    for part in _by_placement(params):  # sharded (FSDP2) vertices reduce apart, then in full
        local = _Sums.apply(len(part), *(vertex(p, i) for p in part), *(vertex(p, j) for p in part))
        local = local.full_tensor() if isinstance(local, DTensor) else local
        sums = local if sums is None else sums + local
    dot, norm_i, norm_j = sums.unbind()
    return dot.square() / (norm_i * norm_j)
