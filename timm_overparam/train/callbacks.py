"""Callbacks: research instruments that attach to a training run without forking the loop.

A callback is any object with some of these methods (``Callback`` has them all, doing nothing)::

    on_run_start(run)                  before the first epoch (after a resume's state is restored)
    on_before_step(run, model)         each optimizer update, gradients ready (clipped), weights not yet changed
    on_after_step(run, model)          each optimizer update, weights updated
    on_epoch_end(run, epoch, metrics)  after the epoch's evaluation, before its checkpoint
    on_run_end(run, results)           after the exports, with the results record
    state_dict() / load_state_dict(s)  JSON-able state saved in every checkpoint, restored by --resume

``model`` is the unwrapped model (never the DDP wrapper). The step hooks are torch's own optimizer
step hooks (``register_step_pre_hook``/``register_step_post_hook``) on the optimizer accelerate
wraps: they fire on real updates only, never on the micro-batches of ``--grad-accum-steps`` nor
on an update that mixed precision skipped. During them ``run.step`` counts the updates done
before this one. Callbacks run on every process; ``run.log(metrics)`` goes to the run's trackers
(wandb) from the main process only, and ``run.is_main_process`` tells a callback whether to write
files. The state is stored as ``callbacks.json`` in the checkpoint folder (hashed like every file;
never pickled), so it must be JSON: lists and numbers, not tensors.

Attach callbacks in code (``TrainConfig(callbacks=[MyProbe()])``), in a YAML config
(``callbacks: [mylab.probes:MyProbe]``) or on the command line (``--callback mylab.probes:MyProbe``,
repeatable; classes named this way are built without arguments).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class Callback:
    """The callback protocol with empty methods: subclass it and override what you need.

    Example::

        class LrTrace(Callback):
            def on_after_step(self, run, model):
                run.log({"lr_trace": run.optimizer.param_groups[0]["lr"]})
    """

    def on_run_start(self, run: Any) -> None:
        """Before the first epoch; a resumed run has already restored ``load_state_dict``."""

    def on_before_step(self, run: Any, model: nn.Module) -> None:
        """Before each optimizer update: the gradients of ``model`` are final (clipped)."""

    def on_after_step(self, run: Any, model: nn.Module) -> None:
        """After each optimizer update: ``model`` holds the updated weights."""

    def on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        """After the evaluation of ``epoch`` (0-based), before its checkpoint is written."""

    def on_run_end(self, run: Any, results: dict[str, Any]) -> None:
        """After the exports, with the run's results record."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved in each checkpoint (default: none)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (on ``--resume``)."""


def grad_norm(model: nn.Module) -> float:
    """The 2-norm of all gradients of ``model`` (parameters without one count as zero).

    >>> m = nn.Linear(2, 1); m.weight.grad = torch.ones(1, 2); grad_norm(m)
    1.4142135381698608
    """
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


def weight_norm(model: nn.Module) -> float:
    """The 2-norm of all parameters of ``model``.

    >>> weight_norm(nn.Identity())
    0.0
    """
    norms = [p.detach().float().norm() for p in model.parameters()]
    return torch.stack(norms).norm().item() if norms else 0.0


class NormRecorder(Callback):
    """Records the weight norm and gradient norm of every optimizer update; logs their epoch means.

    ``records``: ``{"step", "epoch", "grad_norm", "weight_norm"}`` per update (resumed with the
    run); the main process writes them to ``norms.json`` in the experiment folder at the end.

    Example: ``python train.py --callback timm_overparam.train.callbacks:NormRecorder``
    """

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []
        self._grad = math.nan

    def on_before_step(self, run: Any, model: nn.Module) -> None:
        self._grad = grad_norm(model)

    def on_after_step(self, run: Any, model: nn.Module) -> None:
        self.records.append(
            {
                "step": run.step + 1,
                "epoch": run.epoch,
                "grad_norm": self._grad,
                "weight_norm": weight_norm(model),
            }
        )

    def on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        mine = [r for r in self.records if r["epoch"] == epoch]
        if mine:
            run.log({k: sum(r[k] for r in mine) / len(mine) for k in ("grad_norm", "weight_norm")})

    def on_run_end(self, run: Any, results: dict[str, Any]) -> None:
        if run.is_main_process:
            (run.folder / "norms.json").write_text(json.dumps(self.records))

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [dict(r) for r in state["records"]]


class CallbackList:
    """The run's callbacks called in order; optimizer step hooks; their states as JSON.

    Example: ``CallbackList([NormRecorder()]).call("on_run_start", run)``
    """

    def __init__(self, callbacks: Sequence[Any]) -> None:
        self.callbacks = list(callbacks)
        self._handles: list[Any] = []

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback that has it."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def attach(self, optimizer: torch.optim.Optimizer, run: Any) -> None:
        """Register the step hooks on torch's optimizer (the one inside accelerate's wrapper).

        Example: ``callbacks.attach(accelerated_optimizer.optimizer, run)``
        """
        if not self.step_hooked():
            return
        self._handles = [
            optimizer.register_step_pre_hook(lambda *_: self.call("on_before_step", run, run.unwrapped)),
            optimizer.register_step_post_hook(lambda *_: self.call("on_after_step", run, run.unwrapped)),
        ]

    def step_hooked(self) -> list[str]:
        """The names of the callbacks with a step hook of their own (not ``Callback``'s empty one)."""
        hooks = ("on_before_step", "on_after_step")
        return [
            name
            for name, c in zip(self.names(), self.callbacks, strict=True)
            if any(getattr(type(c), h, None) not in (None, getattr(Callback, h)) for h in hooks)
        ]

    def detach(self) -> None:
        """Remove the step hooks (at the end of the run)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def names(self) -> list[str]:
        return [f"{type(c).__module__}:{type(c).__qualname__}" for c in self.callbacks]

    def state(self) -> list[dict[str, Any]] | None:
        """``[{"name", "state"}]`` of every callback, checked to be JSON; None without callbacks."""
        if not self.callbacks:
            return None
        states = []
        for name, callback in zip(self.names(), self.callbacks, strict=True):
            state = callback.state_dict() if hasattr(callback, "state_dict") else {}
            try:
                json.dumps(state, allow_nan=True)
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"callback {name}: state_dict() must return JSON data (lists, numbers, text; "
                    f"tensors as .tolist()): {e}"
                ) from None
            states.append({"name": name, "state": state})
        return states

    def load(self, states: list[dict[str, Any]] | None, where: str) -> None:
        """Give each callback its saved state; the callbacks must be those the checkpoint was saved
        with (a checkpoint without callback states, or a run without callbacks, restores nothing)."""
        if not states or not self.callbacks:
            return
        saved = [s.get("name") for s in states]
        if saved != self.names():
            raise ValueError(
                f"{where} was saved with the callbacks {saved}, this run has {self.names()}: resume with "
                f"the same callbacks (--callback), in the same order"
            )
        for callback, s in zip(self.callbacks, states, strict=True):
            if hasattr(callback, "load_state_dict"):
                callback.load_state_dict(s["state"])
