"""Loss landscapes: filter-normalised orthogonal directions, exact surfaces, every family, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import randomize_norm_stats
from torch import nn

from timm_overparam.research.landscape import (
    cosine,
    directions,
    grid,
    landscape_model,
    loss_function,
    main,
    surface,
)
from timm_overparam.subspace.points import extract_point
from timm_overparam.train.cli import parse_args, train_parser
from timm_overparam.train.config import ValidateConfig
from timm_overparam.train.loop import train
from timm_overparam.train.validation import validate

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-b", "128", "--warmup-epochs", "0", "--lr", "0.1", "--epochs", "1", "--train-fraction", "0.2"]
TINY += ["--eval-metric", "top1"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def filter_norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Linear(5, 3)
    )


def data(n: int = 8, size: int = 6, batch: int = 4, classes: int = 3) -> list:
    x, y = torch.randn(n, 3, size, size), torch.randint(classes, (n,))
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_directions_are_orthogonal_and_keep_every_filter_norm():
    model = net()
    d1, d2 = directions(model, generator=gen())
    assert list(d1) == ["0.weight", "3.weight", "4.weight"]  # 1-D tensors (biases, BatchNorm) left out
    assert abs(cosine(d1, d2)) < 1e-6
    for name, w in model.named_parameters():
        if name in d1:
            for d in (d1[name], d2[name]):
                assert d.shape == w.shape
                torch.testing.assert_close(filter_norms(d), filter_norms(w.detach()), rtol=1e-5, atol=0)
    # filter by filter orthogonal, not just over the whole concatenation
    rows = (d1["0.weight"].reshape(4, -1) * d2["0.weight"].reshape(4, -1)).sum(1)
    assert rows.abs().max() < 1e-6 * filter_norms(model[0].weight.detach()).max() ** 2
    # one_d="layer" moves the 1-D tensors, each normalised as one filter; the other directions stay
    e1, e2 = directions(model, generator=gen(), one_d="layer")
    assert set(e1) == {n for n, _ in model.named_parameters()}
    assert all(torch.equal(e1[k], d1[k]) and torch.equal(e2[k], d2[k]) for k in d1)
    assert abs(cosine(e1, e2)) < 1e-6
    torch.testing.assert_close(e2["1.weight"].norm(), model[1].weight.detach().norm())
    # a seed gives the same directions, another seed others; patterns choose the tensors
    assert all(torch.equal(directions(model, generator=gen())[0][k], d1[k]) for k in d1)
    assert not torch.equal(directions(model, generator=gen(1))[0]["0.weight"], d1["0.weight"])
    assert list(directions(model, "3.*,4.weight", gen())[0]) == ["3.weight", "4.weight"]
    with pytest.raises(ValueError, match=r"no float parameter matches \['blocks\.\*'\]"):
        directions(model, "blocks.*")
    with pytest.raises(ValueError, match="one_d='layer'"):
        directions(model, "*.bias")


def test_single_element_filters_are_normalised_per_layer():
    # a (dim, 1) weight has one-element filters: it is one filter; a 1x1 block gets +-|w| twice
    model = nn.Sequential(
        nn.Linear(1, 6, bias=False), nn.Linear(6, 1, bias=False), nn.Linear(1, 1, bias=False)
    )
    d1, d2 = directions(model, generator=gen())
    w = model[0].weight.detach()
    torch.testing.assert_close(d1["0.weight"].norm(), w.norm())
    assert abs(float((d1["0.weight"] * d2["0.weight"]).sum())) < 1e-6 * float(w.norm()) ** 2
    for d in (d1, d2):
        torch.testing.assert_close(d["2.weight"].abs(), model[2].weight.detach().abs())
    # zero weights give zero directions
    nn.init.zeros_(model[1].weight)
    assert not directions(model, generator=gen())[1]["1.weight"].any()


def test_directions_follow_the_models_device_and_dtype():
    model = net().double()
    d1, d2 = directions(model, generator=gen())
    assert {t.dtype for t in [*d1.values(), *d2.values()]} == {torch.float64}
    with torch.device("meta"):
        big = timm.create_model("resnet18", num_classes=3)
    d1, d2 = directions(big, generator=gen())
    params = dict(big.named_parameters())
    assert len(d1) == sum(p.dim() > 1 for p in params.values())
    for name, d in [*d1.items(), *d2.items()]:
        assert d.device.type == "meta" and d.shape == params[name].shape and d.dtype == torch.float32


class Quadratic(nn.Module):
    """loss(w) = |w - target|^2: each sample's output is that number (the loss takes the mean)."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=torch.float64))
        self.register_buffer("target", target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w - self.target).pow(2).sum().expand(len(x))


