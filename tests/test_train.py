"""train.py / validate.py end to end on the embedded digits: op and line runs, resume, exports, errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from accelerate import Accelerator
from conftest import randomize_norm_stats, rel_err
from PIL import Image
from safetensors.torch import load_file, save_file

from timm_overparam import collapse
from timm_overparam.train.cli import parse_args, train_parser, validate_parser
from timm_overparam.train.data import DataInfo
from timm_overparam.train.loop import Trainer, create_model, train
from timm_overparam.train.validation import validate

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--model", "test_resnet_op2", "-b", "128", "--warmup-epochs", "0", "--lr", "0.1"]


def run(tmp_path: Path, *argv: str) -> dict:
    return train(parse_args(train_parser(), ["--output", str(tmp_path), *argv]))


def launch_two(*argv: str) -> subprocess.CompletedProcess:
    """train.py under ``accelerate launch`` with 2 CPU processes (gloo)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return subprocess.run([*launch, "train.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv") as f:
        return list(csv.DictReader(f))


TIMING = ("train_step_time",)  # wall-clock columns of summary.csv: never equal between two runs


def measured(table: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows of summary.csv without their wall-clock columns (what two runs must agree on)."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in table]


@pytest.mark.slow
def test_op_run_collapses_exactly_and_exports_a_stock_model(tmp_path):
    res = run(tmp_path, *FAST, "--epochs", "2", "--experiment", "op")
    folder = tmp_path / "op"
    assert res["family"] == "op" and res["expanded"]["top1"] == res["final"]["top1"]
    assert float(rows(folder)[1]["train_loss"]) < float(rows(folder)[0]["train_loss"])  # it learns
    assert res["param_count"] > res["param_count_collapsed"]
    assert res["final"]["collapse_rel_err"] < 1e-4
    assert [r["epoch"] for r in rows(folder)] == ["0", "1"]
    assert {"train_loss", "eval_top1", "eval_top5", "eval_loss", "eval_ece", "lr"} <= set(rows(folder)[0])
    assert os.readlink(folder / "last") == "checkpoint-2"
    assert (folder / "args.yaml").read_text().startswith("config:")
    # the export loads into stock timm without the plugin, in a fresh interpreter
    code = (
        "import sys, timm; m = timm.create_model('test_resnet', pretrained=True, num_classes=10, in_chans=1, "
        "pretrained_cfg_overlay=dict(file=sys.argv[1])); "
        "print('timm_overparam' in sys.modules, sum(p.numel() for p in m.parameters()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder / "collapsed.safetensors")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    ).stdout.split()
    assert out == ["False", str(res["param_count_collapsed"])]
    # validate.py on the checkpoint folder and on the export agree
    ckpt = validate(
        parse_args(validate_parser(), ["--model", "test_resnet_op2", "--checkpoint", str(folder / "last")])
    )
    stock = validate(
        parse_args(
            validate_parser(),
            ["--model", "test_resnet", "--checkpoint", str(folder / "collapsed.safetensors")],
        )
    )
    assert ckpt["top1"] == stock["top1"] == pytest.approx(100 * res["final"]["top1"], abs=1e-3)
    assert ckpt["param_count_expanded"] > ckpt["param_count_collapsed"] == stock["param_count"]


@pytest.mark.slow
def test_resume_gives_the_same_metrics_as_a_straight_run(tmp_path):
    args = [*FAST, "--epochs", "2", "--model-ema", "--model-ema-decay", "0.9", "--smoothing", "0.1"]
    run(tmp_path, *args, "--experiment", "straight")
    first = run(tmp_path, *args, "--experiment", "split")  # then cut after epoch 1 and resumed below
    # as if killed after epoch 1's summary row was written, before its checkpoint became `last`
    os.unlink(tmp_path / "split" / "last")
    os.symlink("checkpoint-1", tmp_path / "split" / "last")
    run(tmp_path, *args, "--resume", str(tmp_path / "split" / "last"))
    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "split")
    assert first["final"]["top1"] == float(straight[-1]["eval_top1"])
    assert measured(resumed) == measured(straight)  # epoch 1 once, as straight: loss, metrics, EMA, lr


def test_line_run_evaluates_points_and_ensembles_and_exports_each_point(tmp_path):
    res = run(
        tmp_path,
        *FAST[2:],
        "--model",
        "test_resnet_line",
        "--epochs",
        "1",
        "--num-samples",
        "2",
        "--eval-points",
        "0,0.5,1",
        "--eval-ensembles",
        "0+1",
        "--bn-recal-batches",
        "3",
        "--experiment",
        "line",
    )
    folder = tmp_path / "line"
    final = res["final"]
    assert res["family"] == "subspace"
    assert final["top1"] == pytest.approx(sum(final[f"point{p}_top1"] for p in ("0", "0.5", "1")) / 3)
    assert {"ens0+1_top1", "ens0+1_ece"} <= set(final)
    for p in ("0", "0.5", "1"):
        stock = validate(
            parse_args(
                validate_parser(),
                ["--model", "test_resnet", "--checkpoint", str(folder / f"point-{p}.safetensors")],
            )
        )
        assert stock["top1"] == pytest.approx(
            100 * final[f"point{p}_top1"], abs=1e-3
        )  # its own BN statistics
    record = validate(
        parse_args(
            validate_parser(),
            [
                "--model",
                "test_resnet_line",
                "--checkpoint",
                str(folder / "last"),
                "--eval-points",
                "0.5",
                "--bn-recal-batches",
                "3",
            ],
        )
    )
    assert record["points"][0]["point"] == 0.5 and record["param_count"] > record["param_count_point"]


# LayerNorm models: a batch split over processes or micro-batches gives the same step as the whole batch
VIT = ["--model-kwargs", "img_size=32", "--warmup-epochs", "0", "--lr", "0.1", "--epochs", "1"]


def same_rows(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    a, b = measured(a), measured(b)
    assert len(a) == len(b) and all(x.keys() == y.keys() for x, y in zip(a, b, strict=True))
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-5, abs=1e-6), k


def same_records(a: list[dict], b: list[dict]) -> None:
    """Two runs' callback records (NormRecorder's): the same updates, norms within float32 sums."""
    assert [(r["step"], r["epoch"]) for r in a] == [(r["step"], r["epoch"]) for r in b]
    for x, y in zip(a, b, strict=True):
        for k in ("grad_norm", "weight_norm"):
            assert x[k] == pytest.approx(y[k], rel=1e-5), (x["step"], k)


RECORDER = ["--callback", "timm_overparam.train.callbacks:NormRecorder"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, extra, records",
    [
        ("test_vit_op2", ["--epochs", "2", *RECORDER], True),  # a callback records what one process does
        ("test_vit_line", ["--subspace-beta", "1", "--eval-ensembles", "0+1"], False),
    ],
)
def test_two_processes_match_one(tmp_path, model, extra, records):
    argv = ["--model", model, *VIT, *extra, "--output", str(tmp_path)]
    two = launch_two(*argv, "-b", "64", "--experiment", "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count(f"{model} (") == 1  # printed by the main process only
    run(tmp_path, *argv, "-b", "128", "--experiment", "one")
    same_rows(rows(tmp_path / "two"), rows(tmp_path / "one"))
    assert sorted(p.name for p in (tmp_path / "two").glob("*.safetensors")) == sorted(
        p.name for p in (tmp_path / "one").glob("*.safetensors")
    )
    if records:
        two, one = (json.loads((tmp_path / name / "norms.json").read_text()) for name in ("two", "one"))
        same_records(two, one)
        assert len(one) == 2 * (1437 // 128)
        assert torch.isfinite(torch.tensor([r["grad_norm"] for r in one])).all()


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    run(tmp_path, "--model", "test_vit_op2", *VIT, "-b", "128", "--experiment", "whole")
    run(
        tmp_path,
        "--model",
        "test_vit_op2",
        *VIT,
        "-b",
        "32",
        "--grad-accum-steps",
        "4",
        "--experiment",
        "acc",
    )
    same_rows(rows(tmp_path / "acc"), rows(tmp_path / "whole"))
    state = json.loads((tmp_path / "acc" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 1437 // 128  # one update per 4 micro-batches; the partial last batch is dropped


@pytest.mark.slow
def test_bf16_mixed_precision_checks_the_collapse_at_its_tolerance(tmp_path):
    res = run(
        tmp_path, *FAST, "--epochs", "1", "--train-fraction", "0.25", "--amp", "--amp-dtype", "bfloat16"
    )
    assert 0 < res["final"]["collapse_rel_err"] <= 5e-2  # bf16 autocast rounds the two forms differently
    assert abs(res["expanded"]["top1"] - res["final"]["top1"]) < 0.05


def write_image_folder(root: Path) -> None:
    """Two classes (reddish, bluish 12x12 images), 6 images each, in ``train/`` and ``validation/``."""
    gen = torch.Generator().manual_seed(0)
    for split in ("train", "validation"):
        for c, colour in enumerate(((255, 0, 0), (0, 0, 255))):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(6):
                noise = torch.randint(0, 40, (12, 12, 3), generator=gen)
                pixels = (torch.tensor(colour) * 0.8 + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.png")


def test_image_folder_dataset(tmp_path):
    write_image_folder(tmp_path / "data")
    run(
        tmp_path,
        *FAST,
        "--data-dir",
        str(tmp_path / "data"),
        "--img-size",
        "16",
        "--epochs",
        "2",
        "-b",
        "4",
        "--experiment",
        "f",
    )
    stock = timm.create_model("test_resnet", num_classes=2)  # the two class folders were found
    stock.load_state_dict(load_file(tmp_path / "f" / "collapsed.safetensors"))
    assert float(rows(tmp_path / "f")[1]["train_loss"]) < float(rows(tmp_path / "f")[0]["train_loss"])
    with pytest.raises(ValueError, match=r"the training set has 12 samples, fewer than one batch \(-b 16\)"):
        run(tmp_path, *FAST, "--data-dir", str(tmp_path / "data"), "-b", "16", "--experiment", "g")


def test_hugging_face_dataset_through_timm(tmp_path, monkeypatch):
    # hfds/<name> is timm's ReaderHfds (datasets.load_dataset); a local image folder needs no hub
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    write_image_folder(tmp_path / "images")
    (tmp_path / "cache").mkdir()
    run(
        tmp_path,
        *FAST,
        "--dataset",
        f"hfds/{tmp_path / 'images'}",
        "--data-dir",
        str(tmp_path / "cache"),  # timm passes it to datasets as cache_dir
        "--img-size",
        "16",
        "--epochs",
        "6",
        "-b",
        "4",
        "--experiment",
        "h",
    )
    assert any((tmp_path / "cache").iterdir())  # datasets' cache in --data-dir
    assert float(rows(tmp_path / "h")[-1]["train_loss"]) < float(rows(tmp_path / "h")[0]["train_loss"])
    stock = timm.create_model("test_resnet", num_classes=2)  # the two classes of the folder
    stock.load_state_dict(load_file(tmp_path / "h" / "collapsed.safetensors"))


def test_pretrained_path_and_initial_checkpoint(tmp_path, one_epoch_run):
    base = timm.create_model("test_resnet")  # 3 channels, 1000 classes: timm adapts both to the digits
    randomize_norm_stats(base)
    save_file(base.state_dict(), tmp_path / "base.safetensors")
    args = parse_args(
        train_parser(),
        [
            "--model",
            "test_resnet_op2",
            "--pretrained",
            "--pretrained-path",
            str(tmp_path / "base.safetensors"),
        ],
    )
    model = create_model(args, DataInfo(num_classes=10, in_chans=1))
    plain = collapse(model).state_dict()
    stem = base.conv1[0].weight.sum(1, keepdim=True)  # timm's adaptation to one input channel
    assert rel_err(plain["conv1.0.weight"], stem) < 1e-5
    for k, v in base.state_dict().items():
        if not k.startswith(("conv1.0.", "fc.")):
            assert rel_err(plain[k].double(), v.double()) < 1e-5, k
    with pytest.raises(ValueError, match=r"--pretrained-path 'x' needs --pretrained"):
        create_model(parse_args(train_parser(), ["--pretrained-path", "x"]), DataInfo(10, 1))
    # --initial-checkpoint: the weights of an earlier run of the same model
    weights = one_epoch_run / "last" / "model.safetensors"
    trainer = Trainer(
        parse_args(train_parser(), [*FAST, "--initial-checkpoint", str(weights), "--output", str(tmp_path)])
    )
    loaded = load_file(weights)
    assert all(torch.equal(v, loaded[k]) for k, v in trainer.unwrapped.state_dict().items())


def write_mnist(root: Path, counts: dict[str, int]) -> None:
    """torchvision's MNIST raw files (big-endian idx format), written with random 28x28 digits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in counts.items():
        labels = torch.arange(n) % 10
        images = torch.randint(0, 60, (n, 28, 28), generator=gen)
        for image, label in zip(images, labels.tolist(), strict=True):
            image[2:26, 2 + 2 * label : 6 + 2 * label] = 255  # the class is the bar's position
        header = lambda magic, *dims: b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))  # noqa: E731
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            header(2051, n, 28, 28) + bytes(images.flatten().tolist())
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header(2049, n) + bytes(labels.tolist()))


def test_torch_mnist_is_one_channel(tmp_path):
    write_mnist(tmp_path / "data", {"train": 200, "t10k": 50})
    run(
        tmp_path,
        *FAST,
        "--dataset",
        "torch/mnist",
        "--data-dir",
        str(tmp_path / "data"),
        "--img-size",
        "28",
        "-b",
        "20",
        "--no-aug",
        "--epochs",
        "3",
        "--experiment",
        "m",
    )
    args = yaml.safe_load((tmp_path / "m" / "args.yaml").read_text())
    assert args["dataset"] == "torch/mnist"
    assert float(rows(tmp_path / "m")[2]["train_loss"]) < float(rows(tmp_path / "m")[0]["train_loss"])
    stock = timm.create_model("test_resnet", num_classes=10, in_chans=1)  # the export has 1 input channel
    stock.load_state_dict(load_file(tmp_path / "m" / "collapsed.safetensors"))
    assert stock.conv1[0].in_channels == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "resnet18_op9"], "unknown model 'resnet18_op9'"),
        (["--dataset", "bogus/x"], "unknown dataset 'bogus/x'"),
        (["--dataset", "torch/cifar10"], "needs --data-dir"),
        (["--data-dir", "/nonexistent/dir"], "data dir '/nonexistent/dir' does not exist"),
        (["--eval-points", "0.5"], "need a subspace model"),
        (["--eval-points", "0.5,x"], "bad point 'x'"),
        (["--eval-metric", "top9"], "--eval-metric 'top9' is not one of"),
    ],
)
def test_bad_input_names_the_fix(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, *FAST, "--epochs", "1", *argv)


def test_bad_checkpoints_name_the_file(tmp_path, one_epoch_copy):
    last = one_epoch_copy / "last"
    with pytest.raises(ValueError, match=r"trained as 'test_resnet_op2'.*--model test_resnet_op2"):
        run(tmp_path, "--model", "test_resnet_line", "--resume", str(last))
    with pytest.raises(ValueError, match=r"fc\.(weight|bias) has shape \[10.*--num-classes"):
        validate(
            parse_args(
                validate_parser(),
                [
                    "--model",
                    "test_resnet",
                    "--num-classes",
                    "3",
                    "--checkpoint",
                    str(one_epoch_copy / "collapsed.safetensors"),
                ],
            )
        )
    model_file = last.resolve() / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=r"model.safetensors.*not a readable safetensors file"):
        run(tmp_path, *FAST, "--epochs", "2", "--resume", str(last))
    (last.resolve() / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match=r"is not a train.py checkpoint: trainer_state.json is missing"):
        run(tmp_path, *FAST, "--epochs", "2", "--resume", str(last))


def test_a_run_killed_while_saving_leaves_a_loadable_last(tmp_path, monkeypatch, one_epoch_copy):
    k = one_epoch_copy  # one epoch done: `last` -> checkpoint-1
    save_state = Accelerator.save_state

    def killed(self, output_dir, **kwargs):  # the process dies halfway through writing checkpoint-2
        save_state(self, output_dir, **kwargs)
        Path(output_dir, "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Accelerator, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *FAST, "--epochs", "2", "--resume", str(k / "last"))
    monkeypatch.undo()
    assert os.readlink(k / "last") == "checkpoint-1"
    assert not (k / "checkpoint-2").exists()
    res = run(tmp_path, *FAST, "--epochs", "2", "--resume", str(k / "last"))
    assert os.readlink(k / "last") == "checkpoint-2" and res["epochs"] == 2
    assert [r["epoch"] for r in rows(k)] == ["0", "1"]
    assert not list(k.glob(".*.tmp"))  # the dead run's temporary folder is gone


def test_validate_ema_reparam_and_results_files(tmp_path):
    res = run(
        tmp_path, *FAST, "--epochs", "1", "--model-ema", "--model-ema-decay", "0.5", "--experiment", "e"
    )
    last = str(tmp_path / "e" / "last")
    ema = validate(
        parse_args(
            validate_parser(),
            [
                "--model",
                "test_resnet_op2",
                "--checkpoint",
                last,
                "--use-ema",
                "--results-file",
                str(tmp_path / "r.csv"),
                "--results-format",
                "csv",
            ],
        )
    )
    assert (
        ema["top1"] == pytest.approx(100 * res["final"]["ema_top1"], abs=1e-3) != 100 * res["final"]["top1"]
    )
    with open(tmp_path / "r.csv") as f:
        (row,) = csv.DictReader(f)
    assert float(row["top1"]) == ema["top1"] and row["model"] == "test_resnet_op2"
    stock = ["--model", "test_resnet", "--checkpoint", str(tmp_path / "e" / "collapsed.safetensors")]
    json_file = str(tmp_path / "r.json")
    plain = validate(parse_args(validate_parser(), [*stock, "--results-file", json_file]))
    reparam = validate(parse_args(validate_parser(), [*stock, "--reparam"]))
    assert json.loads(Path(json_file).read_text()) == plain
    assert plain["top1"] == reparam["top1"] == pytest.approx(100 * res["final"]["top1"], abs=1e-3)
    assert plain["top1_err"] == pytest.approx(100 - plain["top1"]) and plain["num_samples"] == 360
    with pytest.raises(ValueError, match=r"--use-ema needs a train.py checkpoint folder"):
        validate(parse_args(validate_parser(), [*stock, "--use-ema"]))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, one_epoch_copy):
    n = one_epoch_copy  # one epoch done: `last` -> checkpoint-1
    before = (n / "checkpoint-1" / "model.safetensors").read_bytes()
    with pytest.raises(FloatingPointError, match=r"the loss is nan.*untouched"):
        run(tmp_path, *FAST, "--epochs", "3", "--lr", "1e30", "--resume", str(n / "last"))
    assert os.readlink(n / "last") == "checkpoint-1"
    assert (n / "checkpoint-1" / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_wandb_only_with_the_flag_and_offline_run_written(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    code = (
        "import sys, runpy; sys.argv = ['train.py', *sys.argv[1:]]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "print('wandb imported:', sys.modules.get('wandb') is not None)"
    )
    common = [*FAST, "--epochs", "1", "--train-fraction", "0.25", "--output", str(tmp_path)]
    plain = subprocess.run(
        [sys.executable, "-c", code, *common, "--experiment", "plain"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0, plain.stderr
    assert "wandb imported: False" in plain.stdout
    logged = subprocess.run(
        [sys.executable, "-c", code, *common, "--experiment", "w", "--log-wandb", "--wandb-tags", "t1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert logged.returncode == 0, logged.stderr
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    (log,) = runs[0].glob("*.wandb")
    data = log.read_bytes()  # the run's protobuf log: config, tags and the per-epoch metric names
    assert len(runs) == 1 and all(key in data for key in (b"eval_top1", b"eval_ece", b"train_loss", b"t1"))


def test_shipped_configs_parse():
    args = parse_args(train_parser(), ["-c", str(ROOT / "configs" / "cifar10_resnet18_op3.yaml")])
    assert (args.model, args.dataset, args.scale, args.model_ema) == (
        "resnet18_op3",
        "torch/cifar10",
        [0.6, 1.0],
        True,
    )
    sweep = yaml.safe_load((ROOT / "configs" / "sweeps" / "digits_depth.yaml").read_text())
    argv = [f"--{k}={v['values'][-1]}" for k, v in sweep["parameters"].items()]  # what wandb's ${args} gives
    args = parse_args(train_parser(), argv)
    assert (args.model, args.lr, args.seed) == ("resnet18_op4", 0.1, 1)
    assert sweep["metric"]["name"] == "eval_top1" and sweep["program"] == "train.py"


def test_train_help_documents_every_flag():
    text = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--model-kwargs",
        "--subspace-beta",
        "--num-samples",
        "--eval-ensembles",
        "--checkpoint-hist",
    ):
        assert flag in text
    assert all(action.help for action in train_parser()._actions)
    assert json.loads(json.dumps(parse_args(train_parser(), []).to_dict()))["model"] == "resnet18_op3"
