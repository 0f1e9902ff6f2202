"""The exploration lab (seed 003): tasks, models, vectorised restarts against the one-at-a-time loop,
the resumable runner and the CLI."""

import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from sklearn.metrics import f1_score

import timm_overparam
from timm_overparam.lab import experiment
from timm_overparam.lab.__main__ import main
from timm_overparam.lab.experiment import parse_model, parse_sizes, restart_seeds, run_lab
from timm_overparam.lab.restarts import build_model, train_restart, train_restarts
from timm_overparam.lab.tasks import BoolNetTask, PatternTask, macro_f1

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------- tasks
def test_pattern_sequences_carry_1101_and_a_hand_set_kernel_solves_them():
    task = PatternTask(steps=400)
    d = task.draw(torch.Generator().manual_seed(1), torch.float64)
    neg, pos = d.x[:, 0, 0], d.x[:, 1, 0]
    assert d.y.tolist() == [[0.0, 1.0]] * 400 and bool(d.active.all())
    assert float(neg.min()) >= -0.5 and float(neg.max()) < 0.5
    ones = pos == 1.0
    assert ones.sum(1).tolist() == [3] * 400  # noise never reaches 1.0
    starts = ones.float().argmax(1)
    rows = torch.arange(400)
    assert bool(ones[rows, starts + 1].all()) and bool(ones[rows, starts + 3].all())
    assert not bool(ones[rows, starts + 2].any())  # position i + 2 stays noise
    assert int(starts.min()) == 0 and int(starts.max()) == 59  # i uniform in 0..59
    # kernel [1, 1, 0, 1]: a positive's max is 3 exactly, a negative's below 1.5
    net = timm.create_model("lab_naive_cnn", filters=1).double()
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor([[[1.0, 1.0, 0.0, 1.0]]]))
        net.head.weight.fill_(1.0)
        net.head.bias.fill_(-2.25)
    vx, vy = task.validation(torch.Generator().manual_seed(2), torch.float64)
    assert vx.shape == (2000, 1, 64) and vy.tolist() == [0.0] * 1000 + [1.0] * 1000
    assert float(task.score(net(vx).squeeze(-1), vy)) == 1.0
    with torch.no_grad():
        net.head.bias.fill_(-3.5)  # now no positive reaches the threshold: half right
    assert float(task.score(net(vx).squeeze(-1), vy)) == 0.5


def test_boolnet_batches_skip_rule_and_the_seeds_hardcoded_solution():
    task = BoolNetTask()
    d = task.draw(torch.Generator().manual_seed(0), torch.float64)
    assert d.x.shape == (500, 16, 2)
    assert torch.equal(d.y, ((d.x[..., 0] > 0) & (d.x[..., 1] > 0)).double())
    positives = d.y.sum(1)
    assert torch.equal(d.active, positives >= 4)
    assert 0.4 < float(d.active.double().mean()) < 0.8  # P(>= 4 of 16 at p = 1/4) = 0.595
    # the seed's hard-coded net: -100 relu(-x1) - 100 relu(-x2) + 10
    net = timm.create_model("lab_boolnet", width=2).double()
    with torch.no_grad():
        net.fc.weight.copy_(-torch.eye(2, dtype=torch.float64))
        net.fc.bias.zero_()
        net.head.weight.fill_(-100.0)
        net.head.bias.fill_(10.0)
    vx, vy = task.validation(torch.Generator().manual_seed(3), torch.float64)
    assert vx.shape == (5000, 2)
    # points with x1 or x2 in (-0.1, 0] count as positive: 0.951 here (the seed drew it at 0.98,
    # but its hardcoded() built nn.ReLU modules instead of applying them: it never ran)
    assert 0.93 < float(task.score(net(vx).squeeze(-1), vy)) < 0.97
    with torch.no_grad():
        net.head.bias.fill_(0.1)  # margin 0.001: nearly exact
    assert float(task.score(net(vx).squeeze(-1), vy)) > 0.995


