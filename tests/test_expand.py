"""Exactness of the expand-and-project chain: composed weight, activation chain, solve, cache."""

import copy
import itertools

import pytest
import torch
from conftest import randomize_norm_stats, rel_err
from torch import nn

from timm_overparam import ExpandOptions, collapse_module, expand_module, overparameterize

CONVS = {
    "stride2_odd": lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1),
    "grouped_dilated_nonsquare": lambda: nn.Conv2d(
        6, 6, (3, 5), stride=(2, 1), padding=(1, 3), dilation=(1, 2), groups=3
    ),
    "depthwise": lambda: nn.Conv2d(6, 6, 5, padding=2, groups=6),
    "reflect": lambda: nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect"),
    "circular_even": lambda: nn.Conv2d(6, 6, 4, padding=2, padding_mode="circular"),
    "same_string": lambda: nn.Conv2d(6, 6, 3, padding="same", dilation=2),
    "pointwise": lambda: nn.Conv2d(6, 6, 1),
    "expanding_1x1": lambda: nn.Conv2d(6, 12, 1),
    "no_bias": lambda: nn.Conv2d(6, 6, 3, padding=1, bias=False),
    "conv1d": lambda: nn.Conv1d(6, 6, 5, stride=2, padding=2),
    "conv3d": lambda: nn.Conv3d(4, 4, (3, 1, 3), padding=1),
    "linear": lambda: nn.Linear(6, 6),
    "linear_expanding": lambda: nn.Linear(6, 14),
}
OPTIONS = {
    "plain3": dict(depth=3),
    "hidden_out_w2": dict(depth=3, width=2, hidden="out"),
    "bn": dict(depth=3, batch_norm=True, bn_eps=1e-3),
    "res_every": dict(depth=2, residual=True, residual_intervals=1),
    "res_overlap": dict(depth=6, residual=True, residual_intervals=[2, 3]),
    "res_depth": dict(depth=3, residual=True, residual_intervals=-1),
    "bn_res": dict(depth=4, batch_norm=True, residual=True, residual_intervals=[1, 2]),
    "learnable": dict(depth=2, learnable_residual=True),
    "factor_bias": dict(depth=3, factor_bias=True),
    "depth1": dict(depth=1),
}


