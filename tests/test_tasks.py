"""Tasks and research flags of the trainer: regression (p-loss; loss and mae) in every family,
precision/recall of classification, the research callbacks' wiring and the Omega seam, and the
residual blocks' export (blocks.safetensors).

The model is a tiny MLP registered here under a test-only name (with its op and subspace variants),
so these tests do not depend on the depth-limit model."""

import csv
import json
import math
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from timm_overparam.eval.metrics import PLoss, RegressionMetrics, evaluate_model, p_loss, regression_metrics
from timm_overparam.registry import register_model
from timm_overparam.research.synthetic import ConstantDataset, SinDataset
from timm_overparam.train import NormRecorder, TrainConfig, ValidateConfig, train, validate
from timm_overparam.train.cli import parse_args, train_parser
from timm_overparam.train.config import ConfigError, default_eval_metric
from timm_overparam.train.families import BLOCKS_FILE, export_block_weights
from timm_overparam.train.loop import RESEARCH_CALLBACKS, Trainer, make_criterion, research_callbacks

MODEL = "tasks_mlp_under_test"  # a name only these tests register


class TasksMLP(nn.Module):
    """x -> tanh(fc1 x) -> + tanh(fc2 h) (one residual block) -> head; ``block_weights`` is fc2's."""

    def __init__(
        self, num_classes: int = 1, in_chans: int = 1, features: int | None = None, blocks: bool = True
    ):
        super().__init__()
        self.num_classes = num_classes
        self.fc1 = nn.Linear(features or in_chans, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, num_classes)
        if not blocks:
            self.block_weights = None  # a model without the method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x.flatten(1)))
        return self.head(h + torch.tanh(self.fc2(h)))

    def block_weights(self) -> torch.Tensor:
        return self.fc2.weight.unsqueeze(0)  # (L = 1, 16, 16)


if MODEL not in timm.list_models():

    @register_model
    def tasks_mlp_under_test(pretrained=False, num_classes=1, in_chans=1, **kwargs):
        options = {k: kwargs[k] for k in ("features", "blocks") if k in kwargs}  # not timm's cfg kwargs
        return TasksMLP(num_classes=num_classes, in_chans=in_chans, **options)


SIN = dict(
    dataset="synthetic/sin",
    task="regression",
    synthetic_samples=640,  # 576 training samples: 9 batches of 64
    batch_size=64,
    epochs=2,
    warmup_epochs=0,
    lr=0.05,
)


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv") as f:
        return list(csv.DictReader(f))


def stock_mlp(weights: Path) -> nn.Module:
    model = timm.create_model(MODEL, num_classes=1, in_chans=1)
    model.load_state_dict(load_file(weights))
    return model.eval()


def validation_data(n: int = 640, seed: int = 42, cls=SinDataset, **kwargs):
    ds = cls("validation", num_samples=n, seed=seed, **kwargs)
    return ds.x, ds.y


# ------------------------------------------------------------------------------------ the losses
@pytest.mark.parametrize(
    "p, expected",
    [  # residuals y - yhat: (1.5, -1) and (2, 0.5); sum over the 2 outputs, mean over the 2 samples
        (1.0, ((1.5 + 1) + (2 + 0.5)) / 2),
        (2.0, ((2.25 + 1) + (4 + 0.25)) / 2),
        (3.0, ((3.375 + 1) + (8 + 0.125)) / 2),
    ],
)
def test_p_loss_is_the_mean_over_samples_of_the_summed_p_powers(p, expected):
    y = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    yhat = torch.tensor([[-0.5, 0.0], [0.0, 0.0]])
    assert p_loss(yhat, y, p).item() == pytest.approx(expected, rel=1e-6)
    assert PLoss(p)(yhat, y).item() == pytest.approx(expected, rel=1e-6)
    metrics = regression_metrics(yhat, y, p)
    assert metrics.loss == pytest.approx(expected, rel=1e-12)
    assert metrics.mae == pytest.approx((1.5 + 1 + 2 + 0.5) / 4, rel=1e-12)  # over samples and outputs


