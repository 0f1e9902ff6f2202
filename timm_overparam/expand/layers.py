"""Standalone expand-and-project layers that behave like their ``torch.nn`` counterparts.

Defaults follow the original layers: hidden size ``width * out``, a bias on every factor when
``bias=True``, kaiming-initialised factors. ``.weight`` and ``.bias`` are always the effective
(collapsed) tensors; ``eval()`` runs the collapsed weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from timm_overparam.expand.options import ExpandOptions
from timm_overparam.expand.parametrization import expand_module


def _kernel_list(kernel_sizes: int | Sequence[Any], depth: int | None, nd: int) -> list[tuple[int, ...]]:
    """``k`` -> ``[k, 1, ..., 1]`` (depth entries); a list sets the depth."""
    if isinstance(kernel_sizes, int) or (
        isinstance(kernel_sizes, tuple)
        and all(isinstance(k, int) for k in kernel_sizes)
        and len(kernel_sizes) == nd
        and nd > 1
    ):
        depth = 2 if depth is None else depth
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        first = (kernel_sizes,) * nd if isinstance(kernel_sizes, int) else tuple(kernel_sizes)
        return [first] + [(1,) * nd] * (depth - 1)
    sizes = [(k,) * nd if isinstance(k, int) else tuple(k) for k in kernel_sizes]
    if not sizes or any(len(k) != nd or min(k) < 1 for k in sizes):
        raise ValueError(f"kernel_sizes must be positive ints or {nd}-tuples, got {kernel_sizes!r}")
    if depth is not None and depth != len(sizes):
        raise ValueError(f"kernel_sizes {kernel_sizes!r} has {len(sizes)} entries but depth={depth}")
    return sizes


class _Overparam:
    """Shared construction of the standalone layers (mixed into nn.Linear / nn.ConvNd)."""

    def _expand(self, in_features: int, out_features: int, kernel_sizes: Any, **options: Any) -> None:
        options.setdefault("hidden", "out")
        options.setdefault("init", "original")
        options["factor_bias"] = self.bias is not None
        opts = ExpandOptions(**options)
        if opts.residual and in_features != out_features:
            raise ValueError(
                f"residual=True needs in == out, got {in_features} -> {out_features}; "
                "drop residual or use learnable_residual=True"
            )
        if opts.batch_norm and self.bias is None:
            raise ValueError("batch_norm=True needs bias=True: the folded batch-norm shift becomes the bias")
        chain = expand_module(self, opts, kernel_sizes)
        if chain.intervals != opts.intervals:
            raise ValueError(
                f"residual_intervals {list(opts.intervals)} need equal sizes at both ends of each link; "
                f"node sizes are {chain.sizes} (use width=1 or other intervals)"
            )


class OverparamLinear(_Overparam, nn.Linear):
    """``nn.Linear`` whose weight is a product of ``depth`` factors.

    >>> import torch
    >>> layer = OverparamLinear(16, 32, width=1, depth=2)
    >>> tuple(layer(torch.randn(1, 16)).shape)
    (1, 32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        depth: int = 2,
        device=None,
        dtype=None,
        **options: Any,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._expand(in_features, out_features, None, depth=depth, **options)


class _OverparamConvNd(_Overparam):
    _nd = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_sizes: int | Sequence[Any] = 3,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        depth: int | None = None,
        device=None,
        dtype=None,
        **options: Any,
    ) -> None:
        sizes = _kernel_list(kernel_sizes, depth, self._nd)
        kernel = tuple(sum(k[i] for k in sizes) - len(sizes) + 1 for i in range(self._nd))
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._expand(in_channels, out_channels, sizes, depth=len(sizes), **options)


class OverparamConv1d(_OverparamConvNd, nn.Conv1d):
    """``nn.Conv1d`` as a chain of convolutions; ``kernel_sizes=[5, 3, 1]`` gives a kernel of 7.

    >>> tuple(OverparamConv1d(2, 4, kernel_sizes=[5, 3, 1], padding=3).kernel_size)
    (7,)
    """

    _nd = 1


class OverparamConv2d(_OverparamConvNd, nn.Conv2d):
    """``nn.Conv2d`` as a chain of convolutions; ``kernel_sizes=[5, 3, 1]`` gives a 7x7 kernel.

    >>> import torch
    >>> layer = OverparamConv2d(2, 4, kernel_sizes=[5, 3, 1], padding=3)
    >>> tuple(layer.kernel_size), tuple(layer(torch.randn(1, 2, 8, 8)).shape)
    ((7, 7), (1, 4, 8, 8))
    """

    _nd = 2
