"""BatchNorm statistics of one point: recalibration (as ``torch.optim.swa_utils.update_bn``), snapshots.

Points of a subspace share their BatchNorm buffers during training, so every evaluated point needs
its own statistics. They are plain dicts keyed like the base model's state_dict
(``'layer1.0.bn1.running_mean'``...): load them into a stock model with ``strict=False``, into the
subspace model with ``load_bn_stats``, or pass them to ``at_point``/``extract_point``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

from timm_overparam.core.modes import preserve_modes

BNStats = dict[str, Tensor]
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _norms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def current_bn_stats(model: nn.Module) -> BNStats:
    """A copy of every BatchNorm's running statistics, keyed like the state_dict.

    >>> sorted(current_bn_stats(nn.Sequential(nn.BatchNorm1d(2))))
    ['0.num_batches_tracked', '0.running_mean', '0.running_var']
    """
    stats = {}
    for name, bn in _norms(model).items():
        for buf in _BUFFERS:
            value = getattr(bn, buf)
            if value is not None:
                stats[f"{name}.{buf}" if name else buf] = value.detach().clone()
    return stats


def load_bn_stats(model: nn.Module, stats: BNStats) -> None:
    """Copy ``stats`` (from ``recalibrate_bn`` or ``current_bn_stats``) into the model's BatchNorms.

    Example: ``load_bn_stats(model, recalibrate_bn(model, loader, 50))``
    """
    expected = current_bn_stats(model)
    if set(stats) != set(expected):
        missing, unknown = sorted(set(expected) - set(stats)), sorted(set(stats) - set(expected))
        raise ValueError(f"BatchNorm statistics do not fit the model: missing {missing}, unknown {unknown}")
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for key, value in stats.items():
            buffers[key].copy_(value)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
) -> BNStats:
    """Recompute every BatchNorm's statistics at the current point; returns them (also left in the model).

    ``torch.optim.swa_utils.update_bn`` on the first ``num_batches`` batches (all when None): running
    stats reset, ``momentum=None`` (cumulative average), batches forwarded in train mode without
    gradients. Every module's train/eval flag and every momentum are restored, also on errors.

    Example: ``with at_point(model, 0.5): stats = recalibrate_bn(model, train_loader, num_batches=50)``
    """
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise ValueError(f"num_batches must be an integer >= 1 or None, got {num_batches!r}")
    norms = list(_norms(model).values())
    if not norms:
        return {}
    seen = 0

    def batches() -> Iterator[Any]:
        nonlocal seen
        for batch in itertools.islice(loader, num_batches):
            seen += 1
            yield batch

    momenta = {bn: bn.momentum for bn in norms}  # update_bn restores them only when nothing raises
    try:
        with preserve_modes(model):  # update_bn leaves every module in the model's own mode
            update_bn(batches(), model, device)
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    if not seen:
        raise ValueError("the loader yielded no batches: BatchNorm statistics cannot be recalibrated")
    return current_bn_stats(model)
