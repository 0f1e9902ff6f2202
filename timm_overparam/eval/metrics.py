"""Metrics of a model on a loader: a classifier's accuracy, cross-entropy, ECE, precision and recall
(``Metrics``), or a regressor's p-loss and mean absolute error (``RegressionMetrics``).

Top-k is timm's ``accuracy``; ECE is torchmetrics' ``multiclass_calibration_error`` (L1, 20 equal
bins), precision and recall torchmetrics' ``multiclass_precision``/``multiclass_recall`` (macro),
imported when first computed; ``reliability`` bins the predictions as the ECE does, for reliability
diagrams. ``p_loss`` is the regression loss of training and evaluation: the mean over samples of
``|y - yhat|_p^p`` (seed 002's code and REFERENCE; its README's ``p^-1`` factor is not applied).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from torch import Tensor, nn

from timm_overparam.core.modes import preserve_modes

ECE_BINS = 20


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins over [0, 1]: ``count[b]`` predictions whose confidence (top
    probability) falls in bin ``b``, their mean ``confidence`` and ``accuracy`` (None when empty).

    >>> Reliability(count=[0, 2], confidence=[None, 0.75], accuracy=[None, 0.5]).to_dict()["bins"]
    2
    """

    count: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``bins`` (their number), ``count``, ``confidence``, ``accuracy``.

        >>> Reliability(count=[1], confidence=[0.5], accuracy=[1.0]).to_dict()
        {'bins': 1, 'count': [1], 'confidence': [0.5], 'accuracy': [1.0]}
        """
        return {
            "bins": len(self.count),
            "count": list(self.count),
            "confidence": list(self.confidence),
            "accuracy": list(self.accuracy),
        }


def reliability(probs: Tensor, targets: Tensor, bins: int = ECE_BINS) -> Reliability:
    """The top-label confidences of ``probs`` (N, C) binned as torchmetrics' ECE bins them:
    ``bins`` equal-width bins ``[b/bins, (b+1)/bins)`` (float32 edges, ``torch.bucketize``), so
    ``sum(count[b] / N * |accuracy[b] - confidence[b]|)`` is its L1 ECE. A confidence of exactly 1
    counts in the last bin (torchmetrics counts it in an extra bin of its own, which differs only
    when such a prediction is wrong and the last bin's accuracy exceeds its confidence).

    >>> probs = torch.tensor([[0.875, 0.125], [0.75, 0.25], [0.375, 0.625], [0.625, 0.375]])
    >>> reliability(probs, torch.tensor([0, 1, 1, 0]), bins=4)
    Reliability(count=[0, 0, 2, 2], confidence=[None, None, 0.625, 0.8125], accuracy=[None, None, 1.0, 0.5])
    """
    if probs.ndim != 2 or targets.shape != probs.shape[:1]:
        raise ValueError(
            f"reliability needs probabilities (N, C) and targets (N,), got {tuple(probs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    confidence, predicted = probs.max(1)
    confidence = confidence.float()  # torchmetrics bins float32 confidences
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype, device=confidence.device)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins)
    sums = torch.zeros(2, bins, dtype=torch.float64, device=confidence.device)
    sums[0].index_add_(0, index, confidence.double())
    sums[1].index_add_(0, index, predicted.eq(targets).double())
    means = (sums / count.clamp_min(1)).tolist()
    empty = (count == 0).tolist()
    return Reliability(
        count=count.tolist(),
        confidence=[None if e else v for e, v in zip(empty, means[0], strict=True)],
        accuracy=[None if e else v for e, v in zip(empty, means[1], strict=True)],
    )


@dataclass(frozen=True)
class Metrics:
    """Top-1 and top-5 accuracy (fractions; top-5 is top-C with C < 5 classes), mean cross-entropy, ECE,
    macro precision and recall (fractions); ``reliability``: the ECE's bins (not a metric: left out of
    comparisons and the metric names).

    >>> Metrics(top1=0.5, top5=1.0, loss=1.04, ece=0.0, precision=0.25, recall=0.5).top1
    0.5
    """

    top1: float
    top5: float
    loss: float
    ece: float
    precision: float
    recall: float
    reliability: Reliability | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RegressionMetrics:
    """A regressor's ``loss`` (``p_loss``: the mean over samples of ``|y - yhat|_p^p``) and ``mae``
    (the mean absolute error over samples and output dimensions).

    >>> RegressionMetrics(loss=0.25, mae=0.5).mae
    0.5
    """

    loss: float
    mae: float


def _flat_rows(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """``outputs`` and ``targets`` as (N, D) rows, checked to match."""
    out, y = outputs.reshape(len(outputs), -1), targets.reshape(len(targets), -1)
    if out.shape != y.shape:
        raise ValueError(
            f"regression outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} do not match: the "
            f"model must have one output per target dimension"
        )
    return out, y


def p_loss(outputs: Tensor, targets: Tensor, p: float = 2.0) -> Tensor:
    """The regression loss: the mean over samples of ``|y - yhat|_p^p = sum_d |y_d - yhat_d|^p``.

    >>> p_loss(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [2.0]]), p=3)  # (1 + 8) / 2
    tensor(4.5000)
    """
    out, y = _flat_rows(outputs, targets)
    return (y - out).abs().pow(p).sum(1).mean()


class PLoss(nn.Module):
    """``p_loss`` as a criterion (mean reduction over the samples of the batch).

    >>> PLoss(1.0)(torch.zeros(2, 1), torch.tensor([[1.0], [-3.0]]))
    tensor(2.)
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return p_loss(outputs, targets, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _metrics(probs: Tensor, log_probs: Tensor, targets: Tensor) -> Metrics:
    from torchmetrics.functional.classification import (  # import cost
        multiclass_calibration_error,
        multiclass_precision,
        multiclass_recall,
    )

    top1, top5 = accuracy(probs, targets, topk=(1, 5))  # percentages; top-5 is top-C when C < 5
    classes = probs.shape[1]
    ece = multiclass_calibration_error(probs, targets, classes, n_bins=ECE_BINS, norm="l1")
    predicted = probs.argmax(1)
    return Metrics(
        top1=top1.item() / 100,
        top5=top5.item() / 100,
        loss=F.nll_loss(log_probs, targets).item(),
        ece=float(ece),
        precision=float(multiclass_precision(predicted, targets, classes, average="macro")),
        recall=float(multiclass_recall(predicted, targets, classes, average="macro")),
        reliability=reliability(probs, targets),
    )


def regression_metrics(outputs: Tensor, targets: Tensor, p: float = 2.0) -> RegressionMetrics:
    """``loss`` (``p_loss`` with ``p``) and ``mae`` of ``outputs`` against ``targets`` (float64).

    >>> regression_metrics(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [2.0]]), p=2)
    RegressionMetrics(loss=2.5, mae=1.5)
    """
    out, y = (t.double() for t in _flat_rows(outputs, targets))
    return RegressionMetrics(loss=p_loss(out, y, p).item(), mae=(y - out).abs().mean().item())


def score(
    outputs: Tensor, targets: Tensor, task: str = "classification", p: float = 2.0
) -> Metrics | RegressionMetrics:
    """The metrics of ``task`` for a model's ``outputs`` (logits, or regression outputs) on ``targets``.

    >>> score(torch.tensor([[2.0], [0.0]]), torch.tensor([[1.0], [1.0]]), "regression").loss
    1.0
    """
    if task == "regression":
        return regression_metrics(outputs, targets, p)
    if task != "classification":
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    return _metrics(outputs.softmax(1), outputs.log_softmax(1), targets)


Gather = Callable[[Tensor], Tensor]


@torch.no_grad()
def _logits(
    model: nn.Module, loader: Iterable, device: torch.device, gather: Gather | None
) -> tuple[Tensor, Tensor]:
    outputs, targets = [], []
    for x, y, *_ in loader:
        out, y = model(x.to(device)), y.to(device)
        if gather is not None:  # every process's share, e.g. accelerator.gather_for_metrics
            out, y = gather(out), gather(y)
        outputs.append(out.float().cpu())
        targets.append(y.cpu())
    if not outputs:
        raise ValueError("the eval loader yielded no batches")
    target = torch.cat(targets)
    return torch.cat(outputs), target if target.is_floating_point() else target.long()  # regression: float


def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    gather: Gather | None = None,
    *,
    task: str = "classification",
    p_loss: float = 2.0,
) -> Metrics | RegressionMetrics:
    """The metrics of ``model`` in eval mode on ``loader`` (its training flags are restored): a
    classifier's top-1/top-5, loss, ECE, precision and recall, or with ``task="regression"`` the
    p-loss (exponent ``p_loss``) and the mean absolute error.

    >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))]
    >>> 0 <= evaluate_model(nn.Linear(3, 3), data).top1 <= 1
    True
    """
    with preserve_modes(model, training=False):
        outputs, targets = _logits(model, loader, next(model.parameters()).device, gather)
    return score(outputs, targets, task, p_loss)
