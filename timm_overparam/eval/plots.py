"""Plots of evaluated subspaces; matplotlib is imported when a plot is drawn."""

from __future__ import annotations

import os

from timm_overparam.core.atomic import atomic_path
from timm_overparam.eval.points import SubspaceResults


def plot_points(results: SubspaceResults, path: str | os.PathLike) -> str:
    """Plot top-1 accuracy along the subspace (ensembles as horizontal lines) and save it atomically.

    Example: ``plot_points(evaluate_points(m, val_loader, [0, 0.25, 0.5, 0.75, 1]), "line.png")``
    """
    from matplotlib.figure import Figure  # import cost: only when plotting

    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    top1 = [100 * m.top1 for m in results.metrics]
    if all(isinstance(p, float) for p in results.points):
        ax.plot(results.points, top1, marker="o", label="points")
        ax.set_xlabel("point a")
    else:  # simplex or layerwise points: one tick each
        ax.plot(range(len(top1)), top1, marker="o", label="points")
        ax.set_xticks(range(len(top1)), [str(p) for p in results.points], rotation=30, fontsize=6)
        ax.set_xlabel("point")
    for i, (members, m) in enumerate(zip(results.ensembles, results.ensemble_metrics, strict=True)):
        ax.axhline(100 * m.top1, ls="--", color=f"C{i + 1}", label=f"ensemble {list(members)}")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=7)
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