def test_p_loss_checks_shapes_and_the_criterion_follows_the_task():
    assert p_loss(torch.zeros(3), torch.ones(3, 1), 2).item() == 1.0  # (N,) outputs are (N, 1)
    with pytest.raises(ValueError, match=r"outputs \(3, 2\) and targets \(3, 1\) do not match"):
        p_loss(torch.zeros(3, 2), torch.ones(3, 1))
    assert isinstance(make_criterion(TrainConfig(task="regression", p_loss=3)), PLoss)
    assert make_criterion(TrainConfig(task="regression", p_loss=3)).p == 3.0
    assert isinstance(make_criterion(TrainConfig(smoothing=0.0)), nn.CrossEntropyLoss)


def test_precision_and_recall_are_macro_averages():
    """Targets 0 0 1 1 2 2, predictions 0 1 1 1 2 0: precision 1/2, 2/3, 1; recall 1/2, 1, 1/2."""
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))  # logits = the one-hot inputs
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    data = [(nn.functional.one_hot(predicted, 3).float(), torch.tensor([0, 0, 1, 1, 2, 2]))]
    metrics = evaluate_model(model, data)
    assert metrics.precision == pytest.approx((1 / 2 + 2 / 3 + 1) / 3, rel=1e-6)
    assert metrics.recall == pytest.approx((1 / 2 + 1 + 1 / 2) / 3, rel=1e-6)
    assert metrics.top1 == pytest.approx(4 / 6, rel=1e-6)
    regression = evaluate_model(model, [(torch.eye(3), torch.zeros(3, 3))], task="regression", p_loss=1)
    assert regression == RegressionMetrics(loss=1.0, mae=1 / 3)


# ------------------------------------------------------------------------------------ the config
def test_task_and_research_keys_and_flags():
    cfg = parse_args(
        train_parser(),
        [
            "--dataset",
            "synthetic/constant",
            "--task",
            "regression",
            "--p-loss",
            "3",
            "--synthetic-samples",
            "1000",
            "--synthetic-c",
            "0.5",
            "--pvar",
            "2.5",
            "--pvar-every",
            "4",
            "--dynamic-lr",
            "--sched",
            "none",
            "--store-grad",
        ],
    )
    assert (cfg.task, cfg.p_loss, cfg.synthetic_samples, cfg.synthetic_c) == ("regression", 3.0, 1000, 0.5)
    assert (cfg.pvar, cfg.pvar_every, cfg.dynamic_lr, cfg.store_grad) == (2.5, 4, True, True)
    assert cfg.objective.task == "regression" and cfg.research.pvar == 2.5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert ValidateConfig(task="regression", p_loss=1).p_loss == 1.0
    # --eval-metric: top1 for classification, loss for regression, unless given
    assert TrainConfig().eval_metric is None
    assert default_eval_metric(TrainConfig()) == "top1"
    assert default_eval_metric(cfg) == "loss"
    assert default_eval_metric(cfg.replace(eval_metric="mae")) == "mae"


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(task="ranking"), r"task must be one of \['classification', 'regression'\]"),
        (dict(p_loss=0.5), r"p_loss must be >= 1, got 0.5"),
        (dict(dynamic_lr=True, sched="none"), r"dynamic_lr sets the learning rate .*: add pvar P"),
        (dict(pvar=1.0), r"pvar must be >= 2 .*got 1.0"),
        (dict(pvar=2.0, dynamic_lr=True), r"the 'cosine' schedule would overwrite .*: add sched none"),
        (dict(pvar_every=0), r"pvar_every must be >= 1"),
        (dict(task="regression", label_noise=0.1), r"label_noise 0.1 needs classes"),
        (dict(task="regression", train_fraction=0.5), r"train_fraction 0.5 needs classes"),
        (dict(synthetic_samples=5), r"synthetic_samples must be >= 10"),
    ],
)
def test_bad_task_and_research_values_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_flags_name_the_fix_on_the_command_line():
    with pytest.raises(ConfigError, match=r"--dynamic-lr sets .*: add --pvar P"):
        parse_args(train_parser(), ["--dynamic-lr", "--sched", "none"])


