"""The host-module contract: what an expanded module gives the chain, and what the chain gives it.

This file is the one place where the expand-and-project family touches the module it converts
(the *host*). Everything else in ``timm_overparam.expand`` works on the ``Layout`` record and on
tensors.

**Read once, at expansion** (``layout_of``, ``chain_capable``), into a frozen ``Layout``:

- the weight's shape, read as a (grouped) conv/linear weight: ``out``, ``in_per_group``,
  ``groups``, ``kernel`` and, for timm's ``CondConv2d``, the expert dimension
  (``num_experts``/``weight_shape``);
- for convolutions, the geometry of the host's own conv op: ``stride``, ``padding`` (ints or
  ``'same'``/``'valid'``), ``dilation``, ``padding_mode`` and the explicit padding torch derives from
  them (``_reversed_padding_repeated_twice``, the one private torch attribute read);
- whether the host's ``forward`` is a plain linear op on ``self.weight`` and ``self.bias``
  (``nn.Linear``, ``nn.Conv1d/2d/3d`` or a subclass that keeps their ``forward`` and
  ``_conv_forward``): only then may the chain run on activations.

Changing a host's stride, padding or dilation after expansion is not supported (collapse, change,
expand again). At run time the chain reads only the host's ``weight``/``bias`` parametrizations
(the factors it owns and the raw last bias ``b_d``) and ``training``.

**Given, at expansion** (``adopt``): one class swap. ``torch.nn.utils.parametrize`` already gives
every parametrized module a class of its own (``Parametrized<Class>``, a subclass of the module's
class); ``adopt`` replaces it by a copy with the same name, bases and attributes plus

- ``reparameterize()``: collapses the module (so ``timm.utils.reparameterize_model`` does);
- for chain-capable hosts, ``forward``: in training, the activation-space chain where the cost
  model picks it, else the module class's own ``forward`` (which reads the composed weight).

Removing the last parametrization (``collapse_module``, ``parametrize.remove_parametrizations``)
restores the module's own class, and with it the plain ``forward``: no instance attribute is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class Layout:
    """How a module's weight reads as a (grouped) conv/linear weight, and the geometry of its op.

    >>> lay = layout_of(nn.Conv2d(4, 6, 3, stride=2, groups=2))
    >>> lay.out, lay.in_per_group, lay.groups, lay.kernel, lay.stride, lay.fan_in
    (6, 2, 2, (3, 3), (2, 2), 18)
    """

    out: int
    in_per_group: int
    groups: int
    kernel: tuple[int, ...]
    experts: tuple[int, ...] = ()
    weight_shape: tuple[int, ...] = ()
    # convolutions only (empty for linear layers and CondConv2d, which always compose)
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    padding_mode: str = "zeros"
    pads: tuple[int, ...] = ()  # F.pad order: last dimension first, (left, right) each

    @property
    def fan_in(self) -> int:
        """Inputs per output (per group): ``in_per_group * prod(kernel)``."""
        return self.in_per_group * math.prod(self.kernel)

    @property
    def inputs(self) -> int:
        """Input channels (features) of the module."""
        return self.in_per_group * self.groups


def layout_of(module: nn.Module) -> Layout | None:
    """The weight layout of a convertible module, or None (ConvTranspose, unknown weights).

    >>> layout_of(nn.Linear(3, 5)).weight_shape, layout_of(nn.ConvTranspose2d(2, 2, 3)) is None
    ((5, 3), True)
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        return None
    shape = tuple(weight.shape)
    if isinstance(module, nn.Linear):
        return Layout(shape[0], shape[1], 1, (), (), shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed:
            return None
        padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
        return Layout(
            shape[0],
            shape[1],
            module.groups,
            shape[2:],
            (),
            shape,
            stride=tuple(module.stride),
            padding=padding,
            dilation=tuple(module.dilation),
            padding_mode=module.padding_mode,
            pads=tuple(getattr(module, "_reversed_padding_repeated_twice", ())),  # set by _ConvNd.__init__
        )
    ws = getattr(module, "weight_shape", None)
    if hasattr(module, "num_experts") and ws is not None and len(shape) == 2:  # timm CondConv2d
        return Layout(ws[0], ws[1], module.groups, tuple(ws[2:]), (shape[0],), shape)
    return None


def chain_capable(module: nn.Module) -> bool:
    """True when the module's forward is a plain linear op on ``self.weight`` and ``self.bias``.

    Only then may the chain run in activation space; every other module composes the weight.

    >>> from timm.layers import StdConv2d
    >>> chain_capable(nn.Conv2d(2, 2, 3)), chain_capable(StdConv2d(2, 2, 3))
    (True, False)
    """
    cls = type(module)
    if isinstance(module, nn.Linear):
        return cls.forward is nn.Linear.forward
    for base in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        if isinstance(module, base):
            return cls.forward is base.forward and cls._conv_forward is base._conv_forward
    return False


def _host_forward(self: nn.Module, x: Tensor) -> Tensor:
    """``forward`` of a chain-capable host: the activation chain where cheaper in training."""
    chain = self.parametrizations.weight[0]
    if self.training and chain.prefers_chain(x.shape):
        return chain.run_chain(self, x)
    return type(self).__bases__[0].forward(self, x)  # the module class's own forward


def adopt(module: nn.Module, chain_form: bool, reparameterize: Callable[[nn.Module], None]) -> None:
    """Swap the parametrized ``module``'s class for a copy that adds ``reparameterize`` (and ``forward``).

    Call after ``register_parametrization``. ``chain_form`` adds the dispatching ``forward``.

    >>> from torch.nn.utils import parametrize
    >>> lin = nn.Linear(2, 2)
    >>> _ = parametrize.register_parametrization(lin, "weight", nn.Identity())
    >>> adopt(lin, False, lambda m: None); type(lin).__name__, "reparameterize" in vars(type(lin))
    ('ParametrizedLinear', True)
    """
    cls = type(module)
    attrs = dict(cls.__dict__)
    attrs["reparameterize"] = reparameterize
    if chain_form:
        attrs["forward"] = _host_forward
    module.__class__ = type(cls.__name__, cls.__bases__, attrs)


def release(module: nn.Module) -> None:
    """Drop what ``adopt`` added from a module that keeps other parametrizations (so its own class).

    Only for ``collapse_module``, after ``unparametrize`` gave the module a fresh class.

    >>> from torch.nn.utils import parametrize
    >>> lin = nn.Linear(2, 2)
    >>> _ = parametrize.register_parametrization(lin, "weight", nn.Identity())
    >>> adopt(lin, True, lambda m: None); release(lin); "forward" in vars(type(lin))
    False
    """
    cls = type(module)
    for attr in ("forward", "reparameterize"):
        if attr in cls.__dict__:
            delattr(cls, attr)
