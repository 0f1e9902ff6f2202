"""Evaluation: metrics of a model (top-1/top-5, loss, ECE), subspace points and ensembles, their plots.

- ``points``: ``Metrics``, ``evaluate_model``, ``SubspaceResults``, ``evaluate_points``, ``plot_points``.
"""

from timm_overparam.eval.points import Metrics, SubspaceResults, evaluate_model, evaluate_points, plot_points

__all__ = ["Metrics", "SubspaceResults", "evaluate_model", "evaluate_points", "plot_points"]
