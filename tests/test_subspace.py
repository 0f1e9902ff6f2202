"""Subspaces: coefficients, points, sampling, regulariser, init, BN recalibration, export, registry."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import randomize_norm_stats, rel_err
from timm.optim import create_optimizer_v2
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.swa_utils import update_bn

import timm_overparam as top
from timm_overparam.subspace.parametrization import SubspaceParam, _unwrap


def _param(module: nn.Module, name: str) -> SubspaceParam:
    return module.parametrizations[name][0]


def _params(module: nn.Module) -> list[SubspaceParam]:
    plists = getattr(module, "parametrizations", {}).values()
    return [p[0] for p in plists if isinstance(p[0], SubspaceParam)]


def _random_vertices(module: nn.Module) -> None:
    """Give every vertex of every subspace tensor its own random values."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".vertices." in name:
                p.normal_(0.0, 1.0)


class _Scale(nn.Module):
    """A module with a raw parameter and no reset_parameters."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(1, -1, 1, 1)


class _Double(nn.Module):
    """A parametrization that is not this plugin's."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        _Scale(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


# ------------------------------------------------------------------------------------ coefficients
def test_line_points_zero_and_one_are_the_vertices_exactly():
    lin = nn.Linear(16, 8)
    top.subspace(lin, "line")
    p = _param(lin, "weight")
    with torch.no_grad():
        p.vertices[0].mul_(1e3).add_(0.1)  # values where (1 - a) v0 + a v1 would round
    top.set_point(lin, 0.0)
    assert torch.equal(lin.weight, p.vertices[0]) and torch.equal(lin.bias, _param(lin, "bias").vertices[0])
    top.set_point(lin, 1.0)
    assert torch.equal(lin.weight, p.vertices[1])


