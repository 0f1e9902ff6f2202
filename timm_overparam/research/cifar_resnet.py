"""``cifar_resnet56``, ``cifar_resnet104``, ``cifar_resnet224``: He et al.'s CIFAR ResNets, depth-scaled.

He et al. (2016), section 4.2: a 3x3 conv (16 channels), then three stages of ``n`` basic blocks
(16, 32, 64 channels; the first block of stages 2 and 3 has stride 2), global average pooling and
a linear classifier: ``L = 6n + 2`` layers. Shortcuts are option A: identity, and where the shape
changes, stride-2 subsampling with the new channels zero-padded (half before, half after the old
ones): no parameters. Seed 002 scales every residual branch by ``n^-alpha`` (``alpha = 0.75``):
``out = relu(shortcut(x) + n^-alpha * bn2(conv2(relu(bn1(conv1(x))))))``. Convolutions and the
classifier's weight start from He's normal init (fan in), batch norms at weight 1, bias 0.

The seed trains them with plain SGD, lr = L^0.45, batch 128, 16 epochs (docs/depth_limit.md).
``block_weights()`` is not defined: the blocks differ in shape.

    model = timm.create_model("cifar_resnet56")  # 0.85M parameters, 10 classes, 3x32x32
"""

from __future__ import annotations

import numbers
from typing import Any

import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import Tensor, nn

from timm_overparam.registry import register_model

__all__ = ["CifarBasicBlock", "CifarResNet", "OptionAShortcut"]

WIDTHS = (16, 32, 64)


class OptionAShortcut(nn.Module):
    """He et al.'s option A: ``x[:, :, ::stride, ::stride]`` with zero channels padded to ``planes``.

    >>> import torch
    >>> OptionAShortcut(2, 4, 2)(torch.ones(1, 2, 4, 4))[0, :, 0, 0].tolist()
    [0.0, 1.0, 1.0, 0.0]
    """

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.in_planes, self.planes, self.stride = in_planes, planes, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.planes - self.in_planes
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2)) if extra else x

    def extra_repr(self) -> str:
        return f"{self.in_planes} -> {self.planes}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    """``relu(shortcut(x) + scale * bn2(conv2(relu(bn1(conv1(x))))))``, two 3x3 convs."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        scale: float = 1.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.scale = float(scale)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(planes, **dd)
        self.shortcut: nn.Module = (
            OptionAShortcut(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch before scaling."""
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x) + self.scale * self.branch(x))

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}"


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of ``depth = 6n + 2`` layers, branches scaled by ``n^-alpha``; timm's API.

    >>> import torch
    >>> m = CifarResNet(depth=8, num_classes=3)
    >>> m(torch.zeros(2, 3, 32, 32)).shape, m.n, m.branch_scale
    (torch.Size([2, 3]), 1, 1.0)
    """

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_chans: int = 3,
        alpha: float = 0.75,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"a CIFAR ResNet has depth 6n + 2 with n >= 1 (56, 104, 224, ...), got {depth!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise ValueError(f"alpha (the branch scale is n^-alpha) must be a number, got {alpha!r}")
        dd = {"device": device, "dtype": dtype}
        self.depth, self.n = int(depth), (int(depth) - 2) // 6
        self.alpha = float(alpha)
        self.branch_scale = float(self.n) ** -self.alpha
        self.num_classes, self.drop_rate = int(num_classes), float(drop_rate)
        self.num_features = self.head_hidden_size = WIDTHS[-1]
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, 1, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0], **dd)
        in_planes = WIDTHS[0]
        for i, planes in enumerate(WIDTHS):
            blocks = []
            for j in range(self.n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(CifarBasicBlock(in_planes, planes, stride, self.branch_scale, **dd))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_info = [
            {"num_chs": c, "reduction": 2**i, "module": f"layer{i + 1}"} for i, c in enumerate(WIDTHS)
        ]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc: nn.Module = self._new_fc(self.num_classes, **dd)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _new_fc(self, num_classes: int, **dd: Any) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes, **dd)
        nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
        return fc

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        w = self.conv1.weight
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.num_classes = int(num_classes)
        self.fc = self._new_fc(self.num_classes, device=w.device, dtype=w.dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map, (B, 64, H/4, W/4)."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),  # CIFAR-10's channel statistics
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"cifar_resnet{d}": _cfg() for d in (56, 104, 224)})


def _create(depth: int, pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, f"cifar_resnet{depth}", pretrained, depth=depth, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """He et al.'s CIFAR ResNet-56 (n = 9), residual branches scaled by n^-0.75 (``alpha``)."""
    return _create(56, pretrained, **kwargs)


@register_model
def cifar_resnet104(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """He et al.'s CIFAR ResNet-104 (n = 17), residual branches scaled by n^-0.75 (``alpha``)."""
    return _create(104, pretrained, **kwargs)


@register_model
def cifar_resnet224(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """He et al.'s CIFAR ResNet-224 (n = 37), residual branches scaled by n^-0.75 (``alpha``)."""
    return _create(224, pretrained, **kwargs)
