"""Removing parametrizations so that a module is stock again, safely on deep copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize


def unparametrize(module: nn.Module, names: Sequence[str], requires_grad: bool) -> None:
    """Replace the parametrized tensors ``names`` of ``module`` by their current values, in place.

    They come back as plain ``nn.Parameter``s (in the order given), so the state_dict keys are the
    stock module's.

    >>> lin = nn.Linear(2, 2)
    >>> _ = parametrize.register_parametrization(lin, "weight", nn.Identity())
    >>> unparametrize(lin, ["weight"], requires_grad=True); type(lin).__name__, sorted(lin.state_dict())
    ('Linear', ['bias', 'weight'])
    """
    # parametrize keeps its properties on a class that deep copies share: removing them from a
    # copy's class would strip the original too, so give this module a class of its own first
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    with torch.no_grad():
        for name in names:
            value = getattr(module, name)
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            if name in module._buffers:  # a tensor parametrized by a sequence comes back as a buffer
                del module._buffers[name]
                module.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
