"""Seed 002's callbacks: p-variations of the weights path on hand-made paths, the dynamic learning
rate on hand numbers, Omega(t) against per-sample gradients computed independently (accumulation,
chunks, loss scale, processes), their checkpointed states and omega.csv across a resume."""

import copy
import importlib
import json
import math
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from torch import nn

from timm_overparam.research.callbacks import (
    DynamicLR,
    OmegaRecorder,
    PVariationLogger,
    activation_name,
    model_beta,
)
from timm_overparam.train.callbacks import CallbackList


def brute_pvar(path, p):
    """The O(n^2) dynamic programme: run[j] = max_{m<j} run[m] + |x_j - x_m|^p (the oracle)."""
    x = torch.as_tensor(path, dtype=torch.float64).reshape(len(path), -1)
    run = [0.0] * len(x)
    for j in range(1, len(x)):
        run[j] = max(run[m] + float((x[j] - x[m]).norm()) ** p for m in range(j))
    return run[-1]


@pytest.fixture(autouse=True)
def research_modules(monkeypatch):
    """The real blocks/pvariation modules where they exist, else stand-ins with the same contract."""
    try:
        importlib.import_module("timm_overparam.research.blocks")
    except ImportError:
        blocks = types.ModuleType("timm_overparam.research.blocks")
        blocks.block_weights = lambda model: model.block_weights()
        blocks.weights_path = lambda x, beta: len(x) ** beta * torch.as_tensor(x).reshape(len(x), -1)
        monkeypatch.setitem(sys.modules, "timm_overparam.research.blocks", blocks)
    try:
        importlib.import_module("timm_overparam.research.pvariation")
    except ImportError:
        pvar = types.ModuleType("timm_overparam.research.pvariation")
        pvar.p_variation = brute_pvar
        monkeypatch.setitem(sys.modules, "timm_overparam.research.pvariation", pvar)


class Blocks(nn.Module):
    """A stand-in depth-limit model: L blocks of dim x dim weights, alpha, an activation name."""

    def __init__(self, weights, alpha=None, activation=None):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(weights, dtype=torch.float32))
        if alpha is not None:
            self.alpha = alpha
        if activation is not None:
            self.activation = activation

    def block_weights(self):
        return self.w.detach()


class Acc:
    """What the callbacks use of the Accelerator: processes, their sum, the float16 loss scaler."""

    def __init__(self, num_processes=1, others=None, scaler=None):
        self.num_processes, self.others, self.scaler = num_processes, others, scaler

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        return tensor + self.others


class Run:
    """A stand-in for the trainer as callbacks see it (train/callbacks.py's protocol)."""

    def __init__(self, model, folder=None, accum=1, main=True, acc=None, optimizer=None):
        self.unwrapped, self.folder, self.is_main_process = model, folder, main
        self.config = types.SimpleNamespace(grad_accum_steps=accum)
        self.acc = acc or Acc()
        self.optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
        self.step = self.epoch = 0
        self.logged = []

    def log(self, metrics, step=None):
        self.logged.append((self.epoch if step is None else step, dict(metrics)))


def round_trip(callback, fresh):
    """The state through callbacks.json (JSON) into a new callback of the same class."""
    states = json.loads(json.dumps(CallbackList([callback]).state()))
    target = CallbackList([fresh])
    target.load(states, "test")
    return fresh