def test_task_and_data_must_agree_before_anything_is_written(tmp_path):
    sin = {**SIN, "model": MODEL, "output": str(tmp_path)}
    cases = [
        ({**sin, "task": "classification"}, r"'synthetic/sin' has regression targets: add --task regression"),
        (
            {**sin, "dataset": "sklearn/digits"},
            r"--task regression needs float targets .* 'sklearn/digits' has",
        ),
        (
            {**sin, "num_classes": 3},
            r"--num-classes 3: a regression model has one output per target dimension",
        ),
        ({**sin, "pvar": 2.0, "model_kwargs": {"blocks": False}}, r"--pvar follows .* has no block_weights"),
        ({**sin, "eval_metric": "top1"}, r"--eval-metric 'top1' is not one of \['loss', 'mae'\]"),
    ]
    for values, message in cases:
        with pytest.raises(ValueError, match=message):
            Trainer(TrainConfig(**values))
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------- regression runs
def test_a_plain_regression_run_reports_loss_and_mae_and_exports_the_blocks(tmp_path):
    res = train(TrainConfig(model=MODEL, output=str(tmp_path), experiment="plain", **SIN))
    folder = tmp_path / "plain"
    table = rows(folder)
    assert {"eval_loss", "eval_mae", "train_loss"} <= set(table[0])
    assert not {"eval_top1", "eval_ece", "eval_precision"} & set(table[0])
    assert res["eval_metric"] == "loss" and set(res["final"]) == {"loss", "mae"}
    assert res["reliability"] == {} and res["best_metric"] == min(float(r["eval_loss"]) for r in table)
    assert "eval_metric: loss" in (folder / "args.yaml").read_text()
    assert json.loads((folder / "results.json").read_text())["final"] == res["final"]
    # the final metrics are the p-loss and the MAE of the trained model on the validation split
    model = stock_mlp(folder / "last" / "model.safetensors")
    x, y = validation_data()
    with torch.no_grad():
        out = model(x)
    assert res["final"]["loss"] == pytest.approx(((y - out) ** 2).mean().item(), rel=1e-5)
    assert res["final"]["mae"] == pytest.approx((y - out).abs().mean().item(), rel=1e-5)
    # blocks.safetensors: the residual block's weights of the trained model, key 'blocks'
    assert res["exports"] == [str(folder / BLOCKS_FILE)]
    with safe_open(folder / BLOCKS_FILE, "pt") as f:
        assert list(f.keys()) == ["blocks"] and f.metadata()["model"] == MODEL
        assert torch.equal(f.get_tensor("blocks"), model.fc2.weight.detach().unsqueeze(0))
    # validate.py reads the regression metrics too
    record = validate(
        ValidateConfig(
            model=MODEL,
            checkpoint=str(folder / "last"),
            task="regression",
            dataset="synthetic/sin",
            synthetic_samples=640,
        )
    )
    assert record["loss"] == pytest.approx(res["final"]["loss"], rel=1e-9) and "top1" not in record


def test_op_regression_collapses_and_exports_the_collapsed_blocks(tmp_path):
    res = train(TrainConfig(model=f"{MODEL}_op2", output=str(tmp_path), experiment="op", p_loss=3, **SIN))
    folder = tmp_path / "op"
    assert res["family"] == "op" and set(res["final"]) == {"loss", "mae", "collapse_rel_err"}
    assert res["final"]["collapse_rel_err"] < 1e-4
    assert res["expanded"]["loss"] == pytest.approx(res["final"]["loss"], rel=1e-5)
    assert res["exports"] == [str(folder / "collapsed.safetensors"), str(folder / BLOCKS_FILE)]
    model = stock_mlp(folder / "collapsed.safetensors")
    x, y = validation_data()
    with torch.no_grad():
        out = model(x)
    assert res["final"]["loss"] == pytest.approx((y - out).abs().pow(3).mean().item(), rel=1e-5)
    assert torch.equal(load_file(folder / BLOCKS_FILE)["blocks"], model.fc2.weight.detach().unsqueeze(0))


