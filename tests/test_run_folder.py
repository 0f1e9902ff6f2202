"""Experiment folders: never shared between runs, locked while a run lives, completed by a resume."""

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from test_train import FAST, rows, run

from timm_overparam.train import loop as trainer_module
from timm_overparam.train.cli import parse_args, train_parser
from timm_overparam.train.loop import Trainer


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns), the run's lock left out
    (older filelock releases delete it and create it again)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and p.name != ".lock"
    }


def test_a_run_never_writes_into_another_runs_folder(tmp_path):
    run(tmp_path, *FAST, "--epochs", "1", "--experiment", "a")
    before = snapshot(tmp_path / "a")
    with pytest.raises(ValueError, match=r"already holds a run .*--resume .*a/last"):
        run(tmp_path, *FAST, "--epochs", "1", "--experiment", "a")
    assert snapshot(tmp_path / "a") == before
    (tmp_path / "empty").mkdir()  # an empty folder made by the user is fine
    run(tmp_path, *FAST, "--epochs", "1", "--experiment", "empty")
    assert (tmp_path / "empty" / "results.json").exists()


def test_default_names_started_in_the_same_second_do_not_collide(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(trainer_module, "datetime", Frozen)
    argv = [*FAST, "--epochs", "1", "--output", str(tmp_path)]
    first, second = (Trainer(parse_args(train_parser(), argv)) for _ in range(2))
    assert first.folder.name == "20260102-030405-test_resnet_op2-32"
    assert second.folder.name == "20260102-030405-test_resnet_op2-32-2"


def test_a_live_run_locks_its_folder(tmp_path):
    run(tmp_path, *FAST, "--epochs", "1", "--experiment", "a")
    resume = [*FAST, "--epochs", "2", "--output", str(tmp_path), "--resume", str(tmp_path / "a" / "last")]
    live = Trainer(parse_args(train_parser(), resume))  # holds the lock until its run() ends
    with pytest.raises(ValueError, match=r"another run is writing to .*a'"):
        Trainer(parse_args(train_parser(), resume))
    live.run()
    assert [r["epoch"] for r in rows(tmp_path / "a")] == ["0", "1"]
    Trainer(parse_args(train_parser(), resume))  # released at the end of the run


@pytest.mark.parametrize(
    "model, exports", [("test_resnet_op2", ["collapsed"]), ("test_resnet_line", ["point-0", "point-1"])]
)
def test_resuming_a_finished_run_redoes_only_the_missing_results(tmp_path, model, exports):
    argv = [*FAST, "--model", model, "--epochs", "2", "--bn-recal-batches", "2"]
    if model.endswith("_line"):
        argv += ["--eval-points", "0,1"]
    first = run(tmp_path, *argv, "--experiment", "a")
    folder = tmp_path / "a"
    files = {name: (folder / f"{name}.safetensors").read_bytes() for name in exports}
    for name in exports:  # killed during the final exports, or the disk filled while writing them
        (folder / f"{name}.safetensors").unlink()
    (folder / "results.json").unlink()
    kept = snapshot(folder)
    again = run(tmp_path, *argv, "--resume", str(folder / "last"))
    assert again == first == json.loads((folder / "results.json").read_text())
    assert {name: (folder / f"{name}.safetensors").read_bytes() for name in exports} == files
    changed = {k for k, v in snapshot(folder).items() if kept.get(k) != v}
    assert changed == {"args.yaml", "results.json", *(f"{name}.safetensors" for name in exports)}
    assert [r["epoch"] for r in rows(folder)] == ["0", "1"]


def diverge_after(epoch: int):
    """A train_epoch that drives the weights to infinity at the end of ``epoch`` (finite loss until then)."""
    real = Trainer.train_epoch

    def train_epoch(self, e):
        result = real(self, e)
        if e == epoch:
            next(self.unwrapped.parameters()).data.fill_(float("inf"))
        return result

    return train_epoch


@pytest.mark.parametrize("model", ["test_resnet_op2", "test_resnet_line"])
def test_a_model_that_diverges_at_an_epoch_boundary_keeps_the_last_checkpoint(tmp_path, monkeypatch, model):
    monkeypatch.setattr(Trainer, "train_epoch", diverge_after(1))
    argv = [*FAST, "--model", model, "--epochs", "3", "--bn-recal-batches", "2", "--experiment", "d"]
    with pytest.raises(
        FloatingPointError,
        match=r"after epoch 1 .*diverged; the last checkpoint .*checkpoint-1' is untouched",
    ):
        run(tmp_path, *argv)
    assert os.readlink(tmp_path / "d" / "last") == "checkpoint-1"
    assert not (tmp_path / "d" / "checkpoint-2").exists()


def test_divergence_before_any_checkpoint_says_none_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "train_epoch", diverge_after(0))
    with pytest.raises(FloatingPointError, match=r"no checkpoint was written"):
        run(tmp_path, *FAST, "--epochs", "2", "--experiment", "d")
    with pytest.raises(FloatingPointError, match=r"the loss is nan.*no checkpoint was written"):
        run(tmp_path, *FAST, "--epochs", "2", "--lr", "1e30", "--experiment", "e")