@pytest.mark.parametrize("a", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_line_and_curve_weights_follow_their_formulas(a: float):
    for shape in ("line", "curve"):
        lin = top.subspace(nn.Linear(6, 5), shape).double()
        top.set_point(lin, a)
        v = _param(lin, "weight").vertices
        if shape == "line":
            expected = (1 - a) * v[0] + a * v[1]
        else:
            expected = (1 - a) ** 2 * v[0] + 2 * a * (1 - a) * v[1] + a**2 * v[2]
        torch.testing.assert_close(lin.weight, expected, rtol=1e-14, atol=1e-14)


def test_simplex_weights_are_barycentric():
    net = top.subspace(nn.Linear(6, 5), "simplex", n=4).double()
    t = [0.1, 0.2, 0.3, 0.4]
    top.set_point(net, t)
    v = _param(net, "weight").vertices
    torch.testing.assert_close(
        net.weight, sum(ti * vi for ti, vi in zip(t, v, strict=True)), rtol=1e-14, atol=0
    )
    top.set_point(net, [0.0, 0.0, 1.0, 0.0])
    assert torch.equal(net.weight, v[2])


def test_default_point_is_the_midpoint_and_dtype_moves_with_the_model():
    net = top.subspace(nn.Linear(3, 2), "curve")
    assert _param(net, "weight").coefficients.tolist() == [0.25, 0.5, 0.25]
    net.double()
    assert _param(net, "weight").coefficients.dtype == torch.float64
    assert net(torch.randn(1, 3, dtype=torch.float64)).dtype == torch.float64


def test_assigning_the_tensor_sets_every_vertex():
    lin = top.subspace(nn.Linear(3, 2), "simplex", n=3)
    lin.weight = torch.ones(2, 3)
    assert all(torch.equal(v, torch.ones(2, 3)) for v in _param(lin, "weight").vertices)


# ------------------------------------------------------------------------------------- points
@pytest.mark.parametrize(
    ("shape", "n", "point", "message"),
    [
        ("line", None, -0.1, r"point -0.1 is outside \[0, 1\]"),
        ("curve", None, 1.5, r"point 1.5 is outside \[0, 1\]"),
        ("line", None, float("nan"), r"point nan is outside"),
        ("line", None, [0.5, 0.5], r"a line point is a number in \[0, 1\], got \[0.5, 0.5\]"),
        ("simplex", 3, 0.5, r"a simplex point is 3 barycentric coordinates, got 0.5"),
        ("simplex", 3, [0.5, 0.5], r"a simplex point has 3 coordinates, got 2 in \[0.5, 0.5\]"),
        ("simplex", 3, [0.6, 0.6, -0.2], r"coordinate -0.2 of point \[0.6, 0.6, -0.2\] is outside"),
        ("simplex", 3, [0.2, 0.2, 0.2], r"coordinates of point \[0.2, 0.2, 0.2\] sum to 0.6000"),
    ],
)
def test_bad_points_name_the_value(shape, n, point, message):
    net = top.subspace(nn.Linear(2, 2), shape, n)
    before = _param(net, "weight").coefficients.clone()
    with pytest.raises(ValueError, match=message):
        top.set_point(net, point)
    assert torch.equal(_param(net, "weight").coefficients, before)


def test_simplex_point_within_tolerance_and_per_module_points():
    net = top.subspace(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), "simplex", n=3)
    top.set_point(net, [0.3, 0.3, 0.4 + 5e-7])  # sums to 1 within 1e-6
    top.set_point(net, {"1": [1.0, 0.0, 0.0]})  # one module moves, the other stays
    assert _param(net[1], "bias").coefficients.tolist() == [1.0, 0.0, 0.0]
    assert _param(net[0], "weight").coefficients[0].item() == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"no subspace tensors in module\(s\) \['2'\]"):
        top.set_point(net, {"2": [1.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="has no subspace tensors"):
        top.set_point(nn.Linear(2, 2), 0.5)


def test_points_reach_through_data_parallel_and_torch_compile_wrappers():
    net = top.subspace(_small_cnn(), "line", init="copy")
    for wrapped in (nn.DataParallel(torch.compile(net)), torch.compile(nn.DataParallel(net))):
        top.set_point(wrapped, 0.25)
        assert _param(net[0], "weight").coefficients[1].item() == 0.25
        assert isinstance(top.sample_point(wrapped), float)  # the config is found through the wrappers
    plain = _small_cnn()
    assert _unwrap(plain) is plain and _unwrap(nn.DataParallel(torch.compile(plain))) is plain


def test_at_point_restores_the_previous_point_even_on_error():
    net = top.subspace(_small_cnn(), "line", layerwise=True)
    top.sample_point(net, torch.Generator().manual_seed(1))
    before = {n: b.clone() for n, b in net.named_buffers() if n.endswith("coefficients")}
    with top.at_point(net, 1.0):
        assert torch.equal(net[0].weight, _param(net[0], "weight").vertices[1])
    with pytest.raises(RuntimeError, match="boom"), top.at_point(net, 0.0):
        raise RuntimeError("boom")
    after = {n: b for n, b in net.named_buffers() if n.endswith("coefficients")}
    assert len(before) == 11 and all(torch.equal(before[n], after[n]) for n in before)


# ----------------------------------------------------------------------------------- sampling
def test_shared_sampling_gives_one_point_for_every_tensor():
    net = top.subspace(_small_cnn(), "curve")
    point = top.sample_point(net, torch.Generator().manual_seed(0))
    assert isinstance(point, float) and 0 < point < 1
    expected = torch.tensor([(1 - point) ** 2, 2 * point * (1 - point), point**2])
    coeffs = [b for n, b in net.named_buffers() if n.endswith("coefficients")]
    assert len(coeffs) == 11
    for c in coeffs:
        torch.testing.assert_close(c, expected, rtol=1e-5, atol=1e-8)


def test_layerwise_sampling_draws_one_point_per_module():
    net = top.subspace(_small_cnn(), "line", layerwise=True)
    points = top.sample_point(net, torch.Generator().manual_seed(0))
    assert sorted(points) == ["0", "1", "2", "4", "5", "8"]
    assert len(set(points.values())) == 6  # independent draws
    for name, a in points.items():
        module = net.get_submodule(name)
        for tensor in module.parametrizations:  # weight and bias of one module share the draw
            assert _param(module, tensor).coefficients[1].item() == pytest.approx(a)
    again = top.sample_point(net, torch.Generator().manual_seed(0))
    assert again == points


def test_simplex_sampling_is_dirichlet_one():
    net = top.subspace(nn.Linear(2, 2), "simplex", n=3)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([top.sample_point(net, g) for _ in range(4000)])
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(len(t)), rtol=1e-5, atol=1e-12)
    # Dirichlet(1, 1, 1): each coordinate is Beta(1, 2): mean 1/3, second moment 1/6
    torch.testing.assert_close(t.mean(0), torch.full((3,), 1 / 3), rtol=1e-5, atol=0.015)
    torch.testing.assert_close(t.square().mean(0), torch.full((3,), 1 / 6), rtol=1e-5, atol=0.01)


def test_line_sampling_is_uniform():
    net = top.subspace(nn.Linear(2, 2), "line")
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([top.sample_point(net, g) for _ in range(4000)])
    assert 0 <= a.min() and a.max() <= 1
    assert abs(a.mean() - 0.5) < 0.015 and abs(a.var() - 1 / 12) < 0.005


def test_sampled_loss_trains_a_fresh_point_per_chunk():
    net = top.subspace(_small_cnn(), "line", layerwise=True).double()
    _random_vertices(net)
    x, y = torch.randn(5, 3, 9, 9, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    loss = top.sampled_loss(
        net, F.cross_entropy, x, y, num_samples=2, generator=torch.Generator().manual_seed(3)
    )
    loss.backward()  # one backward through two points: the first chunk's graph is still valid
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    g = torch.Generator().manual_seed(3)
    expected = 0.0
    for xs, ys in ((x[:3], y[:3]), (x[3:], y[3:])):  # tensor_split: sizes 3 and 2, mean of the two losses
        first = top.sample_point(net, g)
        expected = expected + F.cross_entropy(net(xs), ys) / 2
    assert first != top.sample_point(net, torch.Generator().manual_seed(3))  # the chunks' points differ
    expected.backward()
    assert rel_err(loss, expected) < 1e-12
    assert all(rel_err(a, p.grad) < 1e-12 for a, p in zip(got, net.parameters(), strict=True))


@pytest.mark.parametrize("n", [0, 6, 1.5, True])
def test_sampled_loss_checks_num_samples(n):
    net = top.subspace(nn.Linear(2, 2), "line")
    with pytest.raises(ValueError, match=f"num_samples.*{n}"):
        top.sampled_loss(net, F.cross_entropy, torch.randn(5, 2), torch.zeros(5, dtype=torch.long), n)


# -------------------------------------------------------------------------------- regulariser
def test_regularizer_equals_the_formula_on_two_tensors():
    net = nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 2), nn.LayerNorm(2))
    top.subspace(net, "line", init="copy")
    values = {
        "0.weight": ([[1.0, 2.0]], [[3.0, 0.0]]),
        "1.weight": ([[0.0], [1.0]], [[1.0], [1.0]]),
    }
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(7.0)  # biases and norm weights: outside the default set, must not count
        for name, (v0, v1) in values.items():
            module, tensor = name.split(".")
            _param(net[int(module)], tensor).vertices[0].copy_(torch.tensor(v0))
            _param(net[int(module)], tensor).vertices[1].copy_(torch.tensor(v1))
    # dot = 1*3 + 2*0 + 0*1 + 1*1 = 4; |v0|^2 = 1 + 4 + 0 + 1 = 6; |v1|^2 = 9 + 0 + 1 + 1 = 11
    reg = top.subspace_regularizer(net)
    assert reg.item() == pytest.approx(16 / 66, rel=1e-6)
    reg.backward()
    assert net[0].parametrizations.weight[0].vertices[0].grad.abs().sum() > 0
    assert net[0].parametrizations.bias[0].vertices[0].grad is None

    only_first = top.subspace(
        nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 2)), init="copy", regularize=["0.*"]
    )
    with torch.no_grad():
        only_first.load_state_dict(net.state_dict(), strict=False)
    # 0.weight and 0.bias (7, 7): dot = 3 + 49 = 52; |v0|^2 = 5 + 49; |v1|^2 = 9 + 49
    assert top.subspace_regularizer(only_first).item() == pytest.approx(52**2 / (54 * 58), rel=1e-6)


