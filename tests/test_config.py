"""The run config: the CLI, YAML files and Python build the same checked object; args.yaml round-trips."""

import subprocess
import sys

import pytest
import yaml
from test_train import FAST, ROOT, run

from timm_overparam.train import ConfigError, TrainConfig, ValidateConfig
from timm_overparam.train.cli import parse_args, train_parser, validate_parser


def test_cli_yaml_and_python_build_equal_configs(tmp_path):
    argv = ["--model", "test_vit_op2", "--epochs", "3", "-b", "32", "--lr", "1", "--scale", "0.5", "1"]
    argv += ["--model-kwargs", "img_size=32", "--no-sched-on-updates", "--wandb-tags", "a", "b"]
    argv += ["--callback", "timm_overparam.train.callbacks:NormRecorder"]
    cli = parse_args(train_parser(), argv)
    python = TrainConfig(
        model="test_vit_op2",
        epochs=3,
        batch_size=32,
        lr=1,  # an int where a float is expected is read as a float, as on the command line
        scale=(0.5, 1.0),
        model_kwargs={"img_size": 32},
        sched_on_updates=False,
        wandb_tags=["a", "b"],
        callbacks=["timm_overparam.train.callbacks:NormRecorder"],
    )
    assert cli == python
    assert (cli.schedule.epochs, cli.data.batch_size, cli.optim.lr, cli.augment.scale) == (
        3,
        32,
        1.0,
        [0.5, 1.0],
    )
    (tmp_path / "c.yaml").write_text(
        "model: test_vit_op2\nepochs: 3\nbatch_size: 32\nlr: 1\nscale: [0.5, 1]\nmodel_kwargs: {img_size: 32}\n"
        "sched_on_updates: false\nwandb_tags: [a, b]\ncallbacks: [timm_overparam.train.callbacks:NormRecorder]\n"
    )
    from_file = TrainConfig.from_yaml(str(tmp_path / "c.yaml"))
    assert from_file.replace(config="") == python and from_file.config == str(tmp_path / "c.yaml")
    assert parse_args(train_parser(), ["-c", str(tmp_path / "c.yaml")]) == from_file
    assert TrainConfig.from_yaml(str(tmp_path / "c.yaml"), epochs=5).epochs == 5  # overrides
    assert TrainConfig.from_yaml(ROOT / "configs" / "cifar10_resnet18_op3.yaml").model == "resnet18_op3"
    shared = parse_args(validate_parser(), ["--model", "test_resnet_line", "--eval-points", "0,1", "-b", "8"])
    assert shared == ValidateConfig(model="test_resnet_line", eval_points="0,1", batch_size=8)
    assert shared.data == TrainConfig(batch_size=8).data  # the groups validate.py shares with train.py


def test_args_yaml_round_trips_into_an_equal_config(tmp_path):
    argv = [*FAST, "--epochs", "1", "--model-ema", "--wandb-tags", "x", "--experiment", "r"]
    argv += ["--callback", "timm_overparam.train.callbacks:NormRecorder"]
    run(tmp_path, *argv)
    saved = TrainConfig.from_yaml(str(tmp_path / "r" / "args.yaml"))
    cli = parse_args(train_parser(), ["--output", str(tmp_path), *argv])
    # the run fills in the digits' input size and the task's default --eval-metric
    assert saved == cli.replace(img_size=32, eval_metric="top1")
    assert (tmp_path / "r" / "norms.json").exists()
    assert (
        yaml.safe_load(saved.to_yaml()) == saved.to_dict() and TrainConfig.from_dict(saved.to_dict()) == saved
    )


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epoch": 3}, r"no key\(s\) \['epoch'\] .*valid: \[.*'epochs'"),
        ({"epochs": 0}, r"^epochs must be >= 1, got 0"),
        ({"epochs": 2.5}, r"^epochs must be an integer, got 2.5"),
        ({"lr": float("inf")}, r"^lr must be a finite number, got inf"),
        ({"lr": "fast"}, r"^lr must be a number, got 'fast'"),
        ({"amp_dtype": "fp8"}, r"^amp_dtype must be one of \['float16', 'bfloat16'\], got 'fp8'"),
        ({"scale": [0.5]}, r"^scale must be a list of 2 values"),
        ({"model_ema": "yes"}, r"^model_ema must be true or false"),
        ({"model_kwargs": [1]}, r"^model_kwargs must be a mapping"),
        ({"eval_points": "0,x"}, r"^eval_points: bad point 'x'"),
        ({"callbacks": ["nope"]}, r"'nope' is not module:Class"),
        ({"callbacks": ["math:NoSuch"]}, r"cannot import 'math:NoSuch'"),
        ({"callbacks": [3]}, r"callbacks\[0\]: 3 is not a callback"),
    ],
)
def test_python_configs_get_the_same_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_bad_values_name_the_flag_or_the_yaml_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^--epochs must be >= 1, got 0"):
        parse_args(train_parser(), ["--epochs", "0"])
    with pytest.raises(ConfigError, match=r"^--num-samples must be >= 1"):
        parse_args(train_parser(), ["--num-samples", "0"])
    (tmp_path / "bad.yaml").write_text("epochs: 2\nwarmup_lr: .nan\n")
    for build in (
        lambda: TrainConfig.from_yaml(str(tmp_path / "bad.yaml")),
        lambda: parse_args(train_parser(), ["-c", str(tmp_path / "bad.yaml")]),
    ):
        with pytest.raises(ConfigError, match=r"config '.*bad.yaml': warmup_lr must be a finite number"):
            build()
    (tmp_path / "unknown.yaml").write_text("results_file: r.json\n")  # a validate.py key
    with pytest.raises(ConfigError, match=r"unknown keys \['results_file'\]; valid: \["):
        TrainConfig.from_yaml(str(tmp_path / "unknown.yaml"))
    assert ValidateConfig.from_yaml(str(tmp_path / "unknown.yaml")).results_file == "r.json"
    cfg = TrainConfig()
    with pytest.raises(AttributeError, match=r"no key 'epoch'"):
        cfg.epoch = 3  # a typo never becomes a silent new attribute
    cfg.epochs = 4
    assert cfg.schedule.epochs == 4


def test_help_is_built_from_the_config_and_the_library_has_no_argparse():
    flags = {o for a in train_parser()._actions for o in a.option_strings}
    assert {"--callback", "-b", "--batch-size", "--no-sched-on-updates", "-c"} <= flags
    assert len([k for k in TrainConfig.keys()]) == len(train_parser()._actions) - 1  # all but --help
    sources = {p.name: p.read_text() for p in (ROOT / "timm_overparam" / "train").glob("*.py")}
    assert [n for n, text in sources.items() if "argparse" in text.split('"""', 2)[-1]] == ["cli.py"]
    assert not [n for n, text in sources.items() if "train.cli" in text or "from . import cli" in text]
    code = "import sys, timm_overparam.train; print('timm_overparam.train.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"], out.stdout
