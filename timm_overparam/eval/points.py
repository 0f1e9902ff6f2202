"""Evaluation of subspace points and ensembles: accuracy, loss, ECE, TV distance (regression: p-loss, MAE).

Every point runs once: it is set, its BatchNorm statistics recalibrated on training data, the eval
loader forwarded, and its logits kept on the CPU. Ensembles and TV distances are computed from the
kept logits, so each ensemble member uses its own statistics and no point is evaluated twice.

The eval loader's passes may run through a compiled model (``forward=torch.compile(model)``): the
point (the coefficients buffers) and the BatchNorm statistics are tensor data the graph reads, so
neither another point nor another ensemble compiles again. The recalibration stays eager: its
cumulative average (``momentum=None``) would be specialized, one graph per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from timm_overparam.core.modes import preserve_modes
from timm_overparam.eval.metrics import Gather, Metrics, RegressionMetrics, _logits, _metrics, score
from timm_overparam.subspace.bn import BNStats, current_bn_stats, load_bn_stats, recalibrate_bn
from timm_overparam.subspace.points import Point, at_point

__all__ = ["PlainPoint", "SubspaceResults", "evaluate_points"]

# a point as plain data: a number, barycentric coordinates, or {module name: point}
PlainPoint = float | tuple[float, ...] | dict[str, float | tuple[float, ...]]


@dataclass(frozen=True)
class SubspaceResults:
    """What ``evaluate_points`` measured, as plain data: ``metrics[i]`` belongs to ``points[i]``.

    ``bn_stats[i]`` (BatchNorm models) are the statistics point ``i`` was evaluated with, for
    ``extract_point(model, points[i], bn_stats[i])``; they are left out of ``to_dict()``.

    Example: ``res.metrics[res.points.index(0.5)].top1``, ``res.ensemble_metrics[0].ece``
    """

    points: list[PlainPoint]
    metrics: list[Metrics | RegressionMetrics]
    ensembles: list[tuple[PlainPoint, ...]]
    ensemble_metrics: list[Metrics | RegressionMetrics]
    tv_pairs: list[tuple[PlainPoint, PlainPoint]]
    tv: list[float]
    average: str
    num_samples: int
    bn_stats: list[BNStats] = field(default_factory=list, repr=False, compare=False)  # per point, if BN

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready records: ``points``, ``ensembles`` (``members``), ``tv`` (``a``, ``b``, ``tv``).

        Example: ``json.dumps(res.to_dict())``; ``res.to_dict()["points"][0]`` is
        ``{'point': 0.0, 'top1': 0.91, 'top5': 0.99, 'loss': 0.31, 'ece': 0.02, 'precision': 0.9, 'recall': 0.9}``
        """
        return {
            "points": [{"point": p, **asdict(m)} for p, m in zip(self.points, self.metrics, strict=True)],
            "ensembles": [
                {"members": list(e), **asdict(m)}
                for e, m in zip(self.ensembles, self.ensemble_metrics, strict=True)
            ],
            "tv": [{"a": a, "b": b, "tv": d} for (a, b), d in zip(self.tv_pairs, self.tv, strict=True)],
            "average": self.average,
            "num_samples": self.num_samples,
        }


def _plain(point: Point) -> PlainPoint:
    """``point`` as plain Python: a float, a tuple of floats, or a dict of those."""
    if isinstance(point, Tensor):
        point = point.tolist()
    if isinstance(point, Mapping):
        return {str(name): _plain(p) for name, p in point.items()}
    if isinstance(point, Sequence):
        return tuple(float(t) for t in point)
    return float(point)


def _index(points: list[PlainPoint], point: Point, what: str) -> int:
    plain = _plain(point)
    for i, p in enumerate(points):
        if p == plain:
            return i
    raise ValueError(f"{what} {point!r} is not one of the evaluated points {points}")