@pytest.mark.parametrize("shape,n", [("line", 2), ("curve", 3)])
def test_regularizer_gradient_is_the_formulas(shape, n):
    net = top.subspace(_small_cnn(), shape, n=n).double()
    _random_vertices(net)
    top.subspace_regularizer(net, torch.Generator().manual_seed(5)).backward()
    i, j = torch.randperm(n, generator=torch.Generator().manual_seed(5))[:2].tolist() if n > 2 else (0, 1)
    regularized = [p for m in net.modules() for p in _params(m) if p.regularized]
    pairs = [(p.vertices[i], p.vertices[j]) for p in regularized]
    assert len(pairs) == 3  # two conv weights and the linear weight
    others = [p.vertices[k] for p in regularized for k in range(n) if k not in (i, j)]
    assert all(v.grad is None for v in others)
    a = [x.detach().clone().requires_grad_() for x, _ in pairs]
    b = [y.detach().clone().requires_grad_() for _, y in pairs]
    dot = sum((x * y).sum() for x, y in zip(a, b, strict=True))
    ref = dot**2 / (sum(x.square().sum() for x in a) * sum(y.square().sum() for y in b))
    ref.backward()
    for (x, y), ra, rb in zip(pairs, a, b, strict=True):
        torch.testing.assert_close(x.grad, ra.grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(y.grad, rb.grad, rtol=1e-10, atol=1e-14)
    half = top.subspace(nn.Linear(64, 64), init="copy", noise=1.0).half()
    value = top.subspace_regularizer(half)
    assert value.dtype == torch.float32 and 0 < value.item() < 1


def test_regularizer_on_a_line_draws_no_random_number():
    net = top.subspace(nn.Linear(3, 2), "line")
    _random_vertices(net)
    g = torch.Generator().manual_seed(1)
    state, global_state = g.get_state(), torch.get_rng_state()
    value = top.subspace_regularizer(net, g)
    assert torch.equal(g.get_state(), state)
    top.subspace_regularizer(net)
    assert torch.equal(torch.get_rng_state(), global_state)
    with torch.no_grad():
        v0, v1 = (
            torch.cat([p.vertices[k].reshape(-1) for p in _params(net) if p.regularized]) for k in (0, 1)
        )
        assert value.item() == pytest.approx(F.cosine_similarity(v0, v1, dim=0).item() ** 2, rel=1e-5)


class _Regularizer(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self) -> torch.Tensor:
        return top.subspace_regularizer(self.model)


def test_regularizer_under_vmap_matches_each_copy():
    def make() -> _Regularizer:
        net = top.subspace(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), "line").double()
        _random_vertices(net)
        return _Regularizer(net)

    copies = [make() for _ in range(3)]
    params, buffers = torch.func.stack_module_state(copies)
    out = torch.func.vmap(lambda p, b: torch.func.functional_call(copies[0], (p, b), ()))(params, buffers)
    out.sum().backward()
    assert out.shape == (3,)
    for k, wrapper in enumerate(copies):
        value = wrapper()
        value.backward()
        assert rel_err(out[k].detach(), value.detach()) <= 1e-12
        grads = {name: p.grad for name, p in wrapper.named_parameters()}
        for name, stacked in params.items():
            if grads[name] is None:  # biases: not regularized
                assert stacked.grad is None or not stacked.grad[k].any()
            else:
                assert rel_err(stacked.grad[k], grads[name]) <= 1e-12, name
    assert sum(g is not None for g in grads.values()) == 4  # two vertices of two weights


