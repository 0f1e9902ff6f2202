"""Train/eval modes: run a block in one mode and give every submodule its own flag back afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["preserve_modes"]


@contextmanager
def preserve_modes(model: nn.Module, training: bool | None = None) -> Iterator[nn.Module]:
    """Save every submodule's ``training`` flag, optionally ``model.train(training)``, restore on exit.

    The flags come back one by one (a model in train mode with a frozen, eval-mode part keeps
    both), also after an exception.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()); _ = net[1].eval()
    >>> with preserve_modes(net, training=False):
    ...     net[0].training
    False
    >>> net.training, net[0].training, net[1].training
    (True, True, False)
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for m, flag in modes:
            m.training = flag
