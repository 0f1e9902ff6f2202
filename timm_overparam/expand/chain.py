"""The activation-space chain: the factors run on the input, one conv (or linear) each.

Exact and with the same gradients as the composed weight: the first factor carries the host's
kernel, stride, padding and dilation (read from its ``Layout``) and the rest are 1x1, so the chain
runs at the output resolution; inner kernels > 1 (standalone layers) pad the input explicitly and
put the stride on the last factor. A residual link from node ``a`` to node ``b`` adds the positions
of node ``a`` that the centre taps of factors ``a+1..b`` read (``crop``). Batch-norms run as modules
(batch statistics in training).

>>> from torch import nn
>>> from timm_overparam.expand.compose import compose_weight, plan_chain
>>> from timm_overparam.expand.layout import layout_of
>>> from timm_overparam.expand.options import ExpandOptions
>>> conv = nn.Conv2d(2, 2, 3, padding=1)
>>> plan = plan_chain(layout_of(conv), ExpandOptions(depth=2))
>>> factors = [torch.randn(2, 2, 3, 3), torch.randn(2, 2, 1, 1)]
>>> x = torch.randn(1, 2, 5, 5)
>>> y = run_chain(plan, x, factors, None, None, None, conv.bias)
>>> torch.allclose(y, conv_op(plan.layout, x, compose_weight(plan, factors), conv.bias), atol=1e-5)
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timm_overparam.expand.compose import CONV_FN, Plan
from timm_overparam.expand.layout import Layout


def conv_op(layout: Layout, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The host's own linear op (``F.linear`` or its conv with its geometry) on ``weight``.

    >>> from torch import nn
    >>> from timm_overparam.expand.layout import layout_of
    >>> conv = nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular")
    >>> x = torch.randn(1, 1, 6)
    >>> torch.equal(conv_op(layout_of(conv), x, conv.weight, conv.bias), conv(x))
    True
    """
    nd = len(layout.kernel)
    if nd == 0:
        return F.linear(x, weight, bias)
    if layout.padding_mode != "zeros":
        x = F.pad(x, layout.pads, mode=layout.padding_mode)
        return CONV_FN[nd](x, weight, bias, layout.stride, 0, layout.dilation, layout.groups)
    return CONV_FN[nd](x, weight, bias, layout.stride, layout.padding, layout.dilation, layout.groups)


def run_chain(
    plan: Plan,
    x: Tensor,
    factors: Sequence[Tensor],
    biases: Sequence[Tensor] | None,
    norms: Sequence[nn.Module] | None,
    gate: Tensor | None,
    last_bias: Tensor | None,
) -> Tensor:
    """Run the factors on activations: same output and gradients as the composed weight.

    ``biases`` are factors ``0..d-2``'s, ``last_bias`` the host's own ``b_d``, ``norms`` the
    batch-norm after each factor, ``gate`` the learnable residual weight.
    """
    lay = plan.layout
    d, nd = len(factors), len(lay.kernel)
    inp = x
    first_pad: tuple[int, ...] | str | int = 0
    if nd:
        explicit = (
            lay.padding_mode != "zeros"
            or isinstance(lay.padding, str)
            or not plan.matrix_form
            or bool(plan.intervals)  # node 0 feeds a residual link: keep it padded
        )
        if not explicit:
            first_pad = lay.padding
        elif any(lay.pads):
            mode = "constant" if lay.padding_mode == "zeros" else lay.padding_mode
            inp = F.pad(x, lay.pads, mode=mode)
    nodes = [inp]
    for i, w in enumerate(factors):
        b = last_bias if i == d - 1 else (biases[i] if biases is not None else None)
        if nd == 0:
            y = F.linear(nodes[i], w, b)
        else:
            stride = lay.stride if i == plan.stride_factor else 1
            pad = first_pad if i == 0 else 0
            y = CONV_FN[nd](nodes[i], w, b, stride, pad, lay.dilation, lay.groups)
        if norms is not None:
            y = norms[i](y.reshape(-1, y.shape[-1])).reshape(y.shape) if nd == 0 else norms[i](y)
        for n in plan.intervals:
            if (i + 1) % n == 0:
                y = y + crop(plan, nodes[i + 1 - n], i + 1 - n, i + 1, y.shape)
        nodes.append(y)
    out = nodes[-1]
    if gate is not None:
        out = out + conv_op(lay, x, gate, None)
    return out


def crop(plan: Plan, src: Tensor, a: int, b: int, shape: torch.Size) -> Tensor:
    """The positions of node ``a`` that the (centre tap of) factors ``a+1..b`` read for node ``b``.

    >>> from torch import nn
    >>> from timm_overparam.expand.compose import plan_chain
    >>> from timm_overparam.expand.layout import layout_of
    >>> from timm_overparam.expand.options import ExpandOptions
    >>> plan = plan_chain(layout_of(nn.Conv1d(1, 1, 3, stride=2)), ExpandOptions(depth=1))
    >>> crop(plan, torch.arange(7.0).reshape(1, 1, 7), 0, 1, (1, 1, 3)).tolist()
    [[[1.0, 3.0, 5.0]]]
    """
    lay = plan.layout
    nd = len(lay.kernel)
    if nd == 0:
        return src
    scale, off = [1] * nd, [0] * nd
    for i in range(b - 1, a - 1, -1):  # back from node b to node a through factor i
        stride = lay.stride if i == plan.stride_factor else (1,) * nd
        for k in range(nd):
            off[k] = stride[k] * off[k] + lay.dilation[k] * ((plan.kernel_sizes[i][k] - 1) // 2)
            scale[k] *= stride[k]
    index = tuple(slice(off[k], off[k] + scale[k] * (shape[-nd + k] - 1) + 1, scale[k]) for k in range(nd))
    return src[(..., *index)]
