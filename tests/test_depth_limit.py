"""Seed 002's models: depth_limit_resnet (augmentations, inits, frozen read-in/out, op and subspace
variants) and the CIFAR ResNets of He et al. with depth-scaled residual branches."""

import math

import pytest
import timm
import torch
from conftest import rel_err
from torch import nn

import timm_overparam
from timm_overparam.research.cifar_resnet import CifarBasicBlock, CifarResNet, OptionAShortcut
from timm_overparam.research.depth_limit import DepthLimitResNet, init_value

# ---------------------------------------------------------------------------------------------
# hand computations, column vectors as lists, the formulas exactly as the reference writes them


def matvec(W, v):
    return [sum(W[i][j] * v[j] for j in range(len(v))) for i in range(len(W))]


def transpose(W):
    return [list(r) for r in zip(*W, strict=True)]


def sub(A, B):
    return [[a - b for a, b in zip(ra, rb, strict=True)] for ra, rb in zip(A, B, strict=True)]


def add(u, v, scale=1.0):
    return [a + scale * b for a, b in zip(u, v, strict=True)]


def by_hand(aug, s, ws, h, delta):
    prev = [[0.0, 0.0], [0.0, 0.0]]
    for W in ws:
        if aug == "none":
            h = [delta * s(v) for v in matvec(W, h)]
        elif aug == "skip":
            h = add(h, [s(v) for v in matvec(W, h)], delta)
        elif aug == "linear_skip":
            h = add(h, matvec(W, [s(v) for v in h]))
        else:  # inc_skip: h + (W_t - W_{t-1})^T s(W_{t-1} h), W_0 = 0
            h = add(h, matvec(transpose(sub(W, prev)), [s(v) for v in matvec(prev, h)]))
        prev = W
    return h


W1 = [[0.1, 0.2], [0.3, -0.4]]
W2 = [[-0.5, 0.9], [0.7, 0.8]]  # W2 - W1 is not symmetric: transposes show
X = [0.5, -1.0]
READOUT = [[1.0, -2.0]]


def tiny(augmentation, activation="tanh"):
    model = timm.create_model(
        "depth_limit_resnet",
        L=2,
        dim=2,
        alpha=0.5,
        input_size=2,
        num_classes=1,
        augmentation=augmentation,
        activation=activation,
        dtype=torch.float64,
    )
    with torch.no_grad():
        model.read_in.weight.copy_(torch.eye(2))
        model.head.weight.copy_(torch.tensor(READOUT, dtype=torch.float64))
        model.blocks[0].weight.copy_(torch.tensor(W1, dtype=torch.float64))
        model.blocks[1].weight.copy_(torch.tensor(W2, dtype=torch.float64))
    return model


SIGMOID = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731


@pytest.mark.parametrize("augmentation", ["none", "skip", "linear_skip", "inc_skip"])
@pytest.mark.parametrize("activation", [("tanh", math.tanh), ("sigmoid", SIGMOID)])
def test_every_augmentation_matches_the_formula_by_hand(augmentation, activation):
    name, s = activation
    model = tiny(augmentation, name)
    delta = 2**-0.5
    h = by_hand(augmentation, s, [W1, W2], X, delta)
    out = model(torch.tensor([X], dtype=torch.float64))
    assert torch.allclose(
        model.forward_features(torch.tensor([X], dtype=torch.float64))[0], torch.tensor(h).double()
    )
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(READOUT[0][0] * h[0] + READOUT[0][1] * h[1], rel=1e-12)


