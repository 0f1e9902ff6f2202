"""Composition: the effective weight and bias of a chain of factors, as pure functions of its tensors.

A ``Plan`` is the fixed structure of one chain (node sizes, kernels, residual intervals and the
planned multiplication order), built once at expansion by ``plan_chain``. Node ``x_0`` is the input
and ``x_i = BN_i(W_i x_{i-1} + b_i) + sum_{n | i} x_{i-n}``; the weight is the linear map
``x_0 -> x_d`` with each batch-norm folded as its eval-mode affine map (``bn_affine``).

>>> from torch import nn
>>> from timm_overparam.expand.layout import layout_of
>>> from timm_overparam.expand.options import ExpandOptions
>>> plan = plan_chain(layout_of(nn.Linear(4, 6)), ExpandOptions(depth=3))
>>> plan.sizes, tuple(compose_weight(plan, [torch.ones(4, 4), torch.ones(4, 4), torch.ones(6, 4)]).shape)
((4, 4, 4, 6), (6, 4))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timm_overparam.expand.layout import Layout
from timm_overparam.expand.options import ExpandOptions

CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
Affine = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Plan:
    """The fixed structure of one chain: what ``plan_chain`` derives from the layout and options."""

    layout: Layout
    hidden: int  # hidden node size (sizes[1..d-1] at depth > 1)
    sizes: tuple[int, ...]  # node sizes x_0 (the input) .. x_d (the output)
    kernel_sizes: tuple[tuple[int, ...], ...]
    intervals: tuple[int, ...]  # the residual intervals whose links join nodes of equal size
    product_cost: float  # multiply-adds of W_d ... W_1 in the planned order (all groups, experts)
    split: tuple[tuple[int, ...], ...]  # split[i][j]: W_j..W_i = (W_j..W_{s+1}) (W_s..W_i)

    @property
    def depth(self) -> int:
        """Number of factors."""
        return len(self.kernel_sizes)

    @property
    def matrix_form(self) -> bool:
        """True when every factor after the first is 1x1: the chain is a product of matrices."""
        return all(math.prod(k) == 1 for k in self.kernel_sizes[1:])

    @property
    def stride_factor(self) -> int:
        """The factor that carries the stride: the first when the rest are 1x1, else the last."""
        return 0 if self.matrix_form else self.depth - 1


def hidden_size(layout: Layout, options: ExpandOptions) -> int:
    """Hidden node size: ``width`` times ``out`` (``hidden='out'``) or ``min(out, in*k*k)``, per group.

    >>> from timm_overparam.expand.layout import layout_of
    >>> hidden_size(layout_of(nn.Linear(4, 16)), ExpandOptions(width=2))
    8
    """
    side = layout.out if options.hidden == "out" else min(layout.out, layout.groups * layout.fan_in)
    g = layout.groups
    return max(g, math.ceil(int(side * options.width) / g) * g)


def plan_product(dims: Sequence[int]) -> tuple[float, tuple[tuple[int, ...], ...]]:
    """Cheapest order of the matrix product ``M_n ... M_1``, ``M_i`` of shape ``dims[i] x dims[i-1]``.

    Returns the multiply-adds and the split table (the classic matrix-chain dynamic programme).

    >>> plan_product([100, 2, 100, 2])[0]  # (M_3 M_2) M_1; M_3 (M_2 M_1) would cost 40000
    800.0
    """
    n = len(dims) - 1
    cost = [[0.0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for span in range(1, n):
        for i in range(n - span):
            j = i + span
            cost[i][j] = math.inf
            for s in range(i, j):
                c = cost[i][s] + cost[s + 1][j] + dims[i] * dims[s + 1] * dims[j + 1]
                if c < cost[i][j]:
                    cost[i][j], split[i][j] = c, s
    return cost[0][n - 1], tuple(tuple(row) for row in split)


def plan_chain(
    layout: Layout, options: ExpandOptions, kernel_sizes: Sequence[tuple[int, ...]] | None = None
) -> Plan:
    """Validate the kernels and derive the chain's structure (``kernel_sizes`` default ``[k, 1, ..]``).

    >>> from timm_overparam.expand.layout import layout_of
    >>> plan_chain(layout_of(nn.Conv2d(2, 2, 5)), ExpandOptions(depth=2), [(3, 3), (3, 3)]).matrix_form
    False
    """
    d, nd = options.depth, len(layout.kernel)
    if kernel_sizes is None:
        kernel_sizes = [layout.kernel] + [(1,) * nd] * (d - 1)
    kernel_sizes = tuple(tuple(k) for k in kernel_sizes)
    if len(kernel_sizes) != d:
        raise ValueError(f"kernel_sizes has {len(kernel_sizes)} entries but depth is {d}")
    composite = tuple(sum(k[i] for k in kernel_sizes) - d + 1 for i in range(nd))
    if any(len(k) != nd for k in kernel_sizes) or composite != layout.kernel:
        raise ValueError(
            f"kernel_sizes {list(kernel_sizes)} compose to a {composite} kernel but the module's "
            f"kernel is {layout.kernel}; choose sizes with sum(k) - depth + 1 == kernel"
        )
    hidden = hidden_size(layout, options)
    sizes = (layout.inputs, *[hidden] * (d - 1), layout.out)
    intervals = tuple(
        n
        for n in options.intervals
        if (targets := [i for i in range(n, d + 1) if i % n == 0])
        and all(sizes[i] == sizes[i - n] for i in targets)
    )
    g = layout.groups
    cost, split = plan_product([layout.fan_in] + [s // g for s in sizes[1:]])
    plan = Plan(layout, hidden, sizes, kernel_sizes, intervals, cost * g * math.prod(layout.experts), split)
    if layout.experts and not plan.matrix_form:
        raise ValueError("expert (CondConv) weights support only kernel_sizes=[k, 1, ..., 1]")
    return plan


def grouped(w: Tensor, layout: Layout) -> Tensor:
    """A factor ``(*E, out, in/g, *k)`` as grouped matrices ``(*E, g, out/g, in/g * prod(k))``.

    >>> from timm_overparam.expand.layout import layout_of
    >>> tuple(grouped(torch.zeros(6, 2, 3, 3), layout_of(nn.Conv2d(4, 6, 3, groups=2))).shape)
    (2, 3, 18)
    """
    e = w.shape[: len(layout.experts)]
    return w.reshape(*e, layout.groups, w.shape[len(e)] // layout.groups, -1)


def dirac(layout: Layout, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Identity map of a node-0 input as a grouped matrix ``(g, in/g, in/g * prod(kernel))``.

    The identity sits at the centre tap ``(k - 1) // 2`` of each kernel dimension.

    >>> from timm_overparam.expand.layout import layout_of
    >>> dirac(layout_of(nn.Conv1d(1, 1, 3)), torch.float32, torch.device("cpu")).tolist()
    [[[0.0, 1.0, 0.0]]]
    """
    g, c = layout.groups, layout.in_per_group
    taps = math.prod(layout.kernel)
    centre = 0
    for k in layout.kernel:  # row-major index of the centre tap
        centre = centre * k + (k - 1) // 2
    eye = torch.zeros(g, c, c * taps, dtype=dtype, device=device)
    idx = torch.arange(c, device=device)
    eye[:, idx, idx * taps + centre] = 1
    return eye


