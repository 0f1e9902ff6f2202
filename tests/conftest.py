import os

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
