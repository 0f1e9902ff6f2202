"""Evaluation: metrics of a model (top-1/top-5, loss, ECE and its bins), effective rank of its
embeddings, subspace points and ensembles, their plots.

- ``metrics``: ``Metrics``, ``Reliability``, ``evaluate_model``, ``reliability``;
- ``rank``: ``EffectiveRank``, ``effective_rank``, ``embeddings``, ``embedding_rank``;
- ``points``: ``SubspaceResults``, ``evaluate_points`` (each point with its own BatchNorm statistics);
- ``plots``: ``plot_points`` (matplotlib is imported when it is first used).
"""

from typing import Any

from timm_overparam.eval.metrics import Metrics, Reliability, evaluate_model, reliability
from timm_overparam.eval.points import PlainPoint, SubspaceResults, evaluate_points
from timm_overparam.eval.rank import EffectiveRank, effective_rank, embedding_rank, embeddings

__all__ = [
    "EffectiveRank",
    "Metrics",
    "PlainPoint",
    "Reliability",
    "SubspaceResults",
    "effective_rank",
    "embedding_rank",
    "embeddings",
    "evaluate_model",
    "evaluate_points",
    "plot_points",
    "reliability",
]


def __getattr__(name: str) -> Any:
    if name == "plot_points":  # lazily: matplotlib loads with the plots
        from timm_overparam.eval.plots import plot_points

        return plot_points
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