def bn_affine(norm: nn.modules.batchnorm._BatchNorm) -> Affine:
    """Eval-mode scale and shift of a batch-norm (running statistics, its own eps).

    >>> [t.tolist() for t in bn_affine(nn.BatchNorm1d(1, eps=0.0))]
    [[1.0], [0.0]]
    """
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def product(mats: Sequence[Tensor], split: Sequence[Sequence[int]]) -> Tensor:
    """``mats[-1] @ ... @ mats[0]`` in the order of ``split`` (see ``plan_product``).

    For grouped (or expert) factors, batched over groups and experts: ``torch.linalg.multi_dot``,
    used for plain 2-D factors (same speed, measured), takes only 2-D matrices.

    >>> product([torch.ones(2, 3), torch.ones(4, 2)], plan_product([3, 2, 4])[1]).tolist()
    [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """

    def part(i: int, j: int) -> Tensor:
        if i == j:
            return mats[i]
        s = split[i][j]
        return part(s + 1, j) @ part(i, s)

    return part(0, len(mats) - 1)


def propagate(
    plan: Plan, factors: Sequence[Tensor], scales: Sequence[Tensor] | None, nodes: list, start: int, stop: int
) -> list[Tensor]:
    """Extend the grouped-matrix node maps ``nodes[0..start]`` up to node ``stop`` (in place).

    ``scales[i]`` is the folded batch-norm scale after factor ``i`` (None: no batch-norm).

    >>> from timm_overparam.expand.layout import layout_of
    >>> plan = plan_chain(layout_of(nn.Linear(2, 2)), ExpandOptions(depth=2))
    >>> propagate(plan, [None, 2 * torch.eye(2)], None, [None, torch.eye(2)], 1, 2)[-1].tolist()
    [[[2.0, 0.0], [0.0, 2.0]]]
    """
    g = plan.layout.groups
    for i in range(start, stop):
        m = grouped(factors[i], plan.layout) @ nodes[i]
        if scales is not None:
            m = m * scales[i].reshape(g, -1, 1)
        for n in plan.intervals:
            if (i + 1) % n == 0:
                m = m + nodes[i + 1 - n]
        nodes.append(m)
    return nodes


