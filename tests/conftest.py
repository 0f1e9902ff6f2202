import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
import torch

from timm_overparam.core.numerics import rel_err  # noqa: F401  (the tests import it from here)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test starts with no accelerate state (a test builds its own Accelerator)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory):
    """The folder of one 1-epoch train.py run of ``test_resnet_op2`` on the digits (test_train.py's
    ``FAST`` settings; ``last`` -> ``checkpoint-1``), trained once per session (under xdist once per
    worker) for the tests that need some trained run. Tests only read it; a test that damages or
    resumes a run takes its own copy (``one_epoch_copy``). Its files are checked unchanged at the end."""
    from accelerate.state import AcceleratorState, GradientState
    from test_train import FAST, run

    AcceleratorState._reset_state(reset_partial_state=True)  # what the autouse fixtures give a test
    GradientState._reset_state()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("one_epoch")
    run(output, *FAST, "--epochs", "1", "--experiment", "run")
    folder = output / "run"
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    yield folder
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files, (
        "a test changed one_epoch_run"
    )


@pytest.fixture
def one_epoch_copy(one_epoch_run, tmp_path):
    """A copy of ``one_epoch_run`` at ``tmp_path / "run"`` (links kept), for a test to damage or resume."""
    return Path(shutil.copytree(one_epoch_run, tmp_path / "run", symlinks=True))


def randomize_norm_stats(module: torch.nn.Module, eps: float | None = None) -> None:
    """Give every batch-norm random running statistics (and optionally a non-default eps)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            if m.weight is not None:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
            if eps is not None:
                m.eps = eps


def pytest_terminal_summary(terminalreporter) -> None:
    """The versions this run tested (CI installs the newest the bounds in pyproject.toml allow)."""
    from importlib.metadata import version

    names = ("torch", "torchvision", "timm", "accelerate", "numpy", "safetensors", "wandb")
    terminalreporter.write_line("packages: " + ", ".join(f"{n} {version(n)}" for n in names))
