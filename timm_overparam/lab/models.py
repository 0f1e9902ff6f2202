"""The exploration lab's models (seed 003), registered in timm so every family derives from them.

Pattern task (a sequence of 64 floats, shape ``(B, 1, 64)``):

- ``lab_naive_cnn(filters=n)``: ``Conv1d(1, n, 4, bias=False)`` -> max over positions ->
  ``Linear(n, 1)``.
- ``lab_random_conv(filters=n)``: the same with the convolution frozen (``requires_grad=False``):
  only the decision layer trains.
- ``lab_hyper_cnn()``: a hypernetwork. A seed ``z`` in R^2 -> ``Linear(2, 4)`` ->
  ``LeakyReLU(0.2)`` -> ``Linear(4, 4)`` makes the 4-tap kernel; the logit is the max of the
  convolution plus a trained scalar bias.

BoolNet task (two numbers, shape ``(B, 2)``):

- ``lab_boolnet(width=w)``: ``Linear(2, w)`` -> ReLU -> ``Linear(w, 1)``.
- ``lab_hyper_boolnet()``: two generators ``Linear(2, 3)`` -> ``LeakyReLU(0.2)`` ->
  ``Linear(3, 4 | 2)`` make the first layer (2 x 2, no bias) and the second (2 x 1) of a width-2
  network, plus a trained scalar bias.

Every model returns ``(B, 1)`` logits (timm's ``num_classes=1``). A hypernetwork's seed is the
non-persistent buffer ``z`` (zeros: the evaluation seed); training gives it a fresh ``z ~ N(0, I)``
per step. Its ``generated_parameters`` is the size of the network it makes (the deployed network).
Being timm architectures, they have ``_op2/_op3/_op4`` and ``_line/_curve/_simplex`` variants:

    model = timm.create_model("lab_naive_cnn_op2", filters=3)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import Tensor, nn

from timm_overparam.registry import register_model

__all__ = ["BoolNet", "HyperBoolNet", "HyperCNN", "NaiveCNN"]

KERNEL = 4  # taps of the pattern task's convolution


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class NaiveCNN(nn.Module):
    """``Conv1d(1, filters, 4, bias=False)`` -> max over positions -> ``Linear(filters, 1)``.

    ``frozen_conv=True`` is the seed's RandomConv: the kernels keep their random init.

    >>> NaiveCNN(3)(torch.zeros(2, 1, 64)).shape
    torch.Size([2, 1])
    """

    def __init__(self, filters: int = 1, frozen_conv: bool = False, num_classes: int = 1) -> None:
        super().__init__()
        if num_classes != 1:
            raise ValueError(
                f"the lab's models give one logit (num_classes=1), got num_classes={num_classes}"
            )
        self.num_classes, self.num_features = 1, _check_size("filters", filters)
        self.conv = nn.Conv1d(1, filters, KERNEL, bias=False)
        self.conv.requires_grad_(not frozen_conv)
        self.head = nn.Linear(filters, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).amax(dim=2))


class HyperCNN(nn.Module):
    """A kernel generated from the seed ``z``: ``max(conv1d(x, g(z))) + b`` with ``g`` a 2-4-4 MLP.

    >>> HyperCNN()(torch.zeros(2, 1, 64)).shape
    torch.Size([2, 1])
    """

    generated_parameters = KERNEL + 1  # the generated kernel and the bias

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        if num_classes != 1:
            raise ValueError(
                f"the lab's models give one logit (num_classes=1), got num_classes={num_classes}"
            )
        self.num_classes, self.num_features = 1, 1
        self.weight_maker = nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(0.2), nn.Linear(4, KERNEL))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("z", torch.zeros(2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.weight_maker(self.z).reshape(1, 1, KERNEL)
        return F.conv1d(x, kernel).amax(dim=2) + self.bias


class BoolNet(nn.Module):
    """``Linear(2, width)`` -> ReLU -> ``Linear(width, 1)``.

    >>> BoolNet(2)(torch.zeros(5, 2)).shape
    torch.Size([5, 1])
    """

    def __init__(self, width: int = 2, num_classes: int = 1) -> None:
        super().__init__()
        if num_classes != 1:
            raise ValueError(
                f"the lab's models give one logit (num_classes=1), got num_classes={num_classes}"
            )
        self.num_classes, self.num_features = 1, _check_size("width", width)
        self.fc = nn.Linear(2, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.fc(x)))


class HyperBoolNet(nn.Module):
    """A width-2 network generated from the seed ``z``: ``relu(x W1(z)) W2(z) + b``.

    >>> HyperBoolNet()(torch.zeros(5, 2)).shape
    torch.Size([5, 1])
    """

    generated_parameters = 2 * 2 + 2 + 1  # first layer, second layer, bias

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        if num_classes != 1:
            raise ValueError(
                f"the lab's models give one logit (num_classes=1), got num_classes={num_classes}"
            )
        self.num_classes, self.num_features = 1, 2
        self.first_maker = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.2), nn.Linear(3, 4))
        self.second_maker = nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(0.2), nn.Linear(3, 2))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("z", torch.zeros(2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        first = self.first_maker(self.z).reshape(2, 2)
        second = self.second_maker(self.z).reshape(2, 1)
        return F.relu(x @ first) @ second + self.bias


def _cfg(first_conv: str, classifier: str) -> dict[str, Any]:
    # not images: no input_size (timm's builder would read an image's (C, H, W) from it)
    return {
        "url": "",
        "num_classes": 1,
        "input_size": None,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.0,),
        "std": (1.0,),
        "first_conv": first_conv,
        "classifier": classifier,
    }


default_cfgs = generate_default_cfgs(
    {
        "lab_naive_cnn": _cfg("conv", "head"),
        "lab_random_conv": _cfg("conv", "head"),
        "lab_hyper_cnn": _cfg("weight_maker.0", "weight_maker.2"),
        "lab_boolnet": _cfg("fc", "head"),
        "lab_hyper_boolnet": _cfg("first_maker.0", "second_maker.2"),
    }
)


@register_model
def lab_naive_cnn(pretrained: bool = False, **kwargs: Any) -> NaiveCNN:
    """Seed 003's NaiveCNN: kwarg ``filters``."""
    return build_model_with_cfg(NaiveCNN, "lab_naive_cnn", pretrained, **kwargs)


@register_model
def lab_random_conv(pretrained: bool = False, **kwargs: Any) -> NaiveCNN:
    """Seed 003's RandomConv (NaiveCNN with a frozen convolution): kwarg ``filters``."""
    return build_model_with_cfg(NaiveCNN, "lab_random_conv", pretrained, frozen_conv=True, **kwargs)


@register_model
def lab_hyper_cnn(pretrained: bool = False, **kwargs: Any) -> HyperCNN:
    """Seed 003's hypernetwork for the pattern task."""
    return build_model_with_cfg(HyperCNN, "lab_hyper_cnn", pretrained, **kwargs)


@register_model
def lab_boolnet(pretrained: bool = False, **kwargs: Any) -> BoolNet:
    """Seed 003's BoolNet: kwarg ``width``."""
    return build_model_with_cfg(BoolNet, "lab_boolnet", pretrained, **kwargs)


@register_model
def lab_hyper_boolnet(pretrained: bool = False, **kwargs: Any) -> HyperBoolNet:
    """Seed 003's HyperBoolNet."""
    return build_model_with_cfg(HyperBoolNet, "lab_hyper_boolnet", pretrained, **kwargs)
