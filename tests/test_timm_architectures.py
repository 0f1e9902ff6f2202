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

# (architecture, input side, whether the side goes to create_model as img_size); each is the smallest
# variant of its family in timm.list_models() (timm's synthetic test_* models left out)
CASES = [
    ("resnet10t", 64, False),
    ("vit_tiny_patch16_224", 64, True),
    ("deit_tiny_patch16_224", 64, True),
    ("convnext_zepto_rms", 64, False),
    ("efficientnet_lite0", 64, False),
    ("mobilenetv3_small_050", 64, False),
    ("regnetx_002", 64, False),
    ("levit_128s", 64, True),
    ("fastvit_t8", 64, False),
    ("eva02_tiny_patch14_224", 56, True),
    ("beit_base_patch16_224", 64, True),
    ("swinv2_tiny_window8_256", 64, True),
    ("mobilevit_xxs", 64, False),
    ("nf_regnet_b0", 64, False),  # ScaledStdConv2d
    ("mixnet_s", 64, False),  # MixedConv2d
    ("coat_tiny", 64, True),
    ("repvgg_a0", 64, False),
    ("resnetv2_50x1_bit", 64, False),  # StdConv2d
    ("maxvit_pico_rw_256", 64, True),
    ("edgenext_xx_small", 64, False),
    ("tf_mobilenetv3_small_075", 64, False),  # Conv2dSame
    ("efficientnet_cc_b0_4e", 64, False),  # CondConv2d
]

FACTOR = ".parametrizations.weight.0.factors."


def _max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize(("arch", "size", "img_size"), CASES, ids=[c[0] for c in CASES])
def test_train_step_then_collapse(arch: str, size: int, img_size: bool) -> None:
    kwargs = {"num_classes": NUM_CLASSES, **({"img_size": size} if img_size else {})}
    torch.manual_seed(0)
    model = timm.create_model(f"{arch}_op2", **kwargs)
    assert model.overparam_report.converted, model.overparam_report.summary()

    x = torch.randn(2, 3, size, size)
    model.train()
    loss = F.cross_entropy(model(x), torch.randint(NUM_CLASSES, (2,)))
    loss.backward()
    factors = {n: p.grad for n, p in model.named_parameters() if FACTOR in n}
    assert factors
    no_grad = [n for n, g in factors.items() if g is None or not g.any()]
    assert not no_grad, f"{len(no_grad)}/{len(factors)} factors got no gradient: {no_grad}"
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