def _input(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return torch.randn(3, 5, module.in_features, dtype=dtype)
    spatial = {1: (33,), 2: (31, 33), 3: (7, 9, 11)}[len(module.kernel_size)]
    return torch.randn(2, module.in_channels, *spatial, dtype=dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("kind", list(CONVS))
def test_collapse_and_chain_are_exact(kind, opt, dtype, tol):
    module = CONVS[kind]().to(dtype)
    reference = copy.deepcopy(module)
    x = _input(module, dtype)
    chain = expand_module(module, ExpandOptions(**OPTIONS[opt]))
    module.eval()
    with torch.no_grad():
        # the conversion keeps the function
        assert rel_err(module(x), reference(x)) <= tol
        randomize_norm_stats(module, eps=1e-3)
        for w in chain.factors:  # move away from the solved start
            w.add_(0.1 * torch.randn_like(w))
        expanded = chain.run_chain(module, x)
        composed = module(x)
        assert rel_err(composed, expanded) <= tol
        collapse_module(module)
        assert not hasattr(module, "parametrizations")
        assert rel_err(module(x), expanded) <= tol
    assert set(module.state_dict()) == set(reference.state_dict())


@pytest.mark.parametrize("kind", ["grouped_dilated_nonsquare", "linear", "expanding_1x1"])
@pytest.mark.parametrize("opt", ["plain3", "res_overlap", "factor_bias", "learnable"])
def test_chain_and_composed_give_the_same_gradients(kind, opt):
    module = CONVS[kind]().double()
    chain = expand_module(module, ExpandOptions(**OPTIONS[opt]))
    module.train()
    x = _input(module, torch.float64)
    grads = []
    composed = type(module).__bases__[0].forward  # the module class's own forward (layout.adopt)
    for run in (lambda: chain.run_chain(module, x), lambda: composed(module, x)):
        module.zero_grad()
        (run() ** 2).sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for g_chain, g_composed in zip(*grads, strict=True):
        assert rel_err(g_chain, g_composed) <= 1e-10


def test_host_gets_one_class_swap_and_gets_its_class_back():
    from timm.layers import StdConv2d

    conv, std = nn.Conv2d(4, 4, 3, padding=1), StdConv2d(4, 4, 3, padding=1)
    for module in (conv, std):
        expand_module(module, ExpandOptions(depth=3))
        assert "forward" not in vars(module) and "reparameterize" not in vars(module)
        assert "reparameterize" in vars(type(module))
    assert type(conv).__bases__ == (nn.Conv2d,) and type(conv).forward is not nn.Conv2d.forward
    assert type(std).__bases__ == (StdConv2d,)
    assert type(std).forward is StdConv2d.forward  # not chain-capable: its own forward, composed
    twin = copy.deepcopy(conv)
    collapse_module(conv)
    assert type(conv) is nn.Conv2d and type(twin).__name__ == "ParametrizedConv2d"
    x = torch.randn(2, 4, 5, 5)
    assert rel_err(twin(x), conv(x)) <= 1e-5
    twin.reparameterize()
    assert type(twin) is nn.Conv2d


def test_collapse_keeps_other_parametrizations_and_drops_the_chain_form():
    from torch.nn.utils import parametrize

    module = nn.Linear(4, 4)
    module.register_parameter("scale", nn.Parameter(torch.ones(4)))  # someone else's parametrized tensor
    parametrize.register_parametrization(module, "scale", nn.Tanh())
    expand_module(module, ExpandOptions(depth=2))
    x = torch.randn(3, 4)
    expected = module(x)
    collapse_module(module)
    assert parametrize.is_parametrized(module, "scale") and not parametrize.is_parametrized(module, "weight")
    assert not {"forward", "reparameterize"} & set(vars(type(module)))
    assert rel_err(module(x), expected) <= 1e-6


def test_batch_norm_chain_uses_batch_statistics_in_training():
    module = nn.Conv2d(4, 4, 3, padding=1)
    chain = expand_module(module, ExpandOptions(depth=2, batch_norm=True))
    module.train()
    x = torch.randn(8, 4, 9, 9) * 3 + 1
    y = module(x)
    inner = chain.factors[0]
    hidden = torch.nn.functional.conv2d(x, inner, padding=1)
    assert chain.prefers_chain(x.shape)
    # the first batch-norm saw the batch: its running mean moved towards the batch mean
    expected = 0.1 * hidden.mean(dim=(0, 2, 3))
    torch.testing.assert_close(chain.norms[0].running_mean, expected.detach(), atol=1e-5, rtol=1e-5)
    assert y.shape == (8, 4, 9, 9)


def test_eval_cache_never_serves_stale_weights():
    from timm.utils import ModelEmaV3

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    for m in (model[0], model[2]):
        expand_module(m, ExpandOptions(depth=3))
    x = torch.randn(2, 3, 6, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def fresh():
        chain = model[0].parametrizations.weight[0]
        bias = model[0].bias
        return torch.nn.functional.conv2d(x.to(bias.dtype), chain.compose(), bias)

    model.eval()
    with torch.no_grad():
        first = model[0](x)
        assert torch.equal(model[0](x), first)  # served from the cache
    # optimizer step
    model.train()
    model(x).sum().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model[0](x), first)
        torch.testing.assert_close(model[0](x), fresh(), atol=1e-6, rtol=1e-5)
        # load_state_dict
        state = copy.deepcopy(model.state_dict())
        for v in state.values():
            v.mul_(0.5) if v.is_floating_point() else None
        model.load_state_dict(state)
        torch.testing.assert_close(model[0](x), fresh(), atol=1e-6, rtol=1e-5)
        # EMA update of a copy
        ema = ModelEmaV3(model, decay=0.5)
        before = ema.module[0](x).clone()
        for p in model.parameters():
            p.add_(1.0)
        ema.update(model)
        ema_chain = ema.module[0].parametrizations.weight[0]
        after = ema.module[0](x)
        assert not torch.allclose(after, before)
        expected = torch.nn.functional.conv2d(x, ema_chain.compose(), ema.module[0].bias)
        torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)
        # .to()
        model.double()
        assert model[0](x.double()).dtype == torch.float64
        torch.testing.assert_close(model[0](x.double()), fresh(), atol=1e-6, rtol=1e-5)


def test_eval_cache_restarts_at_each_mode_change_for_writes_through_aliases():
    # DeepSpeed ZeRO sets every parameter's data to a view of one flat buffer (p.data = view) and
    # writes the update into the buffer: the parameter's own version counter never moves
    module = nn.Linear(5, 4)
    chain = expand_module(module, ExpandOptions(depth=3, factor_bias=True, batch_norm=True))
    params = list(module.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    x = torch.randn(3, 5)
    module.eval()
    with torch.no_grad():
        before = module(x)
        versions = [p._version for p in params]
        flat.mul_(1.5)  # the "optimizer step", through the buffer
        assert [p._version for p in params] == versions  # invisible to the cache's key
        module.train()
        module.eval()
        after = module(x)
        expected = x @ chain.compose().T + module.parametrizations.bias[0].chain.compose_bias(
            module.parametrizations.bias.original
        )
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-5)


def test_weight_and_bias_are_never_stale_and_assignment_solves():
    module = nn.Linear(5, 5)
    chain = expand_module(module, ExpandOptions(depth=3, factor_bias=True, batch_norm=True))
    module.train()
    module(torch.randn(4, 5)).sum().backward()
    with torch.no_grad():
        chain.factors[1].mul_(2)
    torch.testing.assert_close(module.weight, chain.compose(), rtol=1e-5, atol=1e-8)
    target_w, target_b = torch.randn(5, 5), torch.randn(5)
    module.weight = target_w
    module.bias = target_b
    torch.testing.assert_close(module.weight, target_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(module.bias, target_b, atol=1e-6, rtol=1e-5)


class _ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 4, bias=False)
        self.fc = nn.Linear(15, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_eval_cache_is_bypassed_under_torch_func_transforms():
    copies = [overparameterize(_ConvLinear(), depth=3, factor_bias=True).double().eval() for _ in range(3)]
    assert copies[0].fc.parametrizations.bias[0].__class__.__name__ == "ExpandProjectBias"
    x = torch.randn(5, 1, 8, dtype=torch.float64)
    params, buffers = torch.func.stack_module_state(copies)
    with torch.no_grad():
        copies[0](x)  # fills copy 0's eval caches: vmap must not serve them to the other copies
        out = torch.func.vmap(lambda p, b: torch.func.functional_call(copies[0], (p, b), (x,)))(
            params, buffers
        )
        for k, model in enumerate(copies):
            expected = model(x)
            assert not torch.allclose(expected, copies[(k + 1) % 3](x))
            assert rel_err(out[k], expected) <= 1e-12


def test_multihead_attention_out_proj_factors_get_gradients():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    expand_module(mha.out_proj, ExpandOptions(depth=3))
    x = torch.randn(2, 5, 8)
    mha(x, x, x)[0].sum().backward()
    for w in mha.out_proj.parametrizations.weight[0].factors:
        assert w.grad is not None and w.grad.abs().sum() > 0


def test_original_init_statistics():
    module = nn.Linear(256, 256)
    chain = expand_module(module, ExpandOptions(depth=3, init="original"))
    stds = [w.std().item() for w in chain.factors]
    assert stds[0] == pytest.approx(1 / 16, rel=0.05)
    assert stds[2] == pytest.approx(2**0.5 / 16, rel=0.05)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=0), "depth must be an integer >= 1"),
        (dict(depth=True), "depth must be an integer >= 1, got True"),
        (dict(width=0), "width must be a finite number > 0"),
        (dict(width=-1.0), "width must be a finite number > 0"),
        (
            dict(width=float("nan")),
            r"width must be a finite number > 0 \(1 keeps the layer's size\), got nan",
        ),
        (dict(width=float("inf")), "width must be a finite number > 0 .*, got inf"),
        (dict(width="2"), "width must be a finite number > 0 .*, got '2'"),
        (dict(hidden="max"), "hidden must be"),
        (dict(residual=True, residual_intervals=[0]), "residual_intervals"),
        (dict(residual=True, residual_intervals=[True]), "residual_intervals"),
        (dict(residual=True, residual_intervals="2"), "residual_intervals"),
        (dict(init="zeros"), "init must be"),
        (dict(bn_eps=0.0), "bn_eps must be a finite number > 0"),
        (dict(bn_eps=float("nan")), "bn_eps must be a finite number > 0 .*, got nan"),
        (dict(bn_momentum=float("inf")), r"bn_momentum must be a number in \[0, 1\] or None .*, got inf"),
        (dict(bn_momentum=1.5), r"bn_momentum must be a number in \[0, 1\]"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExpandOptions(**kwargs)


@pytest.mark.parametrize("name", ["batch_norm", "residual", "learnable_residual", "factor_bias"])
def test_switches_must_be_booleans(name):
    with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
        ExpandOptions(**{name: "no"})


def test_bad_kernel_sizes_and_modules():
    with pytest.raises(ValueError, match=r"compose to a \(5, 5\) kernel but the module's kernel is \(3, 3\)"):
        expand_module(nn.Conv2d(2, 2, 3), ExpandOptions(depth=2), kernel_sizes=[3, 3])
    with pytest.raises(TypeError, match="ConvTranspose2d has no conv/linear weight"):
        expand_module(nn.ConvTranspose2d(2, 2, 3), ExpandOptions())
    with pytest.raises(ValueError, match="too small to represent"):
        expand_module(nn.Linear(8, 8), ExpandOptions(width=0.5))


@pytest.mark.parametrize("depth,width", list(itertools.product([2, 8], [1, 2])))
def test_deep_float32_chain_is_exact(depth, width):
    module = nn.Conv2d(16, 16, 3, padding=1)
    reference = copy.deepcopy(module)
    expand_module(module, ExpandOptions(depth=depth, width=width))
    x = torch.randn(2, 16, 11, 11)
    module.eval()
    with torch.no_grad():
        assert rel_err(module(x), reference(x)) <= 1e-5


@pytest.mark.parametrize(
    "options",
    [
        dict(depth=3, residual=True),
        dict(depth=3, residual=True, learnable_residual=True),
        dict(depth=3, batch_norm=True),
        dict(depth=4, residual=True, batch_norm=True, factor_bias=True),
        dict(depth=2, width=2.0, residual=True),
    ],
)
@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(8, 8, 3, padding=1, device="meta"),
        lambda: nn.Conv2d(8, 16, (3, 5), stride=2, groups=2, dilation=(1, 2), device="meta"),
        lambda: nn.Linear(8, 6, device="meta"),
    ],
)
def test_expansion_with_chain_links_stays_on_the_module_device(options, make):
    """Every tensor of an expanded module (solve, composition, chain, collapse) follows the module's
    device: on ``meta`` nothing is computed, so a tensor made on the CPU would fail here as on a GPU."""
    module = make()
    expand_module(module, ExpandOptions(**options))
    assert all(t.is_meta for t in [*module.parameters(), *module.buffers()])
    x = (
        torch.empty(2, 8, 9, 9, device="meta")
        if isinstance(module, nn.Conv2d)
        else torch.empty(2, 8, device="meta")
    )
    assert module.weight.is_meta and module(x).is_meta
    module.eval()
    assert module(x).is_meta  # eval: the cached composed weight
    collapse_module(module)
    assert type(module) in (nn.Conv2d, nn.Linear) and module.weight.is_meta and module(x).is_meta