def test_a_quadratic_gives_the_hand_computed_surface():
    mean = lambda out, y: out.mean()  # noqa: E731
    batches = [(torch.zeros(2, 1), torch.zeros(2))]
    at_minimum = Quadratic(torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=torch.float64))
    d1, d2 = directions(at_minimum, generator=gen())
    s = surface(at_minimum, batches, d1, d2, steps=5, span=2.0, batches=None, loss_fn=mean, progress=False)
    # |x d1 + y d2|^2 = (x^2 + y^2) |w|^2: orthogonal directions of the weights' norm
    norm2 = float(at_minimum.w.detach().pow(2).sum())  # 15.3125
    coords = grid(5, 2.0)
    expected = np.array([[(x * x + y * y) * norm2 for y in coords] for x in coords])
    np.testing.assert_allclose(s, expected, rtol=1e-12)
    assert s[2, 2] == 0 and s[4, 2] == s[0, 2] and s[2, 4] == s[2, 0]  # symmetric in each axis
    np.testing.assert_allclose([s[0, 0], s[4, 2], s[2, 0]], [8 * norm2, 4 * norm2, 4 * norm2], rtol=1e-14)
    # off the minimum: |c|^2 + 2x c.d1 + 2y c.d2 + x^2 |d1|^2 + y^2 |d2|^2, c = w - target
    shifted = Quadratic(torch.tensor([[0.0, -2.0, 1.5], [0.25, 2.0, -1.0]], dtype=torch.float64))
    s = surface(shifted, batches, d1, d2, steps=3, span=0.5, batches=None, loss_fn=mean, progress=False)
    c = (shifted.w - shifted.target).detach()
    dot1, dot2 = float((c * d1["w"]).sum()), float((c * d2["w"]).sum())
    for i, x in enumerate(grid(3, 0.5)):
        for j, y in enumerate(grid(3, 0.5)):
            want = 3.0 + 2 * x * dot1 + 2 * y * dot2 + (x * x + y * y) * norm2
            assert s[i, j] == pytest.approx(want, rel=1e-12)


def test_the_centre_is_the_models_loss_and_every_weight_comes_back_exactly():
    model = timm.create_model("test_resnet", num_classes=3)
    randomize_norm_stats(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = data(n=12, size=16)
    d1, d2 = directions(model, generator=gen(), one_d="layer")
    s = surface(model, batches, d1, d2, steps=3, span=0.5, batches=2, progress=False)
    assert model.training and all(m.training for m in model.modules())  # every flag restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit for bit
    model.eval()
    with torch.no_grad():  # the first 2 batches, each batch's mean weighted by its size
        want = sum(float(F.cross_entropy(model(x), y)) * len(x) for x, y in batches[:2]) / 8
    assert s[1, 1] == want and s.shape == (3, 3) and np.isfinite(s).all()
    assert (s[[0, 0, 2, 2], [0, 2, 0, 2]] != want).all()

    # an error half-way through the grid leaves the weights as they were, too
    calls = []

    def failing(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return F.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        surface(model, batches, d1, d2, steps=3, batches=1, loss_fn=failing, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="do not fit the model"):
        surface(net(), batches, d1, d2, steps=3, progress=False)


def test_op_models_landscape_their_function_or_their_factors():
    model = timm.create_model("test_resnet_op2", num_classes=3)
    randomize_norm_stats(model)
    batches = data(n=8, size=16)
    stock = landscape_model(model)  # collapse(model): stock names, the function's weights
    assert stock is not model and not any("parametrizations" in n for n, _ in stock.named_parameters())
    d1, d2 = directions(stock, generator=gen())
    s = surface(stock, batches, d1, d2, steps=3, batches=None, progress=False)
    model.eval()
    with torch.no_grad():
        expanded = sum(float(F.cross_entropy(model(x), y)) * len(x) for x, y in batches) / 8
    assert s[1, 1] == pytest.approx(expanded, rel=1e-5)
    # native: the trainable factors themselves, the model itself moved and restored
    assert landscape_model(model, weights="native") is model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f1, f2 = directions(model, generator=gen())
    assert all(".factors." in n for n in f1) and abs(cosine(f1, f2)) < 1e-6
    native = surface(model, batches, f1, f2, steps=3, batches=None, progress=False)
    assert native[1, 1] == expanded and np.isfinite(native).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="a point is for subspace models"):
        landscape_model(model, point=0.5)


def test_subspace_models_landscape_a_point_with_its_own_batchnorm_statistics():
    model = timm.create_model("test_resnet_line", num_classes=3)
    batches = data(n=8, size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = landscape_model(model, point=0.5, bn_loader=batches, bn_batches=2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model untouched
    plain = extract_point(model, 0.5)
    assert list(dict(target.named_parameters())) == list(dict(plain.named_parameters()))
    assert not torch.equal(target.state_dict()["bn1.running_mean"], plain.state_dict()["bn1.running_mean"])
    d1, d2 = directions(target, generator=gen())
    s = surface(target, batches, d1, d2, steps=3, batches=None, progress=False)
    target.eval()
    with torch.no_grad():
        want = sum(float(F.cross_entropy(target(x), y)) * len(x) for x, y in batches) / 8
    assert s[1, 1] == want and np.isfinite(s).all()
    native = landscape_model(model, weights="native")  # the centre 0.5 by default, a moved copy
    assert native is not model and all(".vertices." in n for n in directions(native, generator=gen())[0])
    with pytest.raises(ValueError, match="outside"):
        landscape_model(model, point=1.5)


@pytest.mark.parametrize("own", [True, False], ids=["make_criterion", "without_it"])
def test_regression_runs_use_the_p_loss(own, monkeypatch):
    import timm_overparam.train.loop as loop

    if not own:  # a training loop without make_criterion: the landscape's own criterion
        monkeypatch.delattr(loop, "make_criterion", raising=False)
    fn, name = loss_function(SimpleNamespace(task="regression", p_loss=3.0))
    out, y = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    assert name == "p_loss(p=3)" and float(fn(out, y)) == pytest.approx((1 + 8 + 1 + 8) / 2)
    fn, name = loss_function(SimpleNamespace(task="regression"))  # p defaults to 2
    assert float(fn(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]]))) == pytest.approx(2.5)
    fn, name = loss_function(SimpleNamespace(smoothing=0.1))
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    want = (1 - 0.1) * F.cross_entropy(logits, labels) - 0.1 * F.log_softmax(logits, 1).mean()
    assert name == "cross_entropy(smoothing=0.1)" and float(fn(logits, labels)) == pytest.approx(float(want))
    fn, name = loss_function(None)
    assert name == "cross_entropy" and float(fn(logits, labels)) == float(F.cross_entropy(logits, labels))


