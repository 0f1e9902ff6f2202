"""The cost model: per input shape, is the activation chain or the composed weight cheaper?

Both forms are exact and give the same gradients. Costs are multiply-adds times 3 (forward and the
two backward products):

- composed: the matrix-chain product ``W_d ... W_1`` in its planned order, plus one conv (or
  linear) at the layer's own size;
- chain: the first factor (with the stride) and the 1x1 factors at the output resolution, plus
  ``ELEMENT_COST`` per intermediate activation element written and read back.

>>> from torch import nn
>>> from timm_overparam.expand.compose import plan_chain
>>> from timm_overparam.expand.layout import layout_of
>>> from timm_overparam.expand.options import ExpandOptions
>>> plan = plan_chain(layout_of(nn.Conv2d(256, 256, 3, padding=1)), ExpandOptions(depth=3))
>>> prefers_chain(plan, (2, 256, 8, 8)), prefers_chain(plan, (64, 256, 56, 56))
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from timm_overparam.expand.compose import Plan
from timm_overparam.expand.layout import Layout

# Multiply-adds charged for each intermediate activation element the chain writes and reads back.
# benchmarks/train_step.py found no resnet18/vit_tiny layer whose choice depends on it (0..288):
# the multiply-add counts decide; it only tips memory-bound chains of tiny matrices.
ELEMENT_COST = 12.0


def positions(layout: Layout, shape: Sequence[int]) -> int:
    """Number of output positions (batch x spatial) for an input of this shape.

    >>> from torch import nn
    >>> from timm_overparam.expand.layout import layout_of
    >>> positions(layout_of(nn.Conv2d(3, 8, 3, stride=2, padding=1)), (4, 3, 32, 32))
    1024
    """
    nd = len(layout.kernel)
    if nd == 0:
        return math.prod(shape[:-1])
    n = shape[0] if len(shape) == nd + 2 else 1
    pads = layout.pads
    for k in range(nd):
        total = pads[2 * (nd - 1 - k)] + pads[2 * (nd - 1 - k) + 1]
        span = layout.dilation[k] * (layout.kernel[k] - 1)
        n *= (shape[-nd + k] + total - span - 1) // layout.stride[k] + 1
    return n


def composed_cost(plan: Plan, shape: Sequence[int]) -> float:
    """Multiply-adds (x3) of composing the weight and running the module's own op.

    >>> from torch import nn
    >>> from timm_overparam.expand.compose import plan_chain
    >>> from timm_overparam.expand.layout import layout_of
    >>> from timm_overparam.expand.options import ExpandOptions
    >>> composed_cost(plan_chain(layout_of(nn.Linear(2, 2)), ExpandOptions(depth=2)), (5, 2))
    84.0
    """
    lay = plan.layout
    return 3.0 * (plan.product_cost + positions(lay, shape) * lay.out * lay.fan_in)


def chain_cost(plan: Plan, shape: Sequence[int]) -> float:
    """Multiply-adds (x3) of running the factors on activations, plus the intermediate elements.

    >>> from torch import nn
    >>> from timm_overparam.expand.compose import plan_chain
    >>> from timm_overparam.expand.layout import layout_of
    >>> from timm_overparam.expand.options import ExpandOptions
    >>> chain_cost(plan_chain(layout_of(nn.Linear(2, 2)), ExpandOptions(depth=2)), (5, 2))
    240.0
    """
    lay, s = plan.layout, plan.sizes
    n, g = positions(lay, shape), lay.groups
    macs = s[1] * lay.fan_in + sum(s[i + 1] * s[i] // g for i in range(1, len(s) - 1))
    return 3.0 * n * macs + ELEMENT_COST * n * sum(s[1:-1])


def prefers_chain(plan: Plan, shape: Sequence[int]) -> bool:
    """True when the activation chain is cheaper than the composed weight for this input shape.

    A single factor always composes (it is the weight).
    """
    return plan.depth > 1 and chain_cost(plan, shape) < composed_cost(plan, shape)