def test_subspace_regression_ensembles_average_outputs(tmp_path):
    res = train(
        TrainConfig(
            model=f"{MODEL}_line",
            output=str(tmp_path),
            experiment="line",
            eval_ensembles="0+1",
            eval_metric="mae",
            **SIN,
        )
    )
    folder = tmp_path / "line"
    final = res["final"]
    assert {"loss", "mae", "point0_loss", "point0.5_mae", "ens0+1_loss", "ens0+1_mae"} <= set(final)
    assert not any("top1" in k or "ece" in k for k in final) and res["reliability"] == {}
    assert res["best_metric"] == min(float(r["eval_mae"]) for r in rows(folder))
    x, y = validation_data()
    with torch.no_grad():
        a, b = (stock_mlp(folder / f"point-{p}.safetensors")(x) for p in (0, 1))
    assert final["point0_loss"] == pytest.approx(((y - a) ** 2).mean().item(), rel=1e-5)
    assert final["ens0+1_loss"] == pytest.approx(((y - (a + b) / 2) ** 2).mean().item(), rel=1e-5)
    assert final["ens0+1_mae"] == pytest.approx((y - (a + b) / 2).abs().mean().item(), rel=1e-5)
    blocks = load_file(folder / BLOCKS_FILE)["blocks"]  # of the first point, the subspace's stock model
    assert torch.equal(blocks, load_file(folder / "point-0.safetensors")["fc2.weight"].unsqueeze(0))


def test_classification_runs_report_precision_and_recall(tmp_path):
    res = train(
        TrainConfig(
            model=MODEL,
            model_kwargs={"features": 32 * 32},
            output=str(tmp_path),
            experiment="digits",
            epochs=1,
            warmup_epochs=0,
        )
    )
    head = set(rows(tmp_path / "digits")[0])
    assert {f"eval_{k}" for k in ("top1", "top5", "loss", "ece", "precision", "recall")} <= head
    assert (
        res["eval_metric"] == "top1"
        and 0 < res["final"]["precision"] <= 1
        and 0 < res["final"]["recall"] <= 1
    )
    assert list(res["reliability"]) == ["model"]