def test_skip_with_numbers_worked_out():
    # L = 1, dim = 1, alpha = 1: delta = 1; w = 0.5: h = 2 + tanh(0.5 * 2) = 2 + tanh(1)
    m = DepthLimitResNet(
        L=1, dim=1, alpha=1.0, input_size=1, num_classes=1, init="constant", augmentation="skip"
    )
    with torch.no_grad():
        m.read_in.weight.fill_(2.0)
        m.head.weight.fill_(1.0)
    assert m.blocks[0].weight.item() == 0.5  # 0.5 * 1^-(0 + 1)
    assert m(torch.tensor([[1.0]])).item() == pytest.approx(2 + math.tanh(1.0))
    # the inc_skip first step reads W_0 = 0: s(0) W_1 -> with sigmoid, 2 + 0.5 * 0.5
    m = DepthLimitResNet(L=1, dim=1, input_size=1, num_classes=1, init="constant", augmentation="inc_skip")
    m.blocks[0].activation = "sigmoid"
    with torch.no_grad():
        m.read_in.weight.fill_(2.0)
        m.head.weight.fill_(1.0)
        m.blocks[0].weight.fill_(0.5)
    assert m(torch.tensor([[1.0]])).item() == pytest.approx(2.25)


# ---------------------------------------------------------------------------------------------
# inits


def test_constant_init_is_exactly_w_and_follows_the_depth_law():
    L, alpha, gamma = 4, 0.75, 2.0
    w = 0.5 * L ** -((1 - alpha) + 1 / gamma)
    m = DepthLimitResNet(L=L, dim=3, alpha=alpha, gamma=gamma, init="constant", input_size=2)
    assert m.init_value == w and m.beta == 0.25 and m.delta == L**-alpha
    for block in m.blocks:
        assert torch.equal(block.weight, torch.full((3, 3), w))
    # the README's constant: 1/dim^2 instead of 0.5
    r = DepthLimitResNet(
        L=L, dim=3, alpha=alpha, gamma=gamma, init="constant", input_size=2, init_scale="readme"
    )
    assert r.init_value == pytest.approx(w / 0.5 / 9) and torch.equal(
        r.blocks[0].weight, torch.full((3, 3), r.init_value)
    )
    # scale law: w(4L) / w(L) = 4^-(beta + 1/gamma)
    for L in (1, 8, 64):
        ratio = init_value(4 * L, 3, alpha, gamma) / init_value(L, 3, alpha, gamma)
        assert ratio == pytest.approx(4 ** -(0.25 + 0.5))
        big = DepthLimitResNet(L=4 * L, dim=2, alpha=alpha, gamma=gamma, init="constant", input_size=1)
        assert big.blocks[-1].weight[0, 0].item() == pytest.approx(
            init_value(4 * L, 2, alpha, gamma), rel=1e-6
        )


def test_ntrunc_init_lies_in_plus_minus_w_with_std_w_before_truncation():
    m = DepthLimitResNet(L=50, dim=12, alpha=0.5, gamma=1.0, init="ntrunc", input_size=3)
    w = m.init_value
    assert w == 0.5 * 50**-1.5
    W = m.block_weights()
    assert W.shape == (50, 12, 12)
    assert W.abs().max().item() <= w
    # N(0, w^2) truncated to [-w, w]: std = w * sqrt(1 - 2 phi(1) / (2 Phi(1) - 1)) = 0.5396 w
    phi, Phi = math.exp(-0.5) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    expected = w * math.sqrt(1 - 2 * phi / (2 * Phi - 1))
    assert W.std().item() == pytest.approx(expected, rel=0.05)
    assert W.mean().abs().item() < 0.05 * w
    # reset_parameters draws the same law (subspace vertices drawn by reset)
    m.blocks[0].reset_parameters()
    assert m.blocks[0].weight.abs().max().item() <= w


# ---------------------------------------------------------------------------------------------
# training flags, timm's API, errors


def test_only_the_blocks_train_unless_train_all():
    m = timm.create_model("depth_limit_resnet", L=3, dim=4, input_size=5, num_classes=2)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{t}.weight" for t in range(3)}
    m.reset_classifier(7)
    assert not m.head.weight.requires_grad and m(torch.randn(2, 5)).shape == (2, 7)
    m = timm.create_model("depth_limit_resnet", L=3, dim=4, input_size=5, num_classes=2, train_all=True)
    assert all(p.requires_grad for p in m.parameters())


