"""Expand-and-project: each conv/linear weight becomes a product of factors (*The Low-Rank Simplicity
Bias in Deep Networks*), exactly collapsible to the stock weight.

- ``parametrization``: ``ExpandOptions``, the ``ExpandProject`` parametrization (composition, exact
  solve of a pretrained start, cost model, activation chain), ``expand_module``/``collapse_module``;
- ``convert``: ``overparameterize`` any model, ``collapse`` it back, ``is_expanded``;
- ``layers``: standalone ``OverparamLinear``/``OverparamConv1d``/``OverparamConv2d``.
"""

from timm_overparam.expand.convert import collapse, is_expanded, overparameterize
from timm_overparam.expand.layers import OverparamConv1d, OverparamConv2d, OverparamLinear
from timm_overparam.expand.parametrization import ExpandOptions, ExpandProject, collapse_module, expand_module

__all__ = [
    "ExpandOptions",
    "ExpandProject",
    "OverparamConv1d",
    "OverparamConv2d",
    "OverparamLinear",
    "collapse",
    "collapse_module",
    "expand_module",
    "is_expanded",
    "overparameterize",
]