def test_regularizer_picks_two_distinct_vertices():
    net = top.subspace(nn.Linear(2, 1, bias=False), "simplex", n=3, init="copy")
    vertices = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
    with torch.no_grad():
        for v, value in zip(_param(net, "weight").vertices, vertices, strict=True):
            v.copy_(torch.tensor([value]))
    pairs = {(0, 1): 1 / 2, (0, 2): 0.0, (1, 2): 4 / 8}  # cos^2 of each pair
    g = torch.Generator().manual_seed(0)
    seen = {round(top.subspace_regularizer(net, g).item(), 6) for _ in range(30)}
    assert seen == {0.0, 0.5}  # never a vertex with itself (1.0)
    assert seen == {round(v, 6) for v in pairs.values()}


# ------------------------------------------------------------------------------------ init
def test_copy_init_keeps_a_pretrained_timm_model(tmp_path):
    base = timm.create_model("resnet10t", num_classes=5)
    randomize_norm_stats(base)
    file = top.save_weights(base.eval(), tmp_path / "base.safetensors")
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ref = base(x)
    for shape in ("line", "curve", "simplex"):
        model = timm.create_model(
            f"resnet10t_{shape}",
            pretrained=True,
            num_classes=5,
            subspace_init="copy",
            pretrained_cfg_overlay=dict(file=str(file), num_classes=5),
        ).eval()
        with torch.no_grad():
            for point in [0.0, 0.3, 1.0] if shape != "simplex" else [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]:
                top.set_point(model, point)
                out = model(x)
                if shape == "line":
                    assert torch.equal(out, ref)  # lerp of two equal vertices is exact
                else:
                    assert rel_err(out, ref) <= 1e-6


