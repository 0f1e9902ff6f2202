"""Storage of parametrizations' tensors, and removing parametrizations so that a module is stock again.

``WeightList`` holds a parametrization's tensors (factors, vertices) under keys that end in
``.weight``. ``unparametrize`` removes parametrizations safely on deep copies. ``guard_rnns`` keeps
parametrized RNNs deep-copyable: ``nn.LSTM``/``nn.GRU`` cache their weights in ``_flat_weights``,
which after a forward would hold that forward's non-leaf tensors (and graph).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


class Slot(nn.Module):
    """One tensor of a ``WeightList``, held as this module's ``weight`` parameter.

    >>> Slot(torch.zeros(2)).weight.requires_grad
    True
    """

    def __init__(self, tensor: Tensor) -> None:
        super().__init__()
        self.weight = tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor)


class WeightList(nn.Module):
    """A list of parameters, each the ``weight`` of one ``Slot`` submodule: state_dict keys ``<i>.weight``.

    Indexing, ``len`` and iteration give the tensors, as an ``nn.ParameterList`` would. The keys
    end in ``.weight`` so that a timm ``first_conv``/``classifier`` name can point at each tensor of a
    parametrized layer (``conv1.parametrizations.weight.0.factors.0``): timm's pretrained loader
    adapts and resets those tensors like a stock layer's weight.

    >>> w = WeightList([torch.zeros(2, 3), torch.ones(3)])
    >>> sorted(w.state_dict()), tuple(w[-1].shape), len(w)
    (['0.weight', '1.weight'], (3,), 2)
    """

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        super().__init__()
        for i, tensor in enumerate(tensors):
            self.add_module(str(i), Slot(tensor))

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> nn.Parameter:
        n = len(self._modules)
        if not isinstance(index, int) or not -n <= index < n:
            raise IndexError(f"WeightList index {index!r} out of range for {n} tensors")
        return self._modules[str(index % n)].weight

    def tensors(self) -> list[nn.Parameter]:
        """The tensors as a list (torch.export before torch 2.8 cannot iterate a custom module)."""
        return [slot.weight for slot in self._modules.values()]

    def __iter__(self) -> Iterator[nn.Parameter]:
        return (slot.weight for slot in self._modules.values())


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