def test_timm_api_and_input_shapes():
    m = timm.create_model("depth_limit_resnet", L=2, dim=4, input_size=784, num_classes=3)
    assert m.pretrained_cfg["input_size"] == (1, 28, 28) and m.pretrained_cfg["classifier"] == "head"
    x = torch.randn(5, 1, 28, 28)
    feats = m.forward_features(x)
    assert feats.shape == (5, 4) and torch.equal(m.forward_head(feats, pre_logits=True), feats)
    assert m.get_classifier() is m.head and m(x).shape == (5, 3)
    m.reset_classifier(0)
    assert m(x).shape == (5, 4)
    from timm_overparam.eval.rank import embeddings

    assert embeddings(m, [(x, torch.zeros(5))]).shape == (5, 4)
    c = timm.create_model("depth_limit_resnet", L=1, dim=2, in_chans=3, img_size=32)
    assert c.input_size == 3072 and c.pretrained_cfg["input_size"] == (3, 32, 32)
    assert c.pretrained_cfg["mean"] == (0.0,) * 3
    one = timm.create_model("depth_limit_resnet", L=1, dim=2, num_classes=1)  # 1-D data: in_chans features
    assert (
        one.input_size == 1 and one(torch.randn(6)).shape == (6, 1) and one(torch.randn(6, 1)).shape == (6, 1)
    )
    with pytest.raises(ValueError, match=r"input_size=1 features.*got 784.*input_size=784"):
        one(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"augmentation": "resnet"}, "augmentation must be one of"),
        ({"init": "xavier"}, "init must be one of"),
        ({"activation": "swish"}, "activation must be one of"),
        ({"alpha": 1.5}, r"alpha must be in \[0.0, 1.0\]"),
        ({"gamma": 0.0}, "gamma must be > 0"),
        ({"L": 0}, "L must be an integer >= 1"),
        ({"init_scale": "paper"}, "init_scale must be one of"),
        ({"input_size": 2.5}, "input_size must be an integer"),
    ],
)
def test_bad_kwargs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DepthLimitResNet(**{"L": 2, "dim": 2, **kwargs})


def test_builds_on_the_meta_device():
    with torch.device("meta"):
        m = timm.create_model("depth_limit_resnet", L=1000, dim=15, input_size=3072, init="ntrunc")
        c = timm.create_model("cifar_resnet224")
    assert all(p.is_meta for p in m.parameters()) and all(p.is_meta for p in c.parameters())
    assert m(torch.empty(2, 3072, device="meta")).shape == (2, 10)
    assert m.block_weights().shape == (1000, 15, 15) and m.block_weights().is_meta
    assert c.n == 37 and c(torch.empty(1, 3, 32, 32, device="meta")).shape == (1, 10)


def test_dtype_follows_the_module():
    m = DepthLimitResNet(L=2, dim=3, input_size=4, augmentation="inc_skip", dtype=torch.float64)
    assert m.block_weights().dtype == torch.float64
    assert m(torch.randn(2, 4, dtype=torch.float64)).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# op and subspace variants


def _sgd_step(model, x, y):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


@pytest.mark.parametrize("augmentation", ["skip", "inc_skip"])
def test_op_variant_trains_and_collapses_exactly(augmentation):
    kw = {"L": 3, "dim": 4, "input_size": 5, "num_classes": 3, "augmentation": augmentation}
    model = timm.create_model("depth_limit_resnet_op2", **kw)
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = model.block_weights()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("read_in.", "head.")) for n in frozen) and frozen
    _sgd_step(model, x, y)
    after = model.block_weights()
    assert after.shape == (3, 4, 4) and not torch.equal(before, after)
    model.eval()
    stock = timm_overparam.collapse(model)
    assert type(stock) is DepthLimitResNet and type(stock.blocks[0]).__name__ == "DepthLimitBlock"
    assert set(stock.state_dict()) == set(DepthLimitResNet(**kw).state_dict())
    assert rel_err(stock.block_weights(), after) < 1e-6
    assert rel_err(stock(x), model(x)) < 1e-5
    assert not any(p.requires_grad for n, p in stock.named_parameters() if not n.startswith("blocks."))