def test_copy_init_noise_keeps_vertex_zero():
    net = _small_cnn()
    original = net[0].weight.detach().clone()
    top.subspace(net, "line", init="copy", noise=0.1)
    p = _param(net[0], "weight")
    assert torch.equal(p.vertices[0], original)
    delta = p.vertices[1] - p.vertices[0]
    assert 0.05 < (delta.std() / p.vertices[0].std()).item() < 0.2
    assert torch.equal(_param(net[1], "weight").vertices[1], _param(net[1], "weight").vertices[0])  # std 0


def test_independent_init_is_timms_own_init():
    torch.manual_seed(3)
    first = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3)
    second = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=3)
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224_line", img_size=32, num_classes=3)
    for name, p in first.named_parameters():
        module, _, tensor = name.rpartition(".")
        vertices = _param(model.get_submodule(module), tensor).vertices
        assert torch.equal(vertices[0], p) and torch.equal(vertices[1], second.get_parameter(name)), name
    assert 0.015 < model.parametrizations.pos_embed[0].vertices[1].std() < 0.025  # trunc_normal(.02)
    assert model.overparam_report.converted["pos_embed"].endswith(
        "independent (fresh base model), regularized"
    )


def test_independent_init_without_a_factory_resets_modules():
    net = top.subspace(_small_cnn(), "curve")
    report = net.overparam_report.converted
    conv = _param(net[0], "weight").vertices
    assert not torch.equal(conv[0], conv[1]) and not torch.equal(conv[1], conv[2])
    assert report["0.weight"] == "curve, 3 vertices, independent (reset_parameters), regularized"
    assert report["1.weight"] == "curve, 3 vertices, independent (reset_parameters)"
    assert report["2.gain"] == "curve, 3 vertices, copy (_Scale has no reset_parameters)"
    gain = _param(net[2], "gain").vertices
    assert torch.equal(gain[0], gain[2])


# ---------------------------------------------------------------------------------- conversion
def test_conversion_report_and_selection():
    net = _small_cnn()
    net.add_module("tied", nn.Linear(8, 4))
    net.tied.weight = net[8].weight
    net.tied.bias.requires_grad_(False)
    net.add_module("lazy", nn.LazyLinear(2))
    net.add_module("small", nn.Linear(2, 2))
    parametrize.register_parametrization(net[4], "weight", _Double())  # someone else's parametrization
    top.subspace(net, "line", exclude=["*.bias"], min_params=8)
    report = net.overparam_report
    assert sorted(report.converted) == ["0.weight", "1.weight", "2.gain", "5.weight"]
    assert report.skipped == {
        "0.bias": "excluded by pattern '*.bias'",
        "1.bias": "excluded by pattern '*.bias'",
        "4.bias": "excluded by pattern '*.bias'",
        "4.weight": "already parametrized",
        "5.bias": "excluded by pattern '*.bias'",
        "8.weight": "tied to another module's parameter",
        "8.bias": "excluded by pattern '*.bias'",
        "tied.weight": "tied to another module's parameter",
        "tied.bias": "frozen (requires_grad=False)",
        "lazy.weight": "lazy parameter not initialised: run one forward pass before converting",
        "lazy.bias": "lazy parameter not initialised: run one forward pass before converting",
        "small.weight": "4 parameters < min_params=8",
        "small.bias": "excluded by pattern '*.bias'",
    }
    assert net.subspace_config == top.SubspaceConfig("line")
    assert "subspace: 4 converted, 13 skipped" in str(report)


