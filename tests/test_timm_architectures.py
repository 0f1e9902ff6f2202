"""One training step, then collapse, on the smallest variant of many timm architecture families.

Each case: ``<arch>_op2`` trains one SGD step (every factor must get a gradient), then in eval mode
the expanded model, its collapse and the stock timm model loaded strictly from the collapse agree.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_overparam

NUM_CLASSES = 5
RTOL = 1e-5

SIDE = 64  # input side for the convolutional networks, which take any size
# (architecture, create_model kwargs): the smallest variant of each family in timm.list_models()
# (timm's synthetic test_* models left out); an img_size kwarg also sets the input side
CASES = [
    ("resnet10t", {}),
    ("vit_tiny_patch16_224", {"img_size": 64}),
    ("deit_tiny_patch16_224", {"img_size": 64}),
    ("convnext_zepto_rms", {}),
    ("efficientnet_lite0", {}),
    ("mobilenetv3_small_050", {}),
    ("regnetx_002", {}),
    ("levit_128s", {"img_size": 128}),
    ("fastvit_t8", {}),
    ("eva02_tiny_patch14_224", {"img_size": 56}),
    ("beit_base_patch16_224", {"img_size": 64, "depth": 2}),  # no smaller BEiT; 2 of its 12 blocks
    ("swinv2_tiny_window8_256", {"img_size": 64}),
    ("mobilevit_xxs", {}),
    ("nf_regnet_b0", {}),  # ScaledStdConv2d
    ("mixnet_s", {}),  # MixedConv2d
    ("coat_tiny", {"img_size": 64}),
    ("repvgg_a0", {}),
    ("resnetv2_50x1_bit", {}),  # StdConv2d
    ("maxvit_pico_rw_256", {"img_size": 64}),
    ("edgenext_xx_small", {}),
    ("tf_mobilenetv3_small_075", {}),  # Conv2dSame
    ("efficientnet_cc_b0_4e", {}),  # CondConv2d
]

FACTOR = ".parametrizations.weight.0.factors."


def _revive_zero_parameters(model: torch.nn.Module) -> None:
    """Draw every all-zero parameter outside the factors at random.

    Zero-initialised scales (zero_init_last batch-norm in ResNet/RegNet/ByobNet, the NF nets' gains,
    LeViT's bn_weight_init=0, SwinV2's res-post-norms) make whole residual branches dead at init: the
    stock model's weights there get exactly zero gradient too. Reviving them lets every factor be checked.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if FACTOR not in name and not p.any():
                p.normal_(0.0, 0.1)


def _max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize(("arch", "kwargs"), CASES, ids=[arch for arch, _ in CASES])
def test_train_step_then_collapse(arch: str, kwargs: dict) -> None:
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    side = kwargs.get("img_size", SIDE)
    torch.manual_seed(0)
    model = timm.create_model(f"{arch}_op2", **kwargs)
    assert model.overparam_report.converted, model.overparam_report.summary()
    _revive_zero_parameters(model)

    x = torch.randn(2, 3, side, side)
    model.train()
    F.cross_entropy(model(x), torch.randint(NUM_CLASSES, (2,))).backward()
    factors = {n: p.grad for n, p in model.named_parameters() if FACTOR in n}
    no_grad = [n for n, g in factors.items() if g is None or not g.any()]
    assert factors and not no_grad, f"{len(no_grad)}/{len(factors)} factors got no gradient: {no_grad}"
    torch.optim.SGD(model.parameters(), lr=0.01).step()

    model.eval()
    collapsed = timm_overparam.collapse(model).eval()
    stock = timm.create_model(arch, **kwargs).eval()
    stock.load_state_dict(collapsed.state_dict(), strict=True)
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (2, NUM_CLASSES) and torch.isfinite(ref).all()
        assert _max_rel_err(collapsed(x), ref) <= RTOL
        assert _max_rel_err(stock(x), ref) <= RTOL