# --------------------------------------------------------------------------- block weights export
def test_export_block_weights_writes_the_tensor_or_nothing(tmp_path):
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3, 3))

        def block_weights(self):
            return self.w * 1  # a tensor that requires grad: exported detached

    model = Blocks()
    path = export_block_weights(model, tmp_path / "b.safetensors", {"model": "x"})
    assert path == tmp_path / "b.safetensors" and torch.equal(load_file(path)["blocks"], model.w.detach())
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writer's temporary file is gone
    assert export_block_weights(nn.Linear(2, 2), tmp_path / "none.safetensors") is None
    assert not (tmp_path / "none.safetensors").exists()
    model.block_weights = lambda: [1, 2]
    with pytest.raises(TypeError, match=r"block_weights\(\) must return an \(L, ...\) tensor, got list"):
        export_block_weights(model, tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------ research callbacks
class Recorder:
    """Base of the stand-ins: remembers its arguments and the run."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.epochs: list[int] = []

    def on_epoch_end(self, run, epoch, metrics):
        self.epochs.append(epoch)


class PVariationLogger(Recorder):
    pass


class DynamicLR(Recorder):
    """Halves the learning rate at each epoch end (what DynamicLR's rule does with another factor)."""

    def on_epoch_end(self, run, epoch, metrics):
        super().on_epoch_end(run, epoch, metrics)
        for group in run.optimizer.param_groups:
            group["lr"] /= 2


class OmegaRecorder(Recorder):
    """Output gradients through the documented seam: a forward hook on ``run.unwrapped`` and a
    tensor hook on outputs that require grad (what the hook sees, unscaled)."""

    def on_run_start(self, run):
        self.run, self.batches = run, []
        run.unwrapped.register_forward_hook(self.forward_hook)

    def forward_hook(self, module, inputs, output):
        if not output.requires_grad:  # evaluation (no_grad)
            return
        x = inputs[0].detach()

        def grad_hook(grad):
            self.batches.append((x, output.detach(), grad))

        output.register_hook(grad_hook)


@pytest.fixture
def stand_ins(monkeypatch):
    module = types.ModuleType(RESEARCH_CALLBACKS)
    module.PVariationLogger, module.DynamicLR, module.OmegaRecorder = (
        PVariationLogger,
        DynamicLR,
        OmegaRecorder,
    )
    monkeypatch.setitem(sys.modules, RESEARCH_CALLBACKS, module)
    return module


def test_research_callbacks_are_imported_only_when_a_flag_asks(monkeypatch):
    monkeypatch.setitem(sys.modules, RESEARCH_CALLBACKS, None)  # importing it now raises ImportError
    assert research_callbacks(TrainConfig()) == []
    with pytest.raises(ImportError):
        research_callbacks(TrainConfig(store_grad=True))


def test_research_flags_attach_their_callbacks_after_the_given_ones(tmp_path, stand_ins):
    p, every, accum = 3.0, 2, 2
    cfg = TrainConfig(
        model=MODEL,
        output=str(tmp_path),
        experiment="research",
        callbacks=[NormRecorder()],
        pvar=p,
        pvar_every=every,
        dynamic_lr=True,
        sched="none",
        store_grad=True,
        grad_accum_steps=accum,
        **(SIN | dict(dataset="synthetic/constant", p_loss=p, batch_size=32)),
    )
    trainer = Trainer(cfg)
    callbacks = trainer.callbacks.callbacks
    assert [type(c) for c in callbacks] == [NormRecorder, PVariationLogger, DynamicLR, OmegaRecorder]
    assert callbacks[1].kwargs == dict(p=p, every=every) and callbacks[2].kwargs == dict(p=p)
    assert callbacks[3].kwargs == {}
    assert isinstance(trainer.criterion, PLoss) and trainer.scheduler is None
    trainer.run()
    assert callbacks[1].epochs == [0, 1]
    # --dynamic-lr with --sched none: the callback's learning rate is the one the next epoch uses
    assert [float(r["lr"]) for r in rows(tmp_path / "research")] == [0.05, 0.05 / 2]
    # Omega's seam: each micro-batch's output gradient, times the batch (mean loss) and the
    # accumulation steps (accelerate divides the loss), is the per-sample gradient
    # d|y - yhat|^p / d yhat = -p |y - yhat|^(p-1) sign(y - yhat), here with y = c = 0.1
    omega = callbacks[3]
    assert len(omega.batches) == 2 * (576 // 32)  # every micro-batch of both epochs, no evaluation
    for x, out, grad in omega.batches:
        per_sample = grad * len(x) * accum
        r = 0.1 - out
        assert x.shape == (32, 1)
        torch.testing.assert_close(per_sample, -p * r.abs() ** (p - 1) * r.sign(), rtol=1e-4, atol=1e-6)
        omega_t = per_sample.pow(2).sum(1).mean().item()  # Omega(t) = mean_i |d loss / d yhat_i|^2
        assert math.isfinite(omega_t) and omega_t > 0
    names = [c["name"] for c in json.loads((tmp_path / "research" / "last" / "callbacks.json").read_text())]
    assert names[1:] == [f"{__name__}:PVariationLogger", f"{__name__}:DynamicLR", f"{__name__}:OmegaRecorder"]


def test_constant_regression_learns_the_constant(tmp_path):
    cfg = TrainConfig(
        model=MODEL,
        output=str(tmp_path),
        **(SIN | dict(dataset="synthetic/constant", epochs=3, synthetic_c=0.7)),
    )
    res = train(cfg)
    _, y = validation_data(cls=ConstantDataset, c=0.7)
    assert torch.equal(y, torch.full_like(y, 0.7))
    assert res["final"]["mae"] < 0.05  # the outputs approach the constant 0.7
