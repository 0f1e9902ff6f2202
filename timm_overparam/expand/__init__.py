"""Expand-and-project: each conv/linear weight becomes a product of factors (*The Low-Rank Simplicity
Bias in Deep Networks*), exactly collapsible to the stock weight.

One concept per file:

- ``options``: ``ExpandOptions``, validated once;
- ``layout``: the host-module contract: the ``Layout`` record read at expansion (``layout_of``,
  ``chain_capable``) and the one class swap given to the host (``adopt``);
- ``compose``: the effective weight and bias as pure functions of the factors (``Plan``,
  ``plan_chain``, the planned product order);
- ``solve``: the exact solve of one factor for a pretrained start;
- ``cost``: the cost model choosing the composed weight or the activation chain per input shape;
- ``chain``: running the factors on activations;
- ``parametrization``: the ``ExpandProject`` parametrization holding the factors, norms and gate,
  ``expand_module``/``collapse_module``;
- ``convert``: ``overparameterize`` any model, ``collapse`` it back, ``is_expanded``;
- ``layers``: standalone ``OverparamLinear``/``OverparamConv1d``/``OverparamConv2d``.
"""

from timm_overparam.expand.convert import collapse, is_expanded, overparameterize
from timm_overparam.expand.layers import OverparamConv1d, OverparamConv2d, OverparamLinear
from timm_overparam.expand.layout import Layout, chain_capable, layout_of
from timm_overparam.expand.options import ExpandOptions
from timm_overparam.expand.parametrization import ExpandProject, collapse_module, expand_module

__all__ = [
    "ExpandOptions",
    "ExpandProject",
    "Layout",
    "OverparamConv1d",
    "OverparamConv2d",
    "OverparamLinear",
    "chain_capable",
    "collapse",
    "collapse_module",
    "expand_module",
    "is_expanded",
    "layout_of",
    "overparameterize",
]