# ------------------------------------------------------------------------------ p-variation
def test_pvariation_logger_on_hand_made_paths():
    # 1-d blocks 0, 1, 0 with alpha 0.5 (beta 0.5, L = 3): the path 0, s, 0 with s = sqrt(3); the best
    # subsequence is all of it, p-var = 2 s^q, rooted 2^(1/q) s
    model = Blocks([[[0.0]], [[1.0]], [[0.0]]], alpha=0.5)
    run, logger = Run(model), PVariationLogger(p=2)
    logger.on_after_step(run, model)
    s = math.sqrt(3)
    expected = {"pvar_2": math.sqrt(2) * s, "pvar_1": 2 * s, "pvar_1.5": 2 ** (2 / 3) * s}
    [(step, logged)] = run.logged
    assert step == 0 and logged.keys() == expected.keys()
    assert logged == pytest.approx(expected, rel=1e-12)
    assert logger.latest == logged and logger.latest_step == 1
    # two 2x2 blocks, alpha 0 (beta 1, L = 2): one jump 2 |W_2 - W_1|_F = 2 * 5 for every q
    model = Blocks([[[0.0, 0.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]], alpha=0.0)
    run, logger = Run(model), PVariationLogger(p=4)
    logger.on_after_step(run, model)
    assert run.logged[0][1] == pytest.approx({"pvar_4": 10.0, "pvar_2": 10.0, "pvar_3": 10.0}, rel=1e-12)


def test_pvariation_logger_matches_the_oracle_on_a_random_path():
    model = Blocks(torch.randn(9, 2, 2), alpha=0.25)
    run = Run(model)
    PVariationLogger(p=3).on_after_step(run, model)
    path = 9**0.75 * model.w.detach().double().reshape(9, -1)
    expected = {f"pvar_{q:g}": brute_pvar(path, q) ** (1 / q) for q in (3, 1.5, 2.25)}
    assert run.logged[0][1] == pytest.approx(expected, rel=1e-9)


def test_pvariation_logger_schedule_main_process_and_state():
    model = Blocks(torch.randn(4, 2, 2), alpha=0.5)
    run, logger = Run(model), PVariationLogger(p=2, every=3)
    for step in range(9):
        run.step = step
        logger.on_after_step(run, model)
    assert [s for s, _ in run.logged] == [2, 5, 8]  # after updates 3, 6, 9
    assert logger.latest_step == 9
    other = Run(model, main=False)
    silent = PVariationLogger(p=2, every=1)
    silent.on_after_step(other, model)
    assert other.logged == [] and silent.latest == {}  # only the main process computes
    restored = round_trip(logger, PVariationLogger(p=2, every=3))
    assert restored.latest == logger.latest and restored.latest_step == 9


def test_pvariation_logger_checks_p_and_beta():
    with pytest.raises(ValueError, match=r"p = 1.5 is below 2"):
        PVariationLogger(p=1.5)
    with pytest.raises(ValueError, match=r"DynamicLR: p = 1 is below 2"):
        DynamicLR(p=1)
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        PVariationLogger(p=2, every=0)
    bare = Blocks([[[0.0]], [[1.0]]])
    with pytest.warns(UserWarning, match="no `alpha`.*beta = 0"):
        assert model_beta(bare) == 0.0
    run = Run(bare)
    with pytest.warns(UserWarning, match="beta = 0"):
        PVariationLogger(p=2).on_after_step(run, bare)
    assert run.logged[0][1]["pvar_2"] == pytest.approx(1.0)  # no L^beta rescaling
    bare.beta = 0.5
    assert model_beta(bare) == 0.5 and model_beta(bare, 0.1) == 0.1


# ------------------------------------------------------------------------------- dynamic lr
def sgd(model):
    optimizer = torch.optim.SGD([{"params": [model.w], "lr": 0.05}, {"params": [], "lr": 0.01}])
    optimizer.param_groups[0]["initial_lr"] = 0.2  # timm's scheduler sets it; lr is mid warm-up
    return optimizer


@pytest.mark.parametrize(
    ("activation", "p", "factor"),
    [
        ("relu", 2, 10 / 2),
        ("tanh", 2, 2 / 2),
        (nn.ReLU(), 4, 10 / math.sqrt(2)),
        (torch.sigmoid, 4, 2 / 2**0.5),
    ],
)
def test_dynamic_lr_on_hand_numbers(activation, p, factor):
    # path 0, 1, 0 (alpha 1: beta 0): p-var 2, pv = 2^(1/p), lr = C * lr0 / 2^(2/p)
    model = Blocks([[[0.0]], [[1.0]], [[0.0]]], alpha=1.0, activation=activation)
    run = Run(model, optimizer=sgd(model))
    dyn = DynamicLR(p=p)
    dyn.on_run_start(run)
    assert dyn.lr0 == [0.2, 0.01]
    dyn.on_epoch_end(run, 0, {})
    lrs = [g["lr"] for g in run.optimizer.param_groups]
    assert lrs == pytest.approx([0.2 * factor, 0.01 * factor], rel=1e-12)
    assert run.logged == [(0, {"dynamic_lr": pytest.approx(0.2 * factor, rel=1e-12)})]


def test_dynamic_lr_wins_over_the_scheduler_and_resumes():
    model = Blocks([[[0.0]], [[1.0]], [[0.0]]], alpha=1.0, activation="relu")
    run = Run(model, optimizer=sgd(model))
    dyn = DynamicLR(p=2)
    dyn.on_before_step(run, model)  # before any epoch end the scheduler's lr stays
    assert run.optimizer.param_groups[0]["lr"] == 0.05
    dyn.on_run_start(run)
    dyn.on_epoch_end(run, 0, {})
    for g in run.optimizer.param_groups:
        g["lr"] = 123.0  # a per-update scheduler sets its lr after an update
    dyn.on_before_step(run, model)
    assert [g["lr"] for g in run.optimizer.param_groups] == pytest.approx([1.0, 0.05])
    # a resume: lr0 and the lr in use come back, and the run start sets the lr again
    resumed_run = Run(model, optimizer=sgd(model))
    resumed = round_trip(dyn, DynamicLR(p=2))
    resumed.on_run_start(resumed_run)
    assert resumed.lr0 == [0.2, 0.01]
    assert [g["lr"] for g in resumed_run.optimizer.param_groups] == pytest.approx([1.0, 0.05])


def test_dynamic_lr_leaves_a_flat_path_and_reads_activations():
    model = Blocks(torch.ones(3, 2, 2), alpha=0.5, activation="relu")  # constant init: pv = 0
    run = Run(model, optimizer=sgd(model))
    dyn = DynamicLR(p=2)
    dyn.on_run_start(run)
    with pytest.warns(UserWarning, match="is 0.0: the learning rate is left as it is"):
        dyn.on_epoch_end(run, 0, {})
    assert run.optimizer.param_groups[0]["lr"] == 0.05 and dyn.lr is None
    assert activation_name(Blocks([[[0.0]]], activation=F.relu)) == "relu"
    assert activation_name(Blocks([[[0.0]]], activation="ReLU"), "gelu") == "gelu"
    assert DynamicLR(p=2, activation="relu").constant(model) == 10.0
    assert DynamicLR(p=2, C=3.0).constant(model) == 3.0
    with pytest.warns(UserWarning, match="activation of Blocks is unknown"):
        assert DynamicLR(p=2).constant(Blocks([[[0.0]]])) == 2.0


def count_p_variations(monkeypatch):
    """The q of every p_variation call from now on (the callbacks import it when they compute)."""
    module = sys.modules["timm_overparam.research.pvariation"]
    real, calls = module.p_variation, []

    def counted(path, p):
        calls.append(float(p))
        return real(path, p)

    monkeypatch.setattr(module, "p_variation", counted)
    return calls


def test_dynamic_lr_takes_the_p_variation_the_logger_computed(monkeypatch):
    calls = count_p_variations(monkeypatch)
    model = Blocks(torch.randn(5, 2, 2), alpha=0.5, activation="relu")

    def alone(beta=None, p=2):
        """DynamicLR by itself on the current weights (it computes the p-variation: one call)."""
        dyn, run = DynamicLR(p=p, beta=beta), Run(model, optimizer=sgd(model))
        dyn.on_run_start(run)
        before = len(calls)
        dyn.on_epoch_end(run, 0, {})
        assert calls[before:] == [float(p)]
        return dyn.lr

    def epoch(logger, dyn, updates=3, main=True):
        """One epoch of `updates` updates with the logger and DynamicLR in one run; the p-variation
        calls of the updates and of the epoch end."""
        run = Run(model, optimizer=sgd(model), main=main)
        run.callbacks = CallbackList([logger, dyn])
        dyn.on_run_start(run)
        calls.clear()
        for step in range(updates):
            with torch.no_grad():
                model.w.add_(0.1 * torch.randn_like(model.w))  # the update
            run.step = step
            logger.on_after_step(run, model)
        during = list(calls)
        run.step = updates
        dyn.on_epoch_end(run, 0, {})
        return during, calls[len(during) :]

    # the logger computed after the last update: its value is taken, nothing is computed again
    logger, dyn = PVariationLogger(p=2), DynamicLR(p=2)
    during, end = epoch(logger, dyn)
    assert during == [2.0, 1.0, 1.5] * 3 and end == []  # 9 calls per epoch; 10 without the sharing
    assert (
        dyn.lr
        == alone()
        == [10 * 0.2 / logger.latest["pvar_2"] ** 2, 10 * 0.01 / logger.latest["pvar_2"] ** 2]
    )
    # a logger of p = 4 logs the 2-variation too (p/2): DynamicLR(p=2) takes it
    during, end = epoch(PVariationLogger(p=4), dyn := DynamicLR(p=2))
    assert during == [4.0, 2.0, 3.0] * 3 and end == [] and dyn.lr == alone()
    # the logger's last value is of update 2 of 3 (every 2), of another beta, or of a process that
    # computes nothing (not the main one): DynamicLR computes it itself, the same number as alone
    for logger, dyn, main in [
        (PVariationLogger(p=2, every=2), DynamicLR(p=2), True),
        (PVariationLogger(p=2), DynamicLR(p=2, beta=0.25), True),
        (PVariationLogger(p=2), DynamicLR(p=2), False),
    ]:
        during, end = epoch(logger, dyn, main=main)
        assert end == [2.0] and dyn.lr == alone(beta=dyn.beta)
    # a resumed logger's values were computed elsewhere (and the weights moved since): not taken
    logger = PVariationLogger(p=2)
    epoch(logger, DynamicLR(p=2))
    restored = round_trip(logger, PVariationLogger(p=2))
    assert restored.latest_step == 3 and restored.latest == logger.latest
    with torch.no_grad():
        model.w.mul_(2.0)
    run = Run(model, optimizer=sgd(model))
    run.step, run.callbacks = 3, CallbackList([restored, dyn := DynamicLR(p=2)])
    dyn.on_run_start(run)
    calls.clear()
    dyn.on_epoch_end(run, 0, {})
    assert calls == [2.0] and dyn.lr == alone()
    # the path doubled doubles pv: a quarter of the lr the restored value would give
    assert dyn.lr[0] == pytest.approx(10 * 0.2 / restored.latest["pvar_2"] ** 2 / 4, rel=1e-12)


# ------------------------------------------------------------------------------------ Omega
def per_sample_sq(model, x, y, loss_i):
    """sum_i |d loss_i / d yhat_i|^2 from one autograd call per sample (independent of the recorder)."""
    total = 0.0
    for xi, yi in zip(x, y, strict=True):
        out = model(xi[None]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_i(out, yi[None]), out)
        total += float(g.pow(2).sum())
    return total


def sum_of_squares(out, y):
    return (out - y).pow(2).sum(dim=1).mean()  # per-sample sum of squares, batch mean


def train_steps(model, run, callbacks, batches, accum, loss_fn, forward=None):
    """A hand-written loop: micro-batches of `accum` per update, loss / accum backward, step hooks."""
    callbacks.attach(run.optimizer, run)
    for update in batches:
        for x, y in update:
            loss = loss_fn(model(x), y) if forward is None else forward(model, x, y)
            (loss / accum).backward()
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
    callbacks.detach()


def test_omega_is_the_mean_per_sample_gradient_with_accumulation(tmp_path):
    model = nn.Linear(3, 2)
    B, accum = 4, 2
    batches = [[(torch.randn(B, 3), torch.randn(B, 2)) for _ in range(accum)] for _ in range(2)]
    expected = []
    probe = copy.deepcopy(model)
    opt = torch.optim.SGD(probe.parameters(), lr=0.1)
    for update in batches:  # hand values: |2 (yhat_i - y_i)|^2 averaged over the update's 8 samples
        sq = [float((2 * (probe(x) - y)).detach().pow(2).sum()) for x, y in update]
        expected.append(sum(sq) / (B * accum))
        assert sum(per_sample_sq(probe, x, y, sum_of_squares) for x, y in update) == pytest.approx(sum(sq))
        for x, y in update:
            (sum_of_squares(probe(x), y) / accum).backward()
        opt.step()
        opt.zero_grad()
    run = Run(model, folder=tmp_path, accum=accum)
    recorder = OmegaRecorder()
    callbacks = CallbackList([recorder])
    recorder.on_run_start(run)
    train_steps(model, run, callbacks, batches, accum, sum_of_squares)
    assert [s for s, _ in recorder.history] == [0, 1]
    assert [o for _, o in recorder.history] == pytest.approx(expected, rel=1e-5)
    assert run.logged == [(0, {"omega": recorder.history[0][1]}), (1, {"omega": recorder.history[1][1]})]
    # the batch-mean gradient the original squared is smaller by B^2
    x, y = batches[0][0]
    out = model(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(sum_of_squares(out, y), out)
    assert float(g.pow(2).sum()) / B == pytest.approx(per_sample_sq(model, x, y, sum_of_squares) / B / B**2)


def test_omega_does_not_depend_on_the_criterion_or_the_chunks(tmp_path):
    base = nn.Linear(4, 3)
    criterion = LabelSmoothingCrossEntropy(0.1)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    expected = per_sample_sq(base, x, y, criterion) / 5

    def chunks(model, x, y):  # subspace --num-samples 2: chunks of 3 and 2, their mean losses averaged
        parts = zip(x.tensor_split(2), y.tensor_split(2), strict=True)
        return torch.stack([criterion(model(a), b) for a, b in parts]).mean()

    for forward in (None, chunks):
        model = copy.deepcopy(base)
        run, recorder = Run(model, folder=tmp_path), OmegaRecorder()
        recorder.on_run_start(run)
        train_steps(model, run, CallbackList([recorder]), [[(x, y)]], 1, criterion, forward)
        recorder.on_run_end(run, {})
        assert recorder.history[0][1] == pytest.approx(expected, rel=1e-5)


def test_omega_ignores_evaluation_forwards_and_reduces_processes(tmp_path):
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    mine = per_sample_sq(model, x, y, sum_of_squares)
    # a second process with a sum of 10.0 over 4 samples; a float16 loss scale of 8
    scaler = types.SimpleNamespace(get_scale=lambda: 8.0, is_enabled=lambda: True)
    acc = Acc(num_processes=2, others=torch.tensor([10.0, 4.0], dtype=torch.float64), scaler=scaler)
    run, recorder = Run(model, folder=tmp_path, acc=acc), OmegaRecorder()
    recorder.on_run_start(run)

    def forward(model, x, y):
        with torch.no_grad():
            model(x)  # no autograd: not counted
        model.eval()
        model(x)  # eval mode: not counted
        model.train()
        copy.deepcopy(model)(x)  # an evaluation copy keeps the hook: not counted
        return 8.0 * sum_of_squares(model(x), y)  # the loss scale of float16 training

    train_steps(model, run, CallbackList([recorder]), [[(x, y)]], 1, None, forward)
    assert recorder.history[0][1] == pytest.approx((64 * mine + 10.0) / 8 / 64, rel=1e-5)


def test_omega_csv_and_state_across_a_resume(tmp_path):
    model = nn.Linear(3, 1)
    data = [[(torch.randn(2, 3), torch.randn(2, 1))] for _ in range(5)]
    run, recorder = Run(model, folder=tmp_path), OmegaRecorder()
    recorder.on_run_start(run)
    assert (tmp_path / "omega.csv").read_text() == "step,omega\n"
    callbacks = CallbackList([recorder])
    train_steps(model, run, callbacks, data[:3], 1, sum_of_squares)
    recorder.on_epoch_end(run, 0, {})
    saved = json.loads(json.dumps(callbacks.state()))  # the checkpoint after epoch 0 (3 updates)
    train_steps(model, run, callbacks, data[3:], 1, sum_of_squares)
    recorder.on_epoch_end(run, 1, {})  # epoch 1 written, then the run dies before its checkpoint
    recorder.on_run_end(run, {})
    rows = (tmp_path / "omega.csv").read_text().splitlines()
    assert rows[0] == "step,omega" and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]
    assert [float(r.split(",")[1]) for r in rows[1:]] == [o for _, o in recorder.history]
    resumed = OmegaRecorder()
    CallbackList([resumed]).load(saved, "checkpoint-0")
    assert resumed.history == recorder.history[:3]
    run2 = Run(model, folder=tmp_path)
    run2.step = 3
    resumed.on_run_start(run2)
    assert len((tmp_path / "omega.csv").read_text().splitlines()) == 4  # rows after the checkpoint dropped
    train_steps(model, run2, CallbackList([resumed]), data[3:4], 1, sum_of_squares)
    resumed.on_epoch_end(run2, 1, {})
    steps = [r.split(",")[0] for r in (tmp_path / "omega.csv").read_text().splitlines()[1:]]
    assert steps == ["0", "1", "2", "3"]
    # a non-main process writes nothing
    other = tmp_path / "other"
    other.mkdir()
    quiet = OmegaRecorder()
    quiet.on_run_start(Run(model, folder=other, main=False))
    assert not (other / "omega.csv").exists()


def test_callbacks_on_the_depth_limit_model():
    timm = pytest.importorskip("timm")
    import timm_overparam  # noqa: F401  (registers the research models if they exist)

    if "depth_limit_resnet" not in timm.list_models():
        pytest.skip("depth_limit_resnet is not registered yet")
    model = timm.create_model("depth_limit_resnet", L=6, dim=3, input_size=4, num_classes=2, alpha=0.5)
    run = Run(model, optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PVariationLogger(p=2).on_after_step(run, model)
        dyn = DynamicLR(p=2)
        dyn.on_run_start(run)
        dyn.on_epoch_end(run, 0, {})
    path = 6**0.5 * model.block_weights().double().reshape(6, -1)
    assert run.logged[0][1]["pvar_2"] == pytest.approx(brute_pvar(path, 2) ** 0.5, rel=1e-9)
    assert dyn.lr == pytest.approx([2 * 0.1 / brute_pvar(path, 2)], rel=1e-9)  # tanh: C = 2


def test_omega_folder_is_a_path(tmp_path):
    run, recorder = Run(nn.Linear(1, 1), folder=str(tmp_path)), OmegaRecorder()
    recorder.on_run_start(run)
    assert Path(tmp_path, "omega.csv").exists()


# ---------------------------------------------------------------------------------- real runs
def read_csv_rows(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "step,omega"
    return [(int(s), float(o)) for s, o in (line.split(",") for line in lines[1:])]


def test_real_runs_record_omega_pvar_and_the_dynamic_lr(tmp_path, monkeypatch):
    from timm_overparam.train import TrainConfig, train

    if "pvar" not in TrainConfig.keys():
        pytest.skip("the research flags are not wired into TrainConfig yet")
    base = dict(
        model="depth_limit_resnet",
        model_kwargs={"L": 6, "dim": 4, "input_size": 64},
        img_size=8,
        opt="sgd",
        lr=0.5,
        warmup_epochs=0,
        sched="none",
        output=str(tmp_path),
        store_grad=True,
    )
    calls = count_p_variations(monkeypatch)
    train(TrainConfig(**base, epochs=2, batch_size=64, experiment="one", pvar=2, dynamic_lr=True))
    folder = tmp_path / "one"
    updates = 1437 // 64
    # the logger's p-, p/2- and 3p/4-variations after every update, and nothing more: DynamicLR took
    # the p-variation of each epoch's last update from the logger (one call per epoch less than before)
    assert calls == [2.0, 1.0, 1.5] * (2 * updates)
    rows = read_csv_rows(folder / "omega.csv")
    assert [s for s, _ in rows] == list(range(2 * updates))
    assert all(math.isfinite(o) and o > 0 for _, o in rows)
    saved = json.loads((folder / "checkpoint-1" / "callbacks.json").read_text())
    assert [s["name"].rsplit(":", 1)[1] for s in saved] == ["PVariationLogger", "DynamicLR", "OmegaRecorder"]
    pvar, dyn, omega = (s["state"] for s in saved)
    assert omega["history"] == [list(r) for r in rows[:updates]]
    # after epoch 0: the p-variation of the last update's weights sets lr = 2 * lr0 / pv^2 (tanh)
    assert pvar["latest_step"] == updates and dyn["lr0"] == [0.5]
    assert dyn["lr"][0] == 2 * 0.5 / pvar["latest"]["pvar_2"] ** 2
    # a resume from epoch 1's start redoes its rows instead of appending them twice
    os.unlink(folder / "last")
    os.symlink("checkpoint-1", folder / "last")
    train(TrainConfig(**base, epochs=2, batch_size=64, pvar=2, dynamic_lr=True, resume=str(folder / "last")))
    again = read_csv_rows(folder / "omega.csv")
    assert [s for s, _ in again] == [s for s, _ in rows]
    assert [o for _, o in again] == pytest.approx([o for _, o in rows], rel=1e-6)
    # the same 64 samples as two micro-batches of 32: the same Omega (per-sample, whatever the split)
    train(TrainConfig(**base, epochs=1, batch_size=32, grad_accum_steps=2, experiment="accum"))
    accum = read_csv_rows(tmp_path / "accum" / "omega.csv")
    assert len(accum) == updates
    assert [o for _, o in accum[:5]] == pytest.approx([o for _, o in rows[:5]], rel=1e-4)
