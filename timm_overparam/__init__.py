"""timm_overparam: over-parameterize any timm model for training, collapse it back for inference.

``import timm_overparam`` registers ``<arch>_op2/_op3/_op4`` for every timm architecture.
"""

from timm_overparam.convert import ConversionReport, collapse, is_expanded, overparameterize
from timm_overparam.expand import ExpandOptions, ExpandProject, collapse_module, expand_module
from timm_overparam.layers import OverparamConv1d, OverparamConv2d, OverparamLinear
from timm_overparam.models import op as _op_models  # noqa: F401  (registers the entrypoints)
from timm_overparam.registry import register_architecture
from timm_overparam.weights import save_weights

__all__ = [
    "ConversionReport",
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
    "register_architecture",
    "save_weights",
]