def test_bad_options():
    with pytest.raises(ValueError, match="a line has 2 vertices, got n=3; use shape='simplex'"):
        top.subspace(nn.Linear(2, 2), "line", n=3)
    with pytest.raises(ValueError, match="shape must be 'line', 'curve' or 'simplex', got 'plane'"):
        top.subspace(nn.Linear(2, 2), "plane")
    with pytest.raises(ValueError, match="init must be 'independent' or 'copy', got 'zeros'"):
        top.subspace(nn.Linear(2, 2), init="zeros")
    for noise in (-1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=f"noise must be a finite number >= 0 .*, got {noise!r}"):
            top.subspace(nn.Linear(2, 2), noise=noise)
    with pytest.raises(ValueError, match="an integer n >= 2 vertices, got 1"):
        top.subspace(nn.Linear(2, 2), "simplex", n=1)
    with pytest.raises(ValueError, match=r"shape must be 'line', 'curve' or 'simplex', got \['line'\]"):
        top.subspace(nn.Linear(2, 2), ["line"])
    with pytest.raises(TypeError, match="layerwise must be True or False, got 'yes'"):
        top.subspace(nn.Linear(2, 2), layerwise="yes")
    with pytest.raises(TypeError, match=r"factory must make a fresh base model when called .*, got 3"):
        top.subspace(nn.Linear(2, 2), factory=3)
    with pytest.raises(TypeError, match="regularize must be 'matrices' or a list of fnmatch patterns, got 5"):
        top.subspace(nn.Linear(2, 2), regularize=5)
    with pytest.raises(ValueError, match="min_params must be an integer >= 0, got True"):
        top.subspace(nn.Linear(2, 2), min_params=True)
    with pytest.raises(ValueError, match=r"noise must be a finite number >= 0 .*, got nan"):
        timm.create_model("test_resnet_line", subspace_noise=float("nan"))


# --------------------------------------------------------------------------- BN and export
def _batches(n: int, side: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, side, side, generator=g) * 2 + 1, torch.zeros(4)) for _ in range(n)]


