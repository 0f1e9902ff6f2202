"""Callbacks see what a hand-written accelerate loop sees: per-update gradients and weights, also
across a resume (and in 2 processes: test_train.py's test_two_processes_match_one); their state is
checkpointed as hashed JSON."""

import json
import os

import pytest
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from test_train import same_records
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from timm_overparam.train import Callback, NormRecorder, TrainConfig, train
from timm_overparam.train.callbacks import grad_norm, weight_norm
from timm_overparam.train.checkpoint import file_sha256
from timm_overparam.train.data import loader
from timm_overparam.train.loop import create_model, open_data, set_transforms

# a LayerNorm model: a batch split over processes gives the same update as the whole batch
VIT = dict(model="test_vit_op2", model_kwargs={"img_size": 32}, warmup_epochs=0, lr=0.1, batch_size=128)


def hand_written(cfg: TrainConfig) -> list[dict]:
    """The same run as a plain accelerate loop (same seed, model, data order, optimizer, schedule)."""
    acc = Accelerator(
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(cfg.seed)
    train_set, val_set, info = open_data(cfg)
    model = create_model(cfg, info)
    set_transforms(cfg, model, train_set, val_set)
    data = loader(train_set, cfg.batch_size, shuffle=True, workers=0, seed=cfg.seed, drop_last=True)
    optimizer = create_optimizer_v2(
        model, cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )
    model, optimizer, data = acc.prepare(model, optimizer, data)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=len(data),
    )
    criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    records, step = [], 0
    for epoch in range(cfg.epochs):
        model.train()
        data.set_epoch(epoch)
        for x, y in data:
            acc.backward(criterion(model(x), y))
            grads = grad_norm(acc.unwrap_model(model))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            records.append(
                {
                    "step": step,
                    "epoch": epoch,
                    "grad_norm": grads,
                    "weight_norm": weight_norm(acc.unwrap_model(model)),
                }
            )
            scheduler.step_update(step)
    return records


@pytest.mark.slow
def test_recorder_matches_a_hand_written_loop_and_resumes(tmp_path):
    cfg = TrainConfig(
        **VIT, epochs=2, output=str(tmp_path), experiment="straight", callbacks=[NormRecorder()]
    )
    train(cfg)
    straight = cfg.callbacks[0].records  # the object given in code is the one the run used
    assert len(straight) == 2 * (1437 // 128)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    same_records(straight, hand_written(cfg))
    # a run split by a resume records what the straight run records
    split = cfg.replace(experiment="split", callbacks=[NormRecorder()])
    train(split)
    os.unlink(tmp_path / "split" / "last")
    os.symlink("checkpoint-1", tmp_path / "split" / "last")  # as if killed during epoch 1
    resumed = NormRecorder()
    train(split.replace(resume=str(tmp_path / "split" / "last"), experiment="", callbacks=[resumed]))
    assert resumed.records == straight
    assert json.loads((tmp_path / "split" / "norms.json").read_text()) == straight
    ckpt = tmp_path / "split" / "checkpoint-1"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["files"]["callbacks.json"] == file_sha256(ckpt / "callbacks.json")  # hashed, JSON, no pickle
    saved = json.loads((ckpt / "callbacks.json").read_text())
    assert saved == [
        {"name": "timm_overparam.train.callbacks:NormRecorder", "state": {"records": straight[:11]}}
    ]
    with pytest.raises(
        ValueError, match=r"saved with the callbacks \['timm_overparam.*NormRecorder'\].*same callbacks"
    ):
        train(split.replace(resume=str(ckpt), experiment="", callbacks=[Callback()]))


class Counter(Callback):
    """Counts hook calls (every process)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def on_run_start(self, run):
        self._count("run_start")

    def on_before_step(self, run, model):
        assert model is run.unwrapped and all(
            p.grad is not None for p in model.parameters() if p.requires_grad
        )
        self._count("before")

    def on_after_step(self, run, model):
        self._count("after")

    def on_epoch_end(self, run, epoch, metrics):
        assert "top1" in metrics
        self._count("epoch_end")

    def on_run_end(self, run, results):
        assert results["family"] == "op"
        self._count("run_end")


def test_step_hooks_fire_on_real_updates_only(tmp_path):
    counter = Counter()
    cfg = TrainConfig(
        **{**VIT, "batch_size": 32}, grad_accum_steps=4, epochs=1, output=str(tmp_path), callbacks=[counter]
    )
    train(cfg)
    updates = 1437 // 128  # 4 micro-batches of 32 per update; the partial last update dropped as in training
    assert counter.calls == {
        "run_start": 1,
        "before": updates,
        "after": updates,
        "epoch_end": 1,
        "run_end": 1,
    }
