"""``depth_limit_resnet``: seed 002's fully-connected residual network, scaled for the depth limit.

``flatten -> read_in (U_in, input_size -> dim) -> L blocks -> head (dim -> num_classes)``, both
linear maps without bias. With ``delta = L^-alpha`` and ``beta = 1 - alpha``, block ``t`` (weight
``W_t``, ``dim x dim``; ``h`` a column vector, ``s`` the activation) computes, by ``augmentation``:

- ``none``:        ``h+ = delta * s(W_t h)``
- ``skip``:        ``h+ = h + delta * s(W_t h)``
- ``linear_skip``: ``h+ = h + W_t s(h)``
- ``inc_skip``:    ``h+ = h + (W_t - W_{t-1})^T s(W_{t-1} h)``, ``W_0 = 0``

(the original code's forms; the seed README writes ``inc_skip`` as ``h + s(h)(W_{t+1} - W_t)``:
docs/depth_limit.md lists where the README and the code differ). ``W h`` is
``F.linear(h, W)`` on a batch of row vectors.

Init of every block, with ``w = c * L^-(beta + 1/gamma)``: ``constant``: every entry ``w``;
``ntrunc``: normal, mean 0, std ``w``, truncated to ``[-w, w]``. ``c = 0.5`` (``init_scale='code'``,
the original code's constant, default) or ``c = 1/dim^2`` (``init_scale='readme'``, the seed
README's). ``read_in`` and ``head`` keep torch's ``nn.Linear`` init and, unless ``train_all``, are
frozen (``requires_grad=False``): only the blocks train, as in the original.

The blocks are ``model.blocks``, an ``nn.ModuleList`` of ``DepthLimitBlock`` (an ``nn.Linear``
subclass holding one ``dim x dim`` weight), so ``depth_limit_resnet_op2`` expands every block's
weight and ``depth_limit_resnet_line`` makes each a line; ``block_weights()`` stacks the current
(composed, or current-point) weights.

    model = timm.create_model("depth_limit_resnet", L=100, dim=15, input_size=784, num_classes=10)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import Tensor, nn

from timm_overparam.registry import register_model

__all__ = [
    "ACTIVATIONS",
    "AUGMENTATIONS",
    "INITS",
    "INIT_SCALES",
    "DepthLimitBlock",
    "DepthLimitResNet",
    "init_value",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "elu": F.elu,
    "relu": F.relu,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
}
AUGMENTATIONS = ("none", "skip", "linear_skip", "inc_skip")
INITS = ("constant", "ntrunc")
INIT_SCALES = ("code", "readme")


def _choice(name: str, value: Any, choices: Any) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _real(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def init_value(L: int, dim: int, alpha: float = 0.75, gamma: float = 1.0, init_scale: str = "code") -> float:
    """The block init's scale ``w = c * L^-(beta + 1/gamma)``, ``beta = 1 - alpha``; ``c = 0.5`` ('code')
    or ``1/dim^2`` ('readme').

    >>> init_value(16, 2, alpha=0.5, gamma=2.0)  # 0.5 * 16^-(0.5 + 0.5)
    0.03125
    >>> init_value(16, 2, alpha=0.5, gamma=2.0, init_scale="readme")  # 1/4 * 16^-1
    0.015625
    """
    L, dim = _count("L", L), _count("dim", dim)
    alpha, gamma = _real("alpha", alpha, 0.0, 1.0), _real("gamma", gamma)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0 (the init scale has L^(-1/gamma)), got {gamma!r}")
    c = 0.5 if _choice("init_scale", init_scale, INIT_SCALES) == "code" else 1.0 / dim**2
    return c * float(L) ** -((1.0 - alpha) + 1.0 / gamma)


class DepthLimitBlock(nn.Linear):
    """One residual block: a ``dim x dim`` weight (no bias) and the step it takes.

    ``step(h, weight, prev)`` is the block's update with an explicit weight (``prev``: the previous
    block's weight, ``None`` for ``W_0 = 0``, read by ``inc_skip`` only); ``forward(h, prev)`` uses
    ``self.weight``. ``reset_parameters`` draws the depth-scaled init (so copies re-initialised by
    ``reset_parameters``, as subspace vertices may be, follow the same law).

    >>> blk = DepthLimitBlock(2, "skip", "tanh", delta=0.5, init="constant", init_value=0.25)
    >>> blk.weight.tolist(), blk(torch.zeros(1, 2)).tolist()
    ([[0.25, 0.25], [0.25, 0.25]], [[0.0, 0.0]])
    """

    def __init__(
        self,
        dim: int,
        augmentation: str = "skip",
        activation: str = "tanh",
        *,
        delta: float = 1.0,
        init: str = "ntrunc",
        init_value: float = 1.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(dim, dim, bias=False, device=device, dtype=dtype)  # its reset_parameters waits
        self.augmentation = _choice("augmentation", augmentation, AUGMENTATIONS)
        self.activation = _choice("activation", activation, ACTIVATIONS)
        self.delta = _real("delta", delta)
        self.init = _choice("init", init, INITS)
        self.init_value = _real("init_value", init_value, 0.0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init = self.__dict__.get("init")
        if init is None:  # called by nn.Linear.__init__, before the block knows its init
            return
        with torch.no_grad():
            w = self.init_value
            if init == "constant":
                self.weight.fill_(w)
            elif w == 0:
                self.weight.zero_()
            else:
                nn.init.trunc_normal_(self.weight, mean=0.0, std=w, a=-w, b=w)

    def step(self, h: Tensor, weight: Tensor, prev: Tensor | None = None) -> Tensor:
        """``h+`` for the batch ``h`` (rows) with this block's ``weight`` and the previous ``prev``."""
        s = ACTIVATIONS[self.activation]
        aug = self.augmentation
        if aug == "none":
            return self.delta * s(F.linear(h, weight))
        if aug == "skip":
            return h + self.delta * s(F.linear(h, weight))
        if aug == "linear_skip":
            return h + F.linear(s(h), weight)
        # inc_skip, rows: (W_t - W_{t-1})^T v is v @ (W_t - W_{t-1}); W_0 = 0 gives s(0) @ W_t
        if prev is None:
            return h + s(torch.zeros_like(h)) @ weight
        return h + s(F.linear(h, prev)) @ (weight - prev)

    def forward(self, h: Tensor, prev: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.step(h, self.weight, prev)

    def extra_repr(self) -> str:
        return (
            f"dim={self.in_features}, augmentation={self.augmentation}, activation={self.activation}, "
            f"delta={self.delta:.4g}, init={self.init}, init_value={self.init_value:.4g}"
        )


def _img_hw(img_size: Any) -> tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, numbers.Integral) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and s >= 1 for s in size):
        raise ValueError(f"img_size must be an integer or (height, width), got {img_size!r}")
    return int(size[0]), int(size[1])