def test_render_and_plot_a_run_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    train(parse_args(train_parser(), ["--output", str(out), "--model", "test_resnet_line", *TINY]))
    run = next(out.iterdir())
    # validation split, all batches, the evaluation's plain cross-entropy: the centre is validate.py's
    # loss at the point (BatchNorm statistics recalibrated as validate.py recalibrates them)
    main([
        "render", str(run), "--steps", "1", "--point", "0.5", "--split", "validation", "--batches", "all",
        "--smoothing", "0", "--bn-recal-batches", "50", "--out", str(tmp_path / "c.npy"), "--no-progress",
    ])  # fmt: skip
    centre = json.loads((tmp_path / "c.json").read_text())["centre"]
    record = validate(
        ValidateConfig(
            model="test_resnet_line",
            checkpoint=str(run / "last"),
            eval_points="0.5",
            batch_size=128,  # the run's -b and --train-fraction: the same recalibration batches
            train_fraction=0.2,
        )
    )
    assert centre == pytest.approx(record["points"][0]["loss"], abs=2e-6)  # validate.py rounds to 6 digits
    argv = ["--steps", "3", "--batches", "1", "-b", "32", "--params", "layer*", "--no-progress"]
    main(["render", str(run), *argv, "--out", str(tmp_path / "s.npy")])
    main(["render", str(run / "last"), *argv, "--out", str(tmp_path / "again.npy")])
    s = np.load(tmp_path / "s.npy")
    record = json.loads((tmp_path / "s.json").read_text())
    assert s.shape == (3, 3) and np.isfinite(s).all()
    assert np.array_equal(s, np.load(tmp_path / "again.npy"))  # the run folder's `last` checkpoint
    assert record["centre"] == s[1, 1] and record["coords"] == [-1.0, 0.0, 1.0]
    assert record["params"] and all(p.startswith("layer") for p in record["params"])
    assert record["point"] == 0.5 and record["family"] == "subspace" and record["samples"] == 32
    assert record["loss"] == "cross_entropy(smoothing=0.1)" and record["seed"] == 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file
    main(["plot", str(tmp_path / "s.npy"), "--out", str(tmp_path / "s.png"), "--log"])
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for argv, message in (
        ([str(tmp_path)], "neither a run folder"),
        ([str(run), "--point", "2"], "outside"),
        ([str(run), "--params", "nothing*"], "no float parameter matches"),
        ([str(run), "--point", "0.5,1"], "takes one point"),
    ):
        with pytest.raises(SystemExit, match=message):
            main(["render", *argv, "--out", str(tmp_path / "x.npy"), "--steps", "1"])


@pytest.mark.slow
def test_two_processes_render_the_same_surface_as_one(tmp_path):
    out = tmp_path / "out"
    train(parse_args(train_parser(), ["--output", str(out), "--model", "test_resnet_op2", *TINY]))
    run = next(out.iterdir())
    argv = ["render", str(run), "--steps", "3", "--batches", "1", "-b", "16", "--no-progress"]
    main([*argv, "--out", str(tmp_path / "one.npy")])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["-m", "timm_overparam.research.landscape", *argv, "--out", str(tmp_path / "two.npy")]
    done = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert json.loads((tmp_path / "two.json").read_text())["processes"] == 2
