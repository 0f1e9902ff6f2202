"""Bad input to train.py is one clear error, raised before the first training step."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_train import FAST, ROOT, run, write_image_folder

from timm_overparam.train.cli import parse_args

LINE = ["--model", "test_resnet_line"]
SIMPLEX = ["--model", "test_resnet_simplex"]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*LINE, "--eval-points", "1.5"], r"--eval-points: point 1.5 is outside \[0, 1\]"),
        ([*LINE, "--eval-points", "0,-0.1"], r"--eval-points: point -0.1 is outside \[0, 1\]"),
        ([*SIMPLEX, "--eval-points", "0.5:0.6:0"], r"--eval-points: coordinates .* sum to"),
        ([*SIMPLEX, "--eval-points", "0.5:0.5"], r"--eval-points: a simplex point has 3 coordinates"),
        (
            [*LINE, "--eval-points", "0,1", "--eval-ensembles", "0+0.25"],
            r"\['0.25'\] of 0\+0.25 are not evaluated",
        ),
        ([*LINE, "--bn-recal-batches", "0"], r"--bn-recal-batches must be >= 1, got 0"),
        (["--eval-metric", "top9"], r"--eval-metric 'top9' is not one of \['top1', 'top5'"),
        ([*LINE, "--eval-metric", "point0.3_top1"], r"--eval-metric 'point0.3_top1' is not one of"),
        (["--lr", "nan"], r"--lr must be a finite number, got nan"),
        (["--val-split", "test"], r"sklearn/digits has the splits 'train' and 'validation', got 'test'"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, *FAST, "--epochs", "1", *argv)
    assert list(tmp_path.iterdir()) == []  # no experiment folder: nothing ran


def test_image_folders_need_both_splits_and_two_classes(tmp_path):
    write_image_folder(tmp_path / "data")
    for split in ("train", "validation"):
        (tmp_path / "data" / split / "class1").rename(tmp_path / f"{split}-class1")
    with pytest.raises(ValueError, match=r"the training data has 1 class: classification needs at least 2"):
        run(tmp_path / "out", *FAST, "--data-dir", str(tmp_path / "data"))
    flat = tmp_path / "flat"  # classes only, no train/ and validation/ folders
    flat.mkdir()
    (tmp_path / "data" / "train" / "class0").rename(flat / "class0")
    (tmp_path / "train-class1").rename(flat / "class1")
    with pytest.raises(
        ValueError, match=r"image folder '.*flat' has no 'train' split .*\['class0', 'class1'\]"
    ):
        run(tmp_path / "out", *FAST, "--data-dir", str(flat))
    write_image_folder(tmp_path / "two")
    with pytest.raises(ValueError, match=r"has no 'holdout' split .*--val-split .*\['train', 'validation'\]"):
        run(tmp_path / "out", *FAST, "--data-dir", str(tmp_path / "two"), "--val-split", "holdout")
    assert not (tmp_path / "out").exists()


def test_output_that_is_not_a_writable_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"--output '.*file' is a file, not a folder"):
        run(tmp_path / "file", *FAST, "--epochs", "1")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # a read-only --output (root ignores chmod)
    with pytest.raises(ValueError, match=r"cannot write to the experiment folder .*Permission denied"):
        run(tmp_path / "ro", *FAST, "--epochs", "1", "--experiment", "x")


def test_pretrained_path_to_a_foreign_file(tmp_path):
    save_file({"other.weight": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"not weights")
    for file in ("foreign.safetensors", "junk.bin"):
        with pytest.raises(
            ValueError, match=rf"--pretrained-path '.*{file}' does not hold weights of the base"
        ):
            run(tmp_path / "out", *FAST, "--pretrained", "--pretrained-path", str(tmp_path / file))
    with pytest.raises(ValueError, match=r"--pretrained-path '.*missing' is not a file"):
        run(tmp_path / "out", *FAST, "--pretrained", "--pretrained-path", str(tmp_path / "missing"))


def train_py_last_line(monkeypatch, capsys, *argv: str) -> str:
    """Run train.py's ``main`` in this process; the last line it prints as it exits, which must fail."""
    monkeypatch.setitem(sys.modules, "wandb", sys.modules.get("wandb"))  # train.py may hide wandb
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    main = runpy.run_path(str(ROOT / "train.py"), run_name="probe")["main"]
    with pytest.raises(SystemExit) as exited:
        main()
    code = exited.value.code
    assert code not in (0, None), argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code if isinstance(code, str) else err.strip().splitlines()[-1]  # sys.exit(str) prints str