class DepthLimitResNet(nn.Module):
    """Seed 002's depth-limit residual network (module docstring); timm's model API.

    ``input_size``: features of one flattened input (784 for MNIST, 3072 for CIFAR-10, 1 for the
    1-D synthetic data); when None, ``in_chans * H * W`` with ``img_size`` given, else ``in_chans``.

    >>> m = DepthLimitResNet(L=4, dim=3, input_size=5, num_classes=2, init="constant")
    >>> m(torch.zeros(7, 5)).shape, m.block_weights().shape, m.delta
    (torch.Size([7, 2]), torch.Size([4, 3, 3]), 0.3535533905932738)
    """

    def __init__(
        self,
        L: int = 100,
        dim: int = 15,
        alpha: float = 0.75,
        gamma: float = 1.0,
        init: str = "ntrunc",
        activation: str = "tanh",
        augmentation: str = "skip",
        input_size: int | None = None,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | tuple[int, int] | None = None,
        train_all: bool = False,
        init_scale: str = "code",
        drop_rate: float = 0.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.L, self.dim = _count("L", L), _count("dim", dim)
        self.alpha = _real("alpha", alpha, 0.0, 1.0)
        self.beta = 1.0 - self.alpha
        self.gamma = _real("gamma", gamma)
        self.init, self.init_scale = _choice("init", init, INITS), init_scale
        self.init_value = init_value(self.L, self.dim, self.alpha, self.gamma, init_scale)
        self.delta = float(self.L) ** -self.alpha
        self.activation = _choice("activation", activation, ACTIVATIONS)
        self.augmentation = _choice("augmentation", augmentation, AUGMENTATIONS)
        if not isinstance(train_all, bool):
            raise ValueError(f"train_all must be True or False, got {train_all!r}")
        self.train_all = train_all
        self.in_chans = _count("in_chans", in_chans)
        hw = _img_hw(img_size) if img_size is not None else None
        if input_size is None:
            input_size = self.in_chans * (hw[0] * hw[1] if hw else 1)
        self.input_size = _count("input_size", input_size)
        self._input_shape = self._shape(hw)
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.drop_rate = _real("drop_rate", drop_rate, 0.0, 1.0)
        self.num_features = self.head_hidden_size = self.dim

        self.read_in = nn.Linear(self.input_size, self.dim, bias=False, **dd)
        self.blocks = nn.ModuleList(
            DepthLimitBlock(
                self.dim,
                self.augmentation,
                self.activation,
                delta=self.delta,
                init=self.init,
                init_value=self.init_value,
                **dd,
            )
            for _ in range(self.L)
        )
        self.head: nn.Module = self._new_head(self.num_classes, **dd)
        self.read_in.requires_grad_(self.train_all)

    def _shape(self, hw: tuple[int, int] | None) -> tuple[int, int, int]:
        """The (C, H, W) the pretrained cfg reports: img_size's, a square image, or a row of features."""
        if hw is not None and self.in_chans * hw[0] * hw[1] == self.input_size:
            return (self.in_chans, *hw)
        if self.input_size % self.in_chans == 0:
            side = math.isqrt(self.input_size // self.in_chans)
            if side * side == self.input_size // self.in_chans:
                return (self.in_chans, side, side)
            return (self.in_chans, 1, self.input_size // self.in_chans)
        return (1, 1, self.input_size)

    def _new_head(self, num_classes: int, **dd: Any) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.dim, num_classes, bias=False, **dd)
        head.requires_grad_(self.train_all)
        return head

    # timm's model API -----------------------------------------------------------------------

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head (trainable only with ``train_all``); ``global_pool`` is accepted and ignored."""
        w = self.read_in.weight
        self.num_classes = int(num_classes)
        self.head = self._new_head(self.num_classes, device=w.device, dtype=w.dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """The hidden state after the last block, (B, dim)."""
        x = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(-1, 1)
        if x.shape[1] != self.input_size:
            raise ValueError(
                f"depth_limit_resnet was built for input_size={self.input_size} features per sample, "
                f"got {x.shape[1]} (an input of shape {tuple(x.shape)} flattened): create it with "
                f"input_size={x.shape[1]} (e.g. 784 for MNIST, 3072 for CIFAR-10)"
            )
        h = self.read_in(x)
        prev = None
        for block in self.blocks:
            weight = block.weight  # an expanded or subspace weight is composed once per forward
            h = block.step(h, weight, prev)
            prev = weight
        return h

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # research -----------------------------------------------------------------------------

    @torch.no_grad()
    def block_weights(self) -> Tensor:
        """The blocks' current weights as one (L, dim, dim) tensor (detached; composed for op models)."""
        return torch.stack([block.weight.detach() for block in self.blocks])


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.0,),
        "std": (1.0,),
        "first_conv": "read_in",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"depth_limit_resnet": _cfg()})


@register_model
def depth_limit_resnet(pretrained: bool = False, **kwargs: Any) -> DepthLimitResNet:
    """Seed 002's depth-limit residual network: kwargs ``L``, ``dim``, ``alpha``, ``gamma``, ``init``,
    ``activation``, ``augmentation``, ``input_size`` (or ``img_size``), ``train_all``, ``init_scale``.
    """
    model = build_model_with_cfg(DepthLimitResNet, "depth_limit_resnet", pretrained, **kwargs)
    c = model.in_chans
    # the data config timm derives from the cfg: this instance's input shape (a fixed size)
    model.pretrained_cfg = model.default_cfg = {
        **model.pretrained_cfg,
        "input_size": model._input_shape,
        "fixed_input_size": True,
        "mean": (0.0,) * c,
        "std": (1.0,) * c,
    }
    return model
