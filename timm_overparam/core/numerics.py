"""Numerical comparisons shared by the library, its checks and its tests."""

from __future__ import annotations

from torch import Tensor

__all__ = ["rel_err"]


def rel_err(a: Tensor, b: Tensor) -> float:
    """``max |a - b| / max |b|``: the largest error relative to the reference ``b``'s scale.

    A zero reference divides by 1e-30 (so any difference is huge, none is 0).

    >>> import torch
    >>> rel_err(torch.tensor([1.0, 2.01]), torch.tensor([1.0, 2.0]))  # doctest: +ELLIPSIS
    0.00499...
    """
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