def evaluate_points(
    model: nn.Module,
    loader: Iterable,
    points: Sequence[Point],
    ensembles: Sequence[Sequence[Point]] = (),
    *,
    bn_loader: Iterable | None = None,
    bn_batches: int | None = None,
    average: Literal["logits", "probs"] = "logits",
    tv_pairs: Sequence[tuple[Point, Point]] = (),
    gather: Gather | None = None,
    task: str = "classification",
    p_loss: float = 2.0,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> SubspaceResults:
    """Metrics of each point, of ensembles of those points (averaged logits or probabilities), TV distances.

    With ``task="regression"`` the metrics are ``RegressionMetrics`` (p-loss with ``p_loss``, MAE), an
    ensemble averages its members' outputs (whatever ``average`` says), and there are no TV distances.

    ``loader`` yields ``(x, target)``; with BatchNorm every point first recalibrates on ``bn_batches``
    of ``bn_loader``. Model point, BN statistics and training flags are restored afterwards. In a
    distributed run pass each process's share as ``loader`` and ``gather=accelerator.gather_for_metrics``.

    ``forward`` (default: ``model``) computes the eval loader's outputs, e.g. ``torch.compile(model)``;
    it must run ``model`` itself, which the points and statistics are set on. Other than ``model`` it
    runs outside ``parametrize.cached()``: a graph composes the weights itself (the cache would add
    guards on its contents, and a second graph).

    Example: ``res = evaluate_points(m, val_loader, [0, 0.5, 1], [[0, 1]], bn_loader=train_loader)``
    """
    if average not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
    if task == "regression" and tv_pairs:
        raise ValueError("TV distances compare class probabilities: there are none for regression")
    if not points:
        raise ValueError("no points to evaluate")
    for p in points:  # validates every point (ValueError naming it) before any work
        with at_point(model, p):
            pass
    plain: list[PlainPoint] = []
    for p in points:
        if _plain(p) in plain:
            raise ValueError(f"point {p!r} is given twice")
        plain.append(_plain(p))
    members = [[_index(plain, p, "ensemble member") for p in e] for e in ensembles]
    if any(not m for m in members):
        raise ValueError("an ensemble needs at least one member point")
    pairs = [(_index(plain, a, "TV point"), _index(plain, b, "TV point")) for a, b in tv_pairs]
    stats_before = current_bn_stats(model)
    has_bn = bool(stats_before)
    if has_bn and bn_loader is None:
        raise ValueError(
            "the model has BatchNorm: pass bn_loader= (training batches) to recalibrate each point"
        )

    device = next(model.parameters()).device
    forward = model if forward is None else forward
    logits: list[Tensor] = []
    bn_stats: list[BNStats] = []
    targets: Tensor | None = None
    try:
        with preserve_modes(model):
            for p in points:
                with at_point(model, p):
                    if has_bn:
                        with parametrize.cached():
                            bn_stats.append(recalibrate_bn(model, bn_loader, bn_batches, device))
                    model.eval()
                    with parametrize.cached() if forward is model else nullcontext():
                        out, y = _logits(forward, loader, device, gather)
                if targets is not None and not torch.equal(y, targets):
                    raise ValueError(f"the eval loader gave point {p!r} other targets: it must not shuffle")
                logits.append(out)
                targets = y
    finally:
        load_bn_stats(model, stats_before)

    assert targets is not None  # points is not empty

    def combine(idx: list[int], how: str) -> Metrics | RegressionMetrics:
        if task != "classification":
            return score(torch.stack([logits[i] for i in idx]).mean(0), targets, task, p_loss)
        if how == "logits":
            mean = torch.stack([logits[i] for i in idx]).mean(0)
            return _metrics(mean.softmax(1), mean.log_softmax(1), targets)
        probs = torch.stack([logits[i].softmax(1) for i in idx]).mean(0)
        return _metrics(probs, probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), targets)

    return SubspaceResults(
        points=plain,
        metrics=[combine([i], "logits") for i in range(len(points))],
        ensembles=[tuple(plain[i] for i in idx) for idx in members],
        ensemble_metrics=[combine(idx, average) for idx in members],
        tv_pairs=[(plain[i], plain[j]) for i, j in pairs],
        tv=[
            (0.5 * (logits[i].softmax(1) - logits[j].softmax(1)).abs().sum(1).mean()).item() for i, j in pairs
        ],
        average=average,
        num_samples=len(targets),
        bn_stats=bn_stats,
    )