def test_recalibration_equals_update_bn_on_the_extracted_point():
    model = timm.create_model("resnet10t_line", num_classes=5)
    _random_vertices(model)
    loader = _batches(5)
    model.eval()
    model.layer1.train()  # a mixed mode, restored module by module
    momenta = {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    with top.at_point(model, 0.3):
        stats = top.recalibrate_bn(model, loader, num_batches=3)
    assert not model.training and model.layer1.training and not model.conv1.training
    assert momenta == {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}

    plain = top.extract_point(model, 0.3)
    update_bn(loader[:3], plain)
    expected = top.current_bn_stats(plain)
    assert stats.keys() == expected.keys() and len(stats) == 3 * len(momenta)
    for key, value in expected.items():
        torch.testing.assert_close(stats[key], value, rtol=1e-6, atol=1e-7)
    assert stats["bn1.num_batches_tracked"].item() == 3

    other = top.recalibrate_bn(top.extract_point(model, 0.9), loader, num_batches=3)
    assert not torch.allclose(other["layer2.0.bn1.running_var"], stats["layer2.0.bn1.running_var"])


def test_recurrent_layers_train_copy_and_extract_after_a_forward():
    # nn.LSTM caches its weights (_flat_weights); parametrized, the cache held a forward's graph
    # and deep copies (extract_point, collapse, EMA) failed after the first step (sequencer2d)
    net = top.subspace(nn.LSTM(3, 4, num_layers=2, bidirectional=True), init="copy", noise=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    net.double()
    top.sample_point(net, torch.Generator().manual_seed(0))
    net(x)[0].sum().backward()
    assert all(p.grad is not None and p.grad.any() for p in net.parameters())
    top.set_point(net, 0.3)
    expected = net(x)[0]
    plain = top.extract_point(net, 0.3)
    assert type(plain) is nn.LSTM
    assert sorted(plain.state_dict()) == sorted(nn.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict())
    assert not plain._forward_hooks  # the plugin's hook goes with the parametrizations
    assert all(
        w is getattr(plain, n) for w, n in zip(plain._flat_weights, plain._flat_weights_names, strict=True)
    )
    assert rel_err(plain(x)[0], expected) <= 1e-12
    stock = nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    stock.load_state_dict(plain.state_dict(), strict=True)
    assert rel_err(stock(x)[0], expected) <= 1e-12


def test_extract_point_loads_into_stock_timm_with_its_own_statistics(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t_simplex", num_classes=5)
    _random_vertices(model)
    training_stats = top.current_bn_stats(model)
    point = [0.2, 0.5, 0.3]
    with top.at_point(model, point):
        stats = top.recalibrate_bn(model, _batches(3))
    top.load_bn_stats(model, training_stats)  # the model keeps its own; the point's travel as data

    plain = top.extract_point(model, point, bn_stats=stats)
    assert plain.pretrained_cfg["architecture"] == "resnet10t"
    assert not hasattr(plain, "subspace_config") and not hasattr(plain, "overparam_report")
    # the copy got a class of its own: removing its parametrizations left the model's intact
    assert type(plain.conv1[0]) is nn.Conv2d and type(model.conv1[0]) is not nn.Conv2d
    file = top.save_weights(plain, tmp_path / "point.safetensors")
    stock = timm.create_model(
        "resnet10t",
        pretrained=True,
        num_classes=5,
        pretrained_cfg_overlay=dict(file=str(file), num_classes=5),
    ).eval()
    stock.load_state_dict(plain.state_dict(), strict=True)

    x = torch.randn(2, 3, 40, 40)
    model.eval()
    with torch.no_grad():
        with top.at_point(model, point, bn_stats=stats):
            out = model(x)
        assert torch.equal(stock(x), out)
        # outside the block, the model's own statistics and point are back
        assert torch.equal(model.bn1.running_var, training_stats["bn1.running_var"])
        assert _param(model.fc, "weight").coefficients.tolist() == pytest.approx([1 / 3] * 3)
        assert not torch.equal(model(x), out)
    with pytest.raises(ValueError, match=r"missing \['bn1.num_batches_tracked'"):
        top.load_bn_stats(model, {k: v for k, v in stats.items() if k != "bn1.num_batches_tracked"})


def test_recalibration_needs_batches():
    net = top.subspace(_small_cnn(), "line")
    with pytest.raises(ValueError, match="num_batches must be an integer >= 1 or None, got 0"):
        top.recalibrate_bn(net, _batches(1), num_batches=0)
    with pytest.raises(ValueError, match="the loader yielded no batches"):
        top.recalibrate_bn(net, [])
    assert top.recalibrate_bn(nn.Linear(2, 2), []) == {}


# ------------------------------------------------------------------------------------ registry
def test_timm_optimizer_keeps_the_base_models_weight_decay_exemptions():
    model = timm.create_model("vit_tiny_patch16_224_line", img_size=32, patch_size=8, num_classes=3)
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=0.05)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert {
        "parametrizations.pos_embed.0.vertices.0.weight",
        "parametrizations.cls_token.0.vertices.1.weight",
    } <= names
    assert "blocks.0.attn.qkv.parametrizations.weight.0.vertices.0.weight" not in names
    stock = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3)
    assert top.extract_point(model, 0.5).no_weight_decay() == stock.no_weight_decay()


def test_every_architecture_has_subspace_variants():
    derived = set(timm.list_models(module="op")) | set(timm.list_models(module="subspace"))
    base = [m for m in timm.list_models() if m not in derived]
    for suffix in ("line", "curve", "simplex"):
        names = timm.list_models(f"*_{suffix}")
        assert len(names) == len(base) and set(names) == {f"{m}_{suffix}" for m in base}
    assert timm.list_models("resnet50_line", pretrained=True) == []


def test_registry_options():
    m = timm.create_model(
        "convnext_atto_simplex",
        num_classes=3,
        subspace_n=4,
        subspace_layerwise=True,
        subspace_init="copy",
        subspace_exclude=["head.*"],
        subspace_regularize="*.conv_dw.weight",
    )
    assert m.pretrained_cfg["architecture"] == "convnext_atto_simplex"
    assert m.subspace_config == top.SubspaceConfig("simplex", 4, True, "copy", 0.0, ("*.conv_dw.weight",))
    report = m.overparam_report
    assert (
        report.base == "convnext_atto" and report.skipped["head.fc.weight"] == "excluded by pattern 'head.*'"
    )
    regularized = [n for n, d in report.converted.items() if d.endswith("regularized")]
    assert regularized and all(n.endswith("conv_dw.weight") for n in regularized)
    with pytest.raises(
        TypeError, match="unknown option subspace_factory=<class 'list'>; valid options: subspace_shape"
    ):
        timm.create_model("resnet18_line", subspace_factory=list)


# ------------------------------------------------------------------------------ architectures
# (architecture, shape, create_model kwargs, input side): the smallest variant of each family
CASES = [
    ("resnet10t", "line", {}, 32),  # BatchNorm2d
    ("mobilenetv3_small_050", "curve", {}, 32),  # BatchNormAct2d, squeeze-excite
    ("regnetx_002", "simplex", {}, 32),
    ("vit_tiny_patch16_224", "line", {"img_size": 32}, 32),  # LayerNorm, pos_embed, cls_token
    ("deit3_small_patch16_224", "curve", {"img_size": 32, "depth": 2}, 32),  # LayerScale
    ("convnext_atto", "simplex", {}, 32),  # raw layer-scale gamma, LayerNorm2d
    ("swin_tiny_patch4_window7_224", "line", {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1)}, 64),
    ("eva02_tiny_patch14_224", "curve", {"img_size": 28}, 28),  # rope, pos_embed
    ("beit_base_patch16_224", "simplex", {"img_size": 32, "depth": 1}, 32),  # rel-pos tables, gamma_1/2
    ("cait_xxs24_224", "line", {"img_size": 32, "depth": 2}, 32),  # class attention, layer-scale
    ("levit_128s", "line", {"img_size": 64}, 64),  # its own linear + BatchNorm1d blocks
    ("efficientnet_cc_b0_4e", "line", {}, 64),  # CondConv2d expert weights
    ("nf_regnet_b0", "curve", {}, 32),  # ScaledStdConv2d with a gain parameter
    ("maxvit_pico_rw_256", "line", {"img_size": 64}, 64),  # relative position tables, GroupNorm-free
]


