"""A run killed with SIGKILL at any moment and resumed ends bit for bit where the uninterrupted run ends."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_train import FAST, ROOT, measured, rows

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def start(tmp_path: Path, model: str, *extra: str) -> subprocess.Popen:
    argv = [*FAST, "--model", model, "--epochs", "4", "--bn-recal-batches", "2", "--train-fraction", "0.5"]
    argv += ["--output", str(tmp_path)]
    return subprocess.Popen(
        [sys.executable, "train.py", *argv, *extra],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(proc: subprocess.Popen, moment: Callable[[], bool], delay: float = 0.0) -> None:
    """SIGKILL ``proc`` as soon as ``moment()`` holds (plus ``delay`` seconds)."""
    while not moment():
        assert proc.poll() is None, f"the run ended before the moment: {proc.stderr.read()[-2000:]}"
        time.sleep(0.001)
    time.sleep(delay)
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_killed_and_resumed_runs_end_bit_for_bit_like_a_straight_run(tmp_path):
    # a subspace model: what a save must keep atomically is the same for both families, and the
    # line's checkpoint holds more (the random states of its point sampling); the op family's resume
    # is exact in test_train.py and under DDP, FSDP2 and DeepSpeed in test_distributed.py
    model = "test_resnet_line"
    straight = start(tmp_path, model, "--experiment", "straight")
    folder = tmp_path / "killed"
    last = folder / "last"
    assert straight.wait() == 0, straight.stderr.read()
    proc = start(tmp_path, model, "--experiment", "killed")
    # during the save of checkpoint 2 (or just after it, if the poll misses the temporary folder)
    kill_when(proc, lambda: (folder / ".checkpoint-2.tmp").exists() or (folder / "checkpoint-2").exists())
    proc = start(tmp_path, model, "--resume", str(last))
    kill_when(proc, lambda: (folder / "checkpoint-3").exists())  # right after the rename, maybe before `last`
    proc = start(tmp_path, model, "--resume", str(last))
    kill_when(proc, lambda: os.readlink(last) == "checkpoint-3", delay=0.3)  # mid-epoch 3
    proc = start(tmp_path, model, "--resume", str(last))
    assert proc.wait() == 0, proc.stderr.read()
    for name in ("model.safetensors", "optimizer.bin"):
        assert (folder / "last" / name).read_bytes() == (tmp_path / "straight" / "last" / name).read_bytes()
    assert measured(rows(folder)) == measured(rows(tmp_path / "straight"))