@pytest.mark.slow
def test_train_py_reports_bad_configs_and_flags_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.yaml").write_text("epochs: [\n")
    (tmp_path / "list.yaml").write_text("- epochs\n- 2\n")
    (tmp_path / "float.yaml").write_text("epochs: 2.5\n")
    out = ("--output", str(tmp_path / "out"))
    cases = {
        (*out, "-c", str(tmp_path / "broken.yaml")): "config '.*broken.yaml' is not valid YAML",
        (
            *out,
            f"--config={tmp_path / 'list.yaml'}",
        ): "must be a mapping of flag names to values .* got a list",
        (
            *out,
            "-c",
            str(tmp_path / "float.yaml"),
        ): "config '.*float.yaml': epochs must be an integer, got 2.5",
        (*out, "--model-kwargs", "op_depth"): r"--model-kwargs: 'op_depth' is not key=value",
        ("--output", str(tmp_path / "list.yaml")): r"--output '.*list.yaml' is a file",
    }
    for argv, message in cases.items():
        last = train_py_last_line(monkeypatch, capsys, *argv)
        assert re.search(message, last), (argv, last)
    # and once as its own process: the exit status and the one line a shell shows
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    argv = [*out, "-c", str(tmp_path / "missing.yaml")]
    done = subprocess.run(
        [sys.executable, "train.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert re.search("cannot read config '.*missing.yaml': No such file", last), last


def test_wandb_is_requested_by_every_form_of_the_config_flag(tmp_path, monkeypatch):
    (tmp_path / "on.yaml").write_text("log_wandb: true\n")
    (tmp_path / "off.yaml").write_text("epochs: 1\n")
    forms = [
        ["-c", str(tmp_path / "on.yaml")],
        [f"--config={tmp_path / 'on.yaml'}"],
        [f"-c{tmp_path / 'on.yaml'}"],
        ["--log-wandb"],
        ["--log-wandb=True"],  # wandb's ${args} form
        ["--log_wandb=true"],
        ["-c", str(tmp_path / "off.yaml")],
        [],
        ["--log-wandb=False"],
        ["--log_wandb", "no"],
    ]
    monkeypatch.setitem(sys.modules, "wandb", sys.modules.get("wandb"))  # train.py may hide wandb
    requested = runpy.run_path(str(ROOT / "train.py"), run_name="probe")["_wandb_requested"]
    assert [requested(argv) for argv in forms] == [True] * 6 + [False] * 4


def test_validate_checks_its_results_file_and_points_before_evaluating(tmp_path, monkeypatch):
    from timm_overparam.train import families, validation
    from timm_overparam.train.cli import validate_parser

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated before the inputs were checked")

    monkeypatch.setattr(families, "evaluate_model", evaluate)
    monkeypatch.setattr(families, "evaluate_points", evaluate)
    (tmp_path / "file").write_text("")
    cases = {
        ("--model", "test_resnet", "--results-file", str(tmp_path)): r"--results-file '.*' is a folder",
        (
            "--model",
            "test_resnet",
            "--results-file",
            str(tmp_path / "file" / "r.json"),
        ): r"cannot write --results-file",
        ("--model", "test_resnet_line", "--eval-points", "2"): r"--eval-points: point 2.0 is outside",
        ("--model", "test_resnet_line", "--bn-recal-batches", "0"): r"--bn-recal-batches must be >= 1",
    }
    for argv, message in cases.items():
        with pytest.raises(ValueError, match=message):
            validation.validate(parse_args(validate_parser(), list(argv)))
