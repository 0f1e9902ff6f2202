"""Metrics of a classifier on a loader: top-1/top-5 accuracy, mean cross-entropy, ECE.

Top-k is timm's ``accuracy``; ECE is torchmetrics' ``multiclass_calibration_error`` (L1, 20 equal
bins), imported when first computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from torch import Tensor, nn

from timm_overparam.core.modes import preserve_modes

ECE_BINS = 20


@dataclass(frozen=True)
class Metrics:
    """Top-1 and top-5 accuracy (fractions; top-5 is top-C with C < 5 classes), mean cross-entropy, ECE.

    >>> Metrics(top1=0.5, top5=1.0, loss=1.04, ece=0.0).top1
    0.5
    """

    top1: float
    top5: float
    loss: float
    ece: float


def _metrics(probs: Tensor, log_probs: Tensor, targets: Tensor) -> Metrics:
    from torchmetrics.functional.classification import multiclass_calibration_error  # import cost

    top1, top5 = accuracy(probs, targets, topk=(1, 5))  # percentages; top-5 is top-C when C < 5
    ece = multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=ECE_BINS, norm="l1")
    return Metrics(
        top1=top1.item() / 100,
        top5=top5.item() / 100,
        loss=F.nll_loss(log_probs, targets).item(),
        ece=float(ece),
    )


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
    return torch.cat(outputs), torch.cat(targets).long()


def evaluate_model(model: nn.Module, loader: Iterable, gather: Gather | None = None) -> Metrics:
    """Top-1/top-5, loss and ECE of ``model`` in eval mode on ``loader`` (its training flags are restored).

    >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))]
    >>> 0 <= evaluate_model(nn.Linear(3, 3), data).top1 <= 1
    True
    """
    with preserve_modes(model, training=False):
        logits, targets = _logits(model, loader, next(model.parameters()).device, gather)
    return _metrics(logits.softmax(1), logits.log_softmax(1), targets)