def node_maps(
    plan: Plan, factors: Sequence[Tensor], scales: Sequence[Tensor] | None, stop: int
) -> list[Tensor | None]:
    """Grouped-matrix maps from the input to nodes ``0..stop`` (matrix form only; node 0 None
    without residual links).

    >>> from timm_overparam.expand.layout import layout_of
    >>> plan = plan_chain(layout_of(nn.Linear(2, 2)), ExpandOptions(depth=1))
    >>> node_maps(plan, [torch.eye(2)], None, 1)[-1].shape
    torch.Size([1, 2, 2])
    """
    w0 = factors[0]
    first = grouped(w0, plan.layout)
    nodes: list = [dirac(plan.layout, w0.dtype, w0.device)] if plan.intervals else [None]
    if scales is not None:
        first = first * scales[0].reshape(plan.layout.groups, -1, 1)
    if 1 in plan.intervals:
        first = first + nodes[0]
    nodes.append(first)
    return propagate(plan, factors, scales, nodes, 1, stop)


def kernel_chain(plan: Plan, factors: Sequence[Tensor], scales: Sequence[Tensor] | None) -> Tensor:
    """Composite kernel of a chain with inner kernels > 1 (the full convolution of the kernels).

    >>> from timm_overparam.expand.layout import layout_of
    >>> plan = plan_chain(layout_of(nn.Conv1d(1, 1, 3)), ExpandOptions(depth=2), [(2,), (2,)])
    >>> kernel_chain(plan, [torch.ones(1, 1, 2), torch.ones(1, 1, 2)], None).tolist()
    [[[1.0, 2.0, 1.0]]]
    """
    lay = plan.layout
    nd, g = len(lay.kernel), lay.groups
    w0 = factors[0]
    ident = torch.zeros(plan.sizes[0], lay.in_per_group, *([1] * nd), dtype=w0.dtype, device=w0.device)
    rows = torch.arange(plan.sizes[0], device=w0.device)
    ident[rows, rows % lay.in_per_group] = 1
    nodes = [ident]
    for i, w in enumerate(factors):
        if i == 0:
            m = w
        else:  # full convolution, the input channels per group playing the batch
            pad = [k - 1 for k in w.shape[2:]]
            m = CONV_FN[nd](nodes[i].transpose(0, 1), w.flip(list(range(2, 2 + nd))), padding=pad, groups=g)
            m = m.transpose(0, 1)
        if scales is not None:
            m = m * scales[i].reshape(-1, *([1] * (nd + 1)))
        for n in plan.intervals:
            if (i + 1) % n == 0:
                m = m + _embed(plan, nodes[i + 1 - n], i + 1 - n, i + 1, m.shape[2:])
        nodes.append(m)
    return nodes[-1]


