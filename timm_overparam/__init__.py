"""timm_overparam: over-parameterize any timm model for training, collapse it back for inference.

``import timm_overparam`` registers ``<arch>_op2/_op3/_op4`` and ``<arch>_line/_curve/_simplex``
for every timm architecture; one registered later gets them from ``register_new_models()``. It
imports only torch, timm and safetensors: accelerate, torchmetrics and matplotlib load when the
trainer, the ECE metric or a plot first needs them (``plot_points`` is resolved on first access).
"""

from typing import Any

from timm_overparam.core.walk import ConversionReport
from timm_overparam.core.weights import load_weights, save_weights
from timm_overparam.eval.metrics import Metrics, evaluate_model
from timm_overparam.eval.points import SubspaceResults, evaluate_points
from timm_overparam.expand.convert import collapse, is_expanded, overparameterize
from timm_overparam.expand.layers import OverparamConv1d, OverparamConv2d, OverparamLinear
from timm_overparam.expand.options import ExpandOptions
from timm_overparam.expand.parametrization import ExpandProject, collapse_module, expand_module
from timm_overparam.lab import models as _lab_models  # noqa: F401  (seed 003's models)
from timm_overparam.models import op as _op_models  # noqa: F401  (registers the entrypoints)
from timm_overparam.models import subspace as _subspace_models  # noqa: F401
from timm_overparam.registry import register_architecture, register_new_models
from timm_overparam.research import cifar_resnet as _cifar_resnet_models  # noqa: F401  (seed 002's models)
from timm_overparam.research import depth_limit as _depth_limit_models  # noqa: F401
from timm_overparam.subspace.bn import BNStats, current_bn_stats, load_bn_stats, recalibrate_bn
from timm_overparam.subspace.parametrization import SubspaceConfig, SubspaceParam, subspace
from timm_overparam.subspace.points import at_point, extract_point, sample_point, sampled_loss, set_point
from timm_overparam.subspace.regularizer import subspace_regularizer

__all__ = [
    "BNStats",
    "ConversionReport",
    "ExpandOptions",
    "ExpandProject",
    "Metrics",
    "OverparamConv1d",
    "OverparamConv2d",
    "OverparamLinear",
    "SubspaceConfig",
    "SubspaceParam",
    "SubspaceResults",
    "at_point",
    "collapse",
    "collapse_module",
    "current_bn_stats",
    "evaluate_model",
    "evaluate_points",
    "expand_module",
    "extract_point",
    "is_expanded",
    "load_bn_stats",
    "load_weights",
    "overparameterize",
    "plot_points",  # from the module __getattr__: matplotlib loads with the first plot
    "recalibrate_bn",
    "register_architecture",
    "register_new_models",
    "sample_point",
    "sampled_loss",
    "save_weights",
    "set_point",
    "subspace",
    "subspace_regularizer",
]


def __getattr__(name: str) -> Any:
    if name == "plot_points":
        from timm_overparam.eval.plots import plot_points

        return plot_points
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