def test_macro_f1_is_scikit_learns():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 300, generator=g, dtype=torch.float64)
    labels = (torch.rand(6, 300, generator=g) < 0.3).double()
    logits[0] = -1.0  # never predicts the positive class: its F1 is 0
    logits[1] = 1.0  # always predicts it
    ours = macro_f1(logits, labels)
    for r in range(6):
        ref = f1_score(labels[r].numpy(), (logits[r] > 0).double().numpy(), average="macro", zero_division=0)
        assert float(ours[r]) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------------------------------- models
def test_parameter_counts_and_models_on_meta():
    counts = {
        ("lab_naive_cnn", 3): (16, 16),  # trainable, all: 4n + n + 1
        ("lab_random_conv", 3): (4, 16),  # the decision layer only
        ("lab_hyper_cnn", None): (33, 33),  # 2*4+4 + 4*4+4 + 1
        ("lab_boolnet", 5): (21, 21),  # 2w + w + w + 1
        ("lab_hyper_boolnet", None): (43, 43),  # (6+3 + 12+4) + (6+3 + 6+2) + 1
    }
    for (arch, size), (trainable, total) in counts.items():
        kwargs = {} if size is None else {("width" if "bool" in arch else "filters"): size}
        model = timm.create_model(arch, **kwargs)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
        assert sum(p.numel() for p in model.parameters()) == total
        for suffix in ("", "_op2", "_line"):
            with torch.device("meta"):
                m = timm.create_model(arch + suffix, **kwargs)
            x = torch.empty((3, 2) if "bool" in arch else (3, 1, 64), device="meta")
            assert m(x).shape == (3, 1) and m(x).is_meta
    assert timm.create_model("lab_hyper_cnn").generated_parameters == 5
    assert timm.create_model("lab_hyper_boolnet").generated_parameters == 7


def test_variants_of_one_restart_start_from_the_same_function():
    """Paired design: at one seed the op variant (init='preserve'; factors built in float32) and a
    line's vertex 0 compute the base model's function."""
    x = torch.rand(5, 1, 64, dtype=torch.float64) - 0.5
    base = build_model("lab_naive_cnn", {"filters": 3}, seed=11, dtype=torch.float64)
    op = build_model("lab_naive_cnn_op3", {"filters": 3}, seed=11, dtype=torch.float64)
    line = build_model("lab_naive_cnn_line", {"filters": 3}, seed=11, dtype=torch.float64)
    timm_overparam.set_point(line, 0.0)
    want = base(x)
    assert torch.allclose(op(x), want, rtol=1e-5, atol=0) and torch.allclose(line(x), want, rtol=0, atol=0)


def test_curves_and_simplexes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"the lab trains lines.*_line"):
        build_model("lab_boolnet_curve", {"width": 2}, seed=0)


# ------------------------------------------------------------------------------ restarts vs loop
CASES = [
    ("lab_naive_cnn", {"filters": 3}, PatternTask(steps=25)),
    ("lab_random_conv", {"filters": 2}, PatternTask(steps=25)),
    ("lab_hyper_cnn", {}, PatternTask(steps=25)),
    ("lab_naive_cnn_op2", {"filters": 3}, PatternTask(steps=25)),
    ("lab_naive_cnn_line", {"filters": 2}, PatternTask(steps=25)),
    ("lab_boolnet_op3", {"width": 3}, BoolNetTask(steps=50)),
    ("lab_hyper_boolnet", {}, BoolNetTask(steps=50, momentum=0.5)),  # momentum through skipped steps
    ("lab_boolnet_line", {"width": 3}, BoolNetTask(steps=50, momentum=0.5)),
]


