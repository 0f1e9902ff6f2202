"""Evaluation: metrics of a model (top-1/top-5, loss, ECE), subspace points and ensembles, their plots.

- ``metrics``: ``Metrics``, ``evaluate_model``;
- ``points``: ``SubspaceResults``, ``evaluate_points`` (each point with its own BatchNorm statistics);
- ``plots``: ``plot_points`` (matplotlib is imported when it is first used).
"""

from typing import Any

from timm_overparam.eval.metrics import Metrics, evaluate_model
from timm_overparam.eval.points import PlainPoint, SubspaceResults, evaluate_points

__all__ = ["Metrics", "PlainPoint", "SubspaceResults", "evaluate_model", "evaluate_points", "plot_points"]


def __getattr__(name: str) -> Any:
    if name == "plot_points":  # lazily: matplotlib loads with the plots
        from timm_overparam.eval.plots import plot_points

        return plot_points
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