def _embed(plan: Plan, src: Tensor, a: int, b: int, size: torch.Size) -> Tensor:
    """Place node a's kernel inside node b's kernel at the centre offset of factors a+1..b."""
    pad = []
    for dim in reversed(range(len(size))):
        left = sum((k[dim] - 1) // 2 for k in plan.kernel_sizes[a:b])
        pad += [left, size[dim] - src.shape[2 + dim] - left]
    return F.pad(src, pad)


def compose_weight(
    plan: Plan,
    factors: Sequence[Tensor],
    scales: Sequence[Tensor] | None = None,
    gate: Tensor | None = None,
) -> Tensor:
    """The effective weight in the module's own shape (batch-norm folded by ``scales``, plus ``gate``).

    >>> from timm_overparam.expand.layout import layout_of
    >>> plan = plan_chain(layout_of(nn.Linear(2, 2)), ExpandOptions(depth=2))
    >>> compose_weight(plan, [torch.eye(2), 3 * torch.eye(2)]).tolist()
    [[3.0, 0.0], [0.0, 3.0]]
    """
    if not plan.matrix_form:
        w = kernel_chain(plan, factors, scales)
    elif not plan.intervals and scales is None:
        lay = plan.layout
        if lay.groups == 1 and not lay.experts and len(factors) > 1:  # plain matrices: the library's
            w = torch.linalg.multi_dot([f.reshape(f.shape[0], -1) for f in reversed(factors)])
        else:  # batched over groups/experts, which multi_dot does not take
            w = product([grouped(f, lay) for f in factors], plan.split)
    else:
        w = node_maps(plan, factors, scales, plan.depth)[-1]
    w = w.reshape(plan.layout.weight_shape)
    return w if gate is None else w + gate


def compose_bias(
    plan: Plan,
    factors: Sequence[Tensor],
    biases: Sequence[Tensor] | None,
    affines: Sequence[Affine] | None,
    last_bias: Tensor,
) -> Tensor:
    """Effective bias: factor biases and batch-norm shifts carried through the chain to the output.

    ``biases`` are those of factors ``0..d-2``, ``last_bias`` the module's own ``b_d``.

    >>> from timm_overparam.expand.layout import layout_of
    >>> plan = plan_chain(layout_of(nn.Linear(2, 2)), ExpandOptions(depth=2))
    >>> compose_bias(plan, [torch.eye(2), 2 * torch.eye(2)], [torch.ones(2)], None, torch.zeros(2)).tolist()
    [2.0, 2.0]
    """
    g, d = plan.layout.groups, len(factors)
    nodes: list[Tensor | None] = [None]  # node 0 (the input) carries no bias
    for i, w in enumerate(factors):
        b = None
        if nodes[i] is not None:
            taps = w.flatten(2).sum(-1) if w.dim() > 2 else w
            b = (taps.reshape(g, -1, taps.shape[1]) @ nodes[i].reshape(g, -1, 1)).reshape(-1)
        own = last_bias if i == d - 1 else (biases[i] if biases is not None else None)
        if own is not None:
            b = own if b is None else b + own
        if affines is not None:
            scale, shift = affines[i]
            b = shift if b is None else b * scale + shift
        for n in plan.intervals:
            src = nodes[i + 1 - n] if (i + 1) % n == 0 else None
            if src is not None:
                b = src if b is None else b + src
        nodes.append(b)
    return nodes[-1]