@pytest.mark.parametrize("arch,kwargs,task", CASES, ids=[f"{c[0]}-momentum{c[2].momentum}" for c in CASES])
def test_a_restart_in_the_batch_equals_it_trained_alone(arch, kwargs, task):
    seeds = [3, 8, 21]
    batch = train_restarts(arch, kwargs, task, seeds, dtype=torch.float64)
    for r, seed in enumerate(seeds):
        model, metric = train_restart(arch, kwargs, task, seed, dtype=torch.float64)
        for name, p in model.named_parameters():
            scale = float(p.detach().abs().max()) or 1.0
            assert float((p.detach() - batch.state[name][r]).abs().max()) <= 1e-12 * scale, name
        if batch.points is None:
            assert float(batch.metric[r]) == pytest.approx(metric[None], abs=1e-12)
        else:
            assert sorted(batch.points) == sorted(metric) == [0.0, 0.5, 1.0]
            for point, value in metric.items():
                assert float(batch.points[point][r]) == pytest.approx(value, abs=1e-12)
            assert float(batch.metric[r]) == float(batch.points[0.5][r])
        # the batch trained something: parameters moved away from the seed's init
        init = build_model(arch, kwargs, seed, torch.float64)
        moved = max(
            float((p.detach() - batch.state[n][r]).abs().max())
            for n, p in init.named_parameters()
            if p.requires_grad
        )
        assert moved > 1e-3


def test_a_restart_whose_every_step_is_skipped_keeps_its_init():
    task = BoolNetTask(steps=30, min_positives=17, momentum=0.5)  # 16 points: never 17 positives
    batch = train_restarts("lab_boolnet", {"width": 3}, task, [0, 1], dtype=torch.float64)
    for r, seed in enumerate([0, 1]):
        init = build_model("lab_boolnet", {"width": 3}, seed, torch.float64)
        for name, p in init.named_parameters():
            assert torch.equal(p.detach(), batch.state[name][r])


def test_restarts_learn_the_tasks():
    pattern = train_restarts("lab_naive_cnn", {"filters": 6}, PatternTask(), list(range(32)))
    assert float(pattern.metric.mean()) > 0.9  # 0.998 over 500 restarts
    boolnet = train_restarts("lab_boolnet", {"width": 8}, BoolNetTask(), list(range(16)))
    assert float(boolnet.metric.mean()) > 0.8  # 0.915 over 50 restarts
    frozen = train_restarts("lab_random_conv", {"filters": 1}, PatternTask(), list(range(32)))
    assert float(frozen.metric.mean()) < float(pattern.metric.mean()) - 0.1  # 0.66 over 500


# -------------------------------------------------------------------------------------- runner
def test_model_names_and_sizes():
    m = parse_model("boolnet", "hyper_op4")
    assert (m.base, m.family, m.arch, m.size_kwarg) == ("hyper", "op", "lab_hyper_boolnet_op4", None)
    assert parse_model("pattern", "random_conv_line").arch == "lab_random_conv_line"
    assert parse_model("pattern", "naive").kwargs(4) == {"filters": 4}
    assert parse_model("pattern", "naive_op2").kwargs(4, op_width=2.0) == {"filters": 4, "op_width": 2.0}
    with pytest.raises(ValueError, match="unknown pattern model 'boolnet'"):
        parse_model("pattern", "boolnet")
    with pytest.raises(ValueError, match="unknown boolnet model 'boolnet_op7'"):
        parse_model("boolnet", "boolnet_op7")
    assert parse_sizes("1-3, 7") == [1, 2, 3, 7] and parse_sizes("4") == [4]
    for bad in ("3-1", "0-2", "a", "1-"):
        with pytest.raises(ValueError, match="1-7"):
            parse_sizes(bad)
    seeds = restart_seeds(0, 3, 4)
    assert len(set(seeds)) == 4 and seeds == restart_seeds(0, 3, 4) and seeds != restart_seeds(1, 3, 4)