def _revive_zero_vertices(model: nn.Module) -> None:
    """Draw all-zero vertices at random: zero-initialised scales (zero_init_last BN, NF gains,
    LeViT's bn_weight_init=0) leave whole branches without gradient in the stock model too."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)


@pytest.mark.parametrize(("arch", "shape", "kwargs", "side"), CASES, ids=[c[0] for c in CASES])
def test_train_step_at_sampled_points_then_extract(arch, shape, kwargs, side):
    kwargs = {"num_classes": 5, **kwargs}
    torch.manual_seed(0)
    model = timm.create_model(f"{arch}_{shape}", subspace_layerwise=shape == "line", **kwargs)
    base_names = {n for n, _ in timm.create_model(arch, **kwargs).named_parameters()}
    assert set(model.overparam_report.converted) == base_names and not model.overparam_report.skipped
    _revive_zero_vertices(model)
    model.train()
    # a batch of 8: at 32x32 the last stages are 1x1 or 2x2, and batch-norm over a batch of 2 there
    # normalises two numbers (gradients ~100, one SGD step blew regnetx_002's eval forward up)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, side, side, generator=g)
    point = top.sample_point(model, g)
    loss = F.cross_entropy(model(x), torch.arange(8) % 5) + top.subspace_regularizer(model, g)
    loss.backward()
    vertices = dict(model.named_parameters())
    assert all(".vertices." in n for n in vertices)
    no_grad = [n for n, p in vertices.items() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"{len(no_grad)}/{len(vertices)} vertices got no gradient: {no_grad[:4]}"
    largest = max(p.grad.abs().max().item() for p in vertices.values())
    assert largest < 50, f"ill-conditioned step (gradient {largest:.3g}): the test's batch is too small"
    torch.optim.SGD(model.parameters(), lr=0.01).step()

    model.eval()
    stock = timm.create_model(arch, **kwargs).eval()
    stock.load_state_dict(top.extract_point(model, point).state_dict(), strict=True)
    with torch.no_grad():
        ref = model(x)
        assert ref.shape == (8, 5) and torch.isfinite(ref).all()
        assert rel_err(stock(x), ref) <= 1e-6
    assert math.isfinite(loss.item())
