"""Neural-network subspaces (*Learning Neural Network Subspaces*): every float tensor becomes a line,
a quadratic Bezier curve or a simplex of weights trained in one run; any point extracts to the
stock model.

- ``parametrization``: ``SubspaceConfig``, the ``SubspaceParam`` parametrization, ``subspace``
  conversion;
- ``points``: moving to, drawing and training at points (``set_point``, ``at_point``,
  ``sample_point``, ``sampled_loss``) and ``extract_point``;
- ``regularizer``: ``subspace_regularizer``, the vertices' squared cosine;
- ``bn``: BatchNorm statistics per point (``recalibrate_bn``, ``current_bn_stats``, ``load_bn_stats``).
"""

from timm_overparam.subspace.bn import BNStats, current_bn_stats, load_bn_stats, recalibrate_bn
from timm_overparam.subspace.parametrization import SubspaceConfig, SubspaceParam, VertexInit, subspace
from timm_overparam.subspace.points import (
    Point,
    at_point,
    extract_point,
    sample_point,
    sampled_loss,
    set_point,
)
from timm_overparam.subspace.regularizer import subspace_regularizer

__all__ = [
    "BNStats",
    "Point",
    "SubspaceConfig",
    "SubspaceParam",
    "VertexInit",
    "at_point",
    "current_bn_stats",
    "extract_point",
    "load_bn_stats",
    "recalibrate_bn",
    "sample_point",
    "sampled_loss",
    "set_point",
    "subspace",
    "subspace_regularizer",
]
