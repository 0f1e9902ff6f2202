"""Removing parametrizations so that a module is stock again, safely on deep copies.

Also keeps parametrized RNNs deep-copyable: ``nn.LSTM``/``nn.GRU`` cache their weights in
``_flat_weights``, which after a forward would hold that forward's non-leaf tensors (and graph).
"""

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
    if isinstance(module, nn.RNNBase) and not parametrize.is_parametrized(module):
        for key in [k for k, hook in module._forward_hooks.items() if hook is release_flat_weights]:
            del module._forward_hooks[key]
        module._init_flat_weights()  # the cache points at the plain parameters again


def release_flat_weights(module: nn.RNNBase, args: object, output: object) -> None:
    """Forward hook of a parametrized RNN: drop the graph its ``_flat_weights`` cache keeps.

    The next forward recomputes the cache (parametrized tensors are new objects on every read), and
    without the graph the module can be deep-copied (``collapse``, ``extract_point``, EMA copies).

    >>> import copy
    >>> rnn = nn.GRU(2, 3)
    >>> _ = parametrize.register_parametrization(rnn, "weight_hh_l0", nn.Tanh())
    >>> _ = rnn.register_forward_hook(release_flat_weights)
    >>> _ = rnn(torch.randn(4, 1, 2)); _ = copy.deepcopy(rnn)
    """
    module._flat_weights = [None if w is None else w.detach() for w in module._flat_weights]


def guard_rnns(model: nn.Module) -> None:
    """Give every parametrized RNN of ``model`` the ``release_flat_weights`` hook (once)."""
    for module in model.modules():
        if (
            isinstance(module, nn.RNNBase)
            and parametrize.is_parametrized(module)
            and release_flat_weights not in module._forward_hooks.values()
        ):
            module.register_forward_hook(release_flat_weights)