def test_run_lab_records_every_restart_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_lab("pattern", ["naive", "hyper"], [1, 2], restarts=4, out=out, steps=10, progress=False)
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["configs"]) == ["hyper:1", "hyper:2", "naive:1", "naive:2"]
    naive2 = results["configs"]["naive:2"]
    assert (naive2["trainable_params"], naive2["deployed_params"], naive2["seed_x"]) == (11, 11, 11)
    hyper = results["configs"]["hyper:1"]
    assert (hyper["trainable_params"], hyper["deployed_params"], hyper["seed_x"]) == (33, 5, 5)
    assert naive2["seeds"] == restart_seeds(0, 2, 4) and len(naive2["metric"]) == 4
    assert (out / "report.md").exists() and (out / "lab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ran = []
    real = experiment.train_restarts

    def spy(arch, kwargs, *args, **kw):
        ran.append((arch, kwargs.get("filters")))
        return real(arch, kwargs, *args, **kw)

    monkeypatch.setattr(experiment, "train_restarts", spy)
    run_lab(
        "pattern",
        ["naive", "naive_line", "random_conv_op2"],
        [2, 3],
        restarts=4,
        out=out,
        steps=10,
        progress=False,
    )
    assert ran == [
        ("lab_naive_cnn", 3),
        ("lab_naive_cnn_line", 2),
        ("lab_naive_cnn_line", 3),
        ("lab_random_conv_op2", 2),
        ("lab_random_conv_op2", 3),
    ]
    again = json.loads((out / "results.json").read_text())
    assert again["configs"]["naive:2"] == naive2  # held configurations untouched
    line = again["configs"]["naive_line:2"]
    assert sorted(line["points"], key=float) == ["0", "0.5", "1"] and line["metric"] == line["points"]["0.5"]
    assert line["deployed_params"] == 11 and line["trainable_params"] == 22
    op = again["configs"]["random_conv_op2:3"]
    assert op["family"] == "op" and op["deployed_params"] == 16 and op["trainable_params"] > 4
    with pytest.raises(ValueError, match=r"other settings.*'restarts': \(4, 5\).*another --out"):
        run_lab("pattern", ["naive"], [1], restarts=5, out=out, steps=10, progress=False)
    with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
        run_lab("pattern", ["naive"], [1], restarts=0, out=out)


def test_cli_runs_reports_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "timm_overparam.lab"]
    args = ["boolnet", "--models", "boolnet,hyper_op2", "--widths", "1-2", "--restarts", "3", "--steps", "20"]
    done = subprocess.run(
        [*cmd, *args, "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / "report.md"), str(out / "lab.png")]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["steps"] == 20 and results["settings"]["success"] == 0.9
    assert sorted(results["configs"]) == ["boolnet:1", "boolnet:2", "hyper_op2:1", "hyper_op2:2"]
    assert results["configs"]["boolnet:2"]["seed_x"] == 2 and results["configs"]["hyper_op2:1"]["seed_x"] == 2
    png = tmp_path / "x.png"
    assert main(["plot", str(out), "--out", str(png), "--x", "deployed", "--models", "hyper_op2"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| boolnet | 1 |" in (out / "report.md").read_text()  # the report keeps every model
    assert main(["plot", str(out), "--models", "naive"]) == 2
    assert "models ['naive'] are not in" in capsys.readouterr().err
    assert main(["pattern", "--models", "naive,bogus", "--out", str(tmp_path / "c")]) == 2
    assert "unknown pattern model 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    assert main(["boolnet", "--widths", "5-2", "--out", str(tmp_path / "c")]) == 2
    assert "'5-2'" in capsys.readouterr().err


def test_compare_puts_runs_side_by_side(tmp_path, capsys):
    fast, slow = tmp_path / "lr1", tmp_path / "lr001"
    for out, lr in ((fast, 1.0), (slow, 0.001)):
        run_lab("boolnet", ["boolnet"], [4], restarts=6, out=out, steps=150, lr=lr, progress=False)
    assert main(["compare", str(slow), str(fast), "--models", "boolnet", "--success", "0.8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "success rate (macro_f1 >= 0.8) and mean macro_f1, per run"
    assert lines[2] == "| model | size | lr=0.001 | lr=1.0 | best |"
    (row,) = [line for line in lines if line.startswith("| boolnet | 4 |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    for cell, out in zip(cells[2:4], (slow, fast), strict=True):
        metric = json.loads((out / "results.json").read_text())["configs"]["boolnet:4"]["metric"]
        rate = sum(v >= 0.8 for v in metric) / len(metric)
        assert cell == f"{100 * rate:.1f}% ({sum(metric) / len(metric):.3f})"
    assert cells[4] == "lr=1.0"  # lr 0.001 barely moves in 150 steps
    run_lab("pattern", ["naive"], [1], restarts=2, out=tmp_path / "p", steps=2, progress=False)
    assert main(["compare", str(fast), str(tmp_path / "p")]) == 2
    assert "different experiments" in capsys.readouterr().err