def test_line_variant_trains_and_extracts_exactly():
    kw = {"L": 3, "dim": 4, "input_size": 5, "num_classes": 3, "augmentation": "linear_skip"}
    model = timm.create_model("depth_limit_resnet_line", **kw)
    report = model.overparam_report
    assert set(report.converted) == {f"blocks.{t}.weight" for t in range(3)}
    assert "frozen" in report.skipped["read_in.weight"]
    x, y = torch.randn(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    _sgd_step(model, x, y)
    timm_overparam.set_point(model, 0.3)
    stock = timm_overparam.extract_point(model, 0.3)
    assert type(stock) is DepthLimitResNet
    assert torch.equal(stock.block_weights(), model.block_weights())
    assert rel_err(stock(x), model(x)) < 1e-6


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets


def _params_by_hand(n, num_classes=10, in_chans=3):
    conv = lambda cin, cout: 9 * cin * cout  # noqa: E731  (3x3, no bias)
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_chans, 16) + bn(16)
    cin = 16
    for c in (16, 32, 64):
        for _ in range(n):  # option A shortcuts have no parameters
            total += conv(cin, c) + bn(c) + conv(c, c) + bn(c)
            cin = c
    return total + 64 * num_classes + num_classes


def test_cifar_resnet56_parameters_counted_by_hand():
    m = timm.create_model("cifar_resnet56")
    assert m.n == 9 and m.depth == 6 * 9 + 2
    count = sum(p.numel() for p in m.parameters())
    assert count == _params_by_hand(9) == 853_018  # He et al.'s table: 0.85M
    assert round(count / 1e6, 2) == 0.85
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) + 1 == 56  # 55 convolutions and the classifier


def test_cifar_branch_scaling_and_option_a_shortcut():
    m = timm.create_model("cifar_resnet56").eval()
    blocks = [b for b in m.modules() if isinstance(b, CifarBasicBlock)]
    assert len(blocks) == 27 and all(b.scale == 9**-0.75 for b in blocks)
    assert timm.create_model("cifar_resnet56", alpha=0.5).layer1[0].scale == 9**-0.5
    down = m.layer2[0]
    assert isinstance(down.shortcut, OptionAShortcut)
    x = torch.randn(2, 16, 8, 8)
    short = torch.zeros(2, 32, 4, 4)
    short[:, 8:24] = x[:, :, ::2, ::2]  # 8 zero channels before, 8 after
    with torch.no_grad():
        assert torch.equal(down.shortcut(x), short)
        expected = torch.relu(short + 9**-0.75 * down.branch(x))
        assert torch.allclose(down(x), expected)
        same = m.layer1[1]
        assert torch.allclose(same(x), torch.relu(x + 9**-0.75 * same.branch(x)))


def test_cifar_forward_backward_and_timm_api():
    m = timm.create_model("cifar_resnet56", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 64, 8, 8) and m.forward_head(feats, pre_logits=True).shape == (2, 64)
    out = m(x)
    out.sum().backward()
    assert out.shape == (2, 4) and all(p.grad is not None for p in m.parameters())
    assert m.get_classifier() is m.fc and m.pretrained_cfg["input_size"] == (3, 32, 32)
    m.reset_classifier(0)
    assert m(x).shape == (2, 64)
    for depth, n in ((104, 17), (224, 37)):
        with torch.device("meta"):
            assert timm.create_model(f"cifar_resnet{depth}").n == n
    with pytest.raises(ValueError, match="depth 6n \\+ 2"):
        CifarResNet(depth=51)


def test_research_models_are_registered_with_their_variants():
    for base in ("depth_limit_resnet", "cifar_resnet56", "cifar_resnet104", "cifar_resnet224"):
        for suffix in ("", "_op2", "_op3", "_op4", "_line", "_curve", "_simplex"):
            assert timm.is_model(base + suffix)
    assert timm.list_models(module="depth_limit") == ["depth_limit_resnet"]
    assert set(timm.list_models(module="cifar_resnet")) == {f"cifar_resnet{d}" for d in (56, 104, 224)}
