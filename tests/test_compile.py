"""torch.compile (issue 16, item 2): ``--torchcompile`` runs through accelerate's dynamo plugin, gives
eager's results, compiles once (a subspace point per step is a buffer value, not a new graph), and
its checkpoints and exports have the eager run's keys. validate.py compiles the stock model of plain
and op runs, and the validation passes of a subspace model's points (the same graphs for every point)."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch._dynamo.utils import counters

import timm_overparam as top
from timm_overparam.train.cli import parse_args, train_parser, validate_parser
from timm_overparam.train.config import ConfigError, TrainConfig, ValidateConfig
from timm_overparam.train.loop import Trainer
from timm_overparam.train.validation import validate


def keys(path):
    with safe_open(path, "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("arch", ["test_resnet_op2", "test_resnet_line"])
def test_steps_compile_once_and_match_eager(arch):
    """Five training steps (a fresh subspace point and the regulariser each step for the line):
    one graph, no recompilation, the same losses and gradients as eager."""
    torch.manual_seed(0)
    eager = timm.create_model(arch, num_classes=5)
    model = timm.create_model(arch, num_classes=5)
    model.load_state_dict(eager.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4) % 5
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    for step in range(5):
        losses = []
        for m in (eager, compiled):
            if arch.endswith("line"):
                top.set_point(m, step / 4)
            loss = F.cross_entropy(m(x), y)
            if arch.endswith("line"):
                loss = loss + top.subspace_regularizer(m)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["recompiles"]
    for (name, p), q in zip(eager.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_inductor_compiles_an_op_chain_like_eager():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    top.overparameterize(net, depth=3, residual=True)
    x = torch.randn(2, 3, 9, 9)
    torch._dynamo.reset()
    out = torch.compile(net, backend="inductor")(x)
    torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def run(tmp_path, name, model, **kw):
    cfg = TrainConfig(
        model=model, epochs=1, batch_size=64, output=str(tmp_path), experiment=name, workers=0, **kw
    )
    Trainer(cfg).run()
    return tmp_path / name


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    """The eager 1-epoch run of an architecture, trained once for the tests that only read it."""
    folders = {}

    def get(arch):
        if arch not in folders:
            folders[arch] = run(tmp_path_factory.mktemp(arch), "eager", arch)
        return folders[arch]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["test_resnet_op2", "test_resnet_line"])
def test_a_compiled_run_matches_the_eager_run(tmp_path, arch, eager_run):
    eager = eager_run(arch)
    compiled = run(tmp_path, "compiled", arch, torchcompile="aot_eager")
    a, b = (json.loads((d / "results.json").read_text()) for d in (eager, compiled))
    assert b["final"]["top1"] == pytest.approx(a["final"]["top1"], abs=0.01)  # 3 of 360 images
    assert b["final"]["loss"] == pytest.approx(a["final"]["loss"], rel=1e-3)
    for rel in [
        "last/model.safetensors",
        "collapsed.safetensors" if "op" in arch else "point-0.5.safetensors",
    ]:
        assert keys(compiled / rel) == keys(eager / rel), rel
        assert not any(k.startswith("_orig_mod") for k in keys(compiled / rel))
    if "line" in arch:
        return  # validate.py of a subspace model: test_validate_compiles_the_points_once
    # validate.py compiles the stock model it evaluates (op, plain)
    check = dict(model=arch, checkpoint=str(eager / "last"), workers=0)
    plain = validate(ValidateConfig(**check))
    torch._dynamo.reset()
    counters.clear()
    fast = validate(ValidateConfig(**check, torchcompile="aot_eager"))
    assert fast["top1"] == pytest.approx(plain["top1"], abs=0.3)  # percent: one of 360 images
    assert 1 <= counters["stats"]["unique_graphs"] <= 2  # full batches and the last, smaller one


@pytest.mark.slow
def test_validate_compiles_the_points_once(eager_run):
    """validate.py --torchcompile of a line: each point's BatchNorm recalibration runs eager, the
    validation passes compiled; the results are eager's, and 4 points and 2 ensembles compile no
    more graphs than 2 points and 1 ensemble (the point and the statistics are buffer values)."""
    folder = eager_run("test_resnet_line")

    def check(points, ensembles, *flags):
        argv = ["--model", "test_resnet_line", "--checkpoint", str(folder / "last"), "--workers", "0"]
        argv += ["--eval-points", points, "--eval-ensembles", ensembles, "--bn-recal-batches", "3"]
        argv += ["--validation-batch-size", "120"]  # 3 full batches of the 360 images: one shape
        torch._dynamo.reset()
        counters.clear()
        record = validate(parse_args(validate_parser(), [*argv, *flags]))
        return record, counters["stats"]["unique_graphs"]

    graphs = []
    for points, ensembles in [("0,0.25,0.75,1", "0+1,0+0.25+0.75+1"), ("0,1", "0+1")]:
        eager, none = check(points, ensembles)
        compiled, count = check(points, ensembles, "--torchcompile", "aot_eager")  # inductor: 60 s more
        assert none == 0 and len(compiled["points"]) == len(points.split(","))
        pairs = zip(
            compiled["points"] + compiled["ensembles"], eager["points"] + eager["ensembles"], strict=True
        )
        for c, e in pairs:
            assert (c["top1"], c["top5"]) == (e["top1"], e["top5"]), c
            assert c["loss"] == pytest.approx(e["loss"], rel=1e-5), c
        graphs.append(count)
    assert graphs == [1, 1]  # one graph for every point and ensemble


def test_the_flag_and_its_errors():
    assert train_parser().parse_args(["--torchcompile"]).torchcompile == "inductor"  # as timm's flag
    assert train_parser().parse_args(["--torchcompile", "aot_eager"]).torchcompile == "aot_eager"
    assert train_parser().parse_args([]).torchcompile is None
    with pytest.raises(
        ConfigError, match=r"--torchcompile 'nope' is not a torch.compile backend.*'inductor'"
    ):
        Trainer(TrainConfig(model="test_resnet_op2", epochs=1, torchcompile="nope"))
