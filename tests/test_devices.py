"""Device and dtype agnosticism on the ``meta`` device (issue 16): nothing is computed there, so any
tensor the library makes on the CPU, or in float32 beside a half-precision model, fails here as it
would on a GPU. Conversion, composition, the solve, forward, points, the regulariser, collapse and
point extraction, across the CI sample of architectures and every chain option."""

import pytest
import timm
import torch
from test_coverage import SAMPLE
from timm.layers import CondConv2d

import timm_overparam as top

OP_OPTIONS = {
    "plain": dict(depth=3),
    "residual_bn": dict(depth=3, residual=True, batch_norm=True),
    "learnable_residual": dict(depth=3, residual=True, learnable_residual=True, factor_bias=True),
    "wide": dict(depth=2, width=2.0),
}
# grouped convolutions (resnext), attention and LayerNorm (vit), a plain CNN; experts: CondConv2d
# alone, below
OPTION_ARCHS = ["resnet10t", "resnext26ts", "vit_tiny_patch16_224"]


def tensors(model):
    return dict(model.named_parameters()) | dict(model.named_buffers())


def check_device_and_dtype(model, base_dtypes, dtype):
    """Every tensor on meta; the base model's own tensors keep their dtype (timm keeps a few in
    float32 on purpose, e.g. eva02's rotary bands), every tensor the conversion made is ``dtype``."""
    for name, t in tensors(model).items():
        assert t.is_meta, name
        if t.is_floating_point() and name not in base_dtypes:
            assert t.dtype == dtype, (name, t.dtype)
        elif name in base_dtypes:
            assert t.dtype == base_dtypes[name], (name, t.dtype)


# nn.LSTM on meta runs torch's Python decomposition one time step at a time (6 s per forward of
# sequencer2d_s at 224x224); its layers take any size, so it gets 56x56 (8x8 steps, 1.6 s)
META_SIZE = {"sequencer2d_s": 56}


def meta_input(model, arch: str, dtype=torch.float32):
    c, h, w = model.pretrained_cfg["input_size"]
    side = META_SIZE.get(arch)
    return torch.empty(2, c, side or h, side or w, device="meta", dtype=dtype)


# timm before 1.0.31 sizes regnet's stages with torch.unique, which has no meta kernel (timm's
# build, not ours, fails there)
TIMM_BUILDS_REGNET_ON_META = tuple(int(v) for v in timm.__version__.split(".")[:3]) >= (1, 0, 31)
VARIANTS = [
    (a, f) for a in SAMPLE for f in ("op2", "line") if a != "regnetx_002" or TIMM_BUILDS_REGNET_ON_META
]


@pytest.mark.parametrize("arch,family", VARIANTS)
def test_registered_variants_build_run_and_export_on_meta(arch, family):
    with torch.device("meta"):
        model = timm.create_model(f"{arch}_{family}")
    x = meta_input(model, arch)
    check_device_and_dtype(model, {}, torch.float32)
    assert model(x).is_meta
    stock = top.collapse(model) if family == "op2" else top.extract_point(model, 0.5)
    check_device_and_dtype(stock, {}, torch.float32)
    assert stock.eval()(x).is_meta


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("option", [*OP_OPTIONS, "line", "simplex"])
@pytest.mark.parametrize("arch", OPTION_ARCHS)
def test_every_chain_option_and_half_precision_on_meta(arch, option, dtype):
    with torch.device("meta"):
        model = timm.create_model(arch).to(dtype)
    base = {name: t.dtype for name, t in tensors(model).items()}
    if option in OP_OPTIONS:
        top.overparameterize(model, **OP_OPTIONS[option])
        assert model.overparam_report.summary().startswith("op: ")
    else:
        top.subspace(model, option)
    new = {n: d for n, d in base.items() if n in tensors(model)}  # tensors the conversion kept
    check_device_and_dtype(model, new, dtype)
    x = meta_input(model, arch, dtype)
    out = model.train()(x)
    assert out.is_meta and out.dtype == dtype
    if option in OP_OPTIONS:
        model.eval()
        assert model(x).dtype == dtype  # the eval cache of the composed weights
        stock = top.collapse(model)
    else:
        point = top.sample_point(model, torch.Generator().manual_seed(0))
        reg = top.subspace_regularizer(model)
        assert reg.is_meta and reg.dtype == torch.promote_types(dtype, torch.float32)
        stock = top.extract_point(model, point)
    check_device_and_dtype(stock, {n: d for n, d in base.items() if n in tensors(stock)}, dtype)
    assert set(tensors(stock)) == set(base)  # the stock architecture's names again
    out = stock.eval()(x)
    assert out.is_meta and out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("option", list(OP_OPTIONS))
def test_expert_convolutions_on_meta(option, dtype):
    """CondConv2d (a weight per expert, mixed per sample): every chain option in every precision."""
    with torch.device("meta"):
        conv = CondConv2d(8, 16, 3, stride=2, padding=1, bias=True, num_experts=4).to(dtype)
    top.expand_module(conv, top.ExpandOptions(**OP_OPTIONS[option]))
    check_device_and_dtype(conv, {}, dtype)
    x = torch.empty(2, 8, 9, 9, device="meta", dtype=dtype)
    routing = torch.empty(2, 4, device="meta", dtype=dtype)
    assert conv(x, routing).shape == (2, 16, 5, 5) and conv(x, routing).dtype == dtype
    top.collapse_module(conv)
    assert set(tensors(conv)) == {"weight", "bias"} and conv.weight.is_meta and conv.weight.dtype == dtype
