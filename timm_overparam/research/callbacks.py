"""Training callbacks of seed 002 (depth-limit residual networks): p-variation of the weights path,
the dynamic learning rate, and Omega(t), the mean squared per-sample gradient of the loss with
respect to the model's output.

They follow the callback protocol of ``timm_overparam.train.callbacks`` (optimizer step hooks, state
in each checkpoint's ``callbacks.json``) and are attached by train.py's ``--pvar P`` (with
``--pvar-every N``), ``--dynamic-lr`` and ``--store-grad``, or in code::

    from timm_overparam.research.callbacks import DynamicLR, OmegaRecorder, PVariationLogger
    train(TrainConfig(model=..., callbacks=[PVariationLogger(p=2), DynamicLR(p=2), OmegaRecorder()]))

The weights path of a model is ``t -> L^beta vec(W_t)``, t = 1..L, over its residual blocks
(``timm_overparam.research.blocks``: ``block_weights`` and ``weights_path``), with ``beta = 1 - alpha``
of the depth-limit model. Its rooted p-variation is ``p_variation(path, p) ** (1 / p)``
(``timm_overparam.research.pvariation``). These modules are imported when first used.

Steps: ``run.log(..., step=run.step)`` with ``run.step`` the number of updates before the one the
hook fires for, so Omega of step t is the loss gradient at the weights after t updates (t = 0: the
initial weights), and the p-variations of step t are those of the weights after update t + 1.

One computation serves both p-variation callbacks: at an epoch end ``DynamicLR`` takes the rooted
p-variation a ``PVariationLogger`` of the same run (``run.callbacks``) computed after the epoch's last
update, when it did (same p and beta; the updates done by then a multiple of ``--pvar-every``),
instead of computing it again (``PVariationLogger.computed``).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.train.callbacks import Callback

__all__ = [
    "DynamicLR",
    "OmegaRecorder",
    "PVariationLogger",
    "activation_name",
    "model_beta",
    "rooted_p_variations",
]

OMEGA_CSV = "omega.csv"


# ----------------------------------------------------------------------------------- helpers
def _check_p(p: Any, who: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
        raise TypeError(f"{who}: p must be a finite number >= 2, got {p!r}")
    if p < 2:
        raise ValueError(
            f"{who}: p = {p} is below 2; the p/2-variation it logs needs p/2 >= 1 (seed 002: p in [2, inf))"
        )
    return float(p)


def model_beta(model: nn.Module, beta: float | None = None, *, who: str = "callback") -> float:
    """The weights-path exponent: ``beta`` if given, else the model's ``beta`` attribute, else
    ``1 - model.alpha`` (the depth-limit model's ``delta = L^-alpha``), else 0 with a warning.

    >>> model_beta(nn.Identity(), 0.5)
    0.5
    >>> m = nn.Identity(); m.alpha = 0.75; model_beta(m)
    0.25
    """
    if beta is not None:
        return float(beta)
    if isinstance(getattr(model, "beta", None), (int, float)):
        return float(model.beta)
    alpha = getattr(model, "alpha", None)
    if isinstance(alpha, (int, float)):
        return 1.0 - float(alpha)
    warnings.warn(
        f"{who}: {type(model).__name__} has no `alpha` (nor `beta`) attribute: the weights path is "
        f"taken with beta = 0 (no L^beta rescaling); pass beta=... to set it",
        stacklevel=3,
    )
    return 0.0


def activation_name(model: nn.Module, activation: str | None = None) -> str | None:
    """The model's activation in lower case (``activation`` if given, else the model's
    ``activation_name`` or ``activation`` attribute: a name, a module or a function); None if unknown.

    >>> m = nn.Identity(); m.activation = nn.ReLU(); activation_name(m)
    'relu'
    """
    if activation is not None:
        return str(activation).lower()
    for attr in ("activation_name", "activation"):
        value = getattr(model, attr, None)
        if value is None:
            continue
        if isinstance(value, str):
            return value.lower()
        if isinstance(value, nn.Module):
            return type(value).__name__.lower()
        name = getattr(value, "__name__", None)
        if isinstance(name, str):
            return name.lower()
    return None


def _weights_path(model: nn.Module, beta: float) -> Any:
    """``t -> L^beta vec(W_t)`` of ``model``'s blocks (``research.blocks``: the model's own
    ``block_weights()``, else its ``blocks`` ModuleList), detached, on the CPU in float64."""
    from timm_overparam.research import blocks  # imported when used

    weights = blocks.block_weights(model).detach().to("cpu", torch.float64)
    return blocks.weights_path(weights, beta)


def rooted_p_variations(model: nn.Module, beta: float, qs: list[float]) -> list[float]:
    """``p_variation(path, q) ** (1 / q)`` of the model's weights path for each q in ``qs``.

    Example: ``rooted_p_variations(model, 0.25, [2.0, 1.0, 1.5])``
    """
    from timm_overparam.research.pvariation import p_variation  # imported when used

    path = _weights_path(model, beta)
    return [float(p_variation(path, q)) ** (1.0 / q) for q in qs]


def _key(q: float) -> str:
    return f"pvar_{q:g}"


# --------------------------------------------------------------------------------- p-variation
class PVariationLogger(Callback):
    """Logs the rooted p-, p/2- and 3p/4-variations of the weights path every ``every`` updates.

    After every ``every``-th optimizer update (``on_after_step``; updates counted from the start of
    the run, a resumed run included) the main process computes ``p_variation(path, q) ** (1/q)`` of
    the unwrapped model's weights path for q = p, p/2, 3p/4 and logs them as ``pvar_<q>`` (``pvar_2``,
    ``pvar_1``, ``pvar_1.5`` for p = 2) at ``step=run.step``. ``latest`` holds the last values and
    ``latest_step`` the number of updates they follow (checkpointed, restored on resume).
    ``computed(updates, beta, q)`` hands the value this process computed after ``updates`` updates
    to others (``DynamicLR``), so the same path is not measured twice.

    ``p >= 2`` (the p/2-variation needs p/2 >= 1). ``beta``: the path's exponent; None reads
    ``1 - model.alpha`` (see ``model_beta``: 0 with a warning when the model has no alpha).

    Example: ``PVariationLogger(p=2, every=10)``; ``python train.py --pvar 2 --pvar-every 10``
    """

    def __init__(self, p: float = 2.0, every: int = 1, *, beta: float | None = None) -> None:
        self.p = _check_p(p, "PVariationLogger")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"PVariationLogger: every must be an integer >= 1, got {every!r}")
        self.every = every
        self.beta = beta
        self.qs = [self.p, self.p / 2, 3 * self.p / 4]
        self.keys = [_key(q) for q in self.qs]
        self.latest: dict[str, float] = {}
        self.latest_step: int | None = None
        self._beta: float | None = None
        # (updates, beta, {q: value}) of the last computation in this process; never checkpointed
        self._computed: tuple[int, float, dict[float, float]] | None = None

    def on_after_step(self, run: Any, model: nn.Module) -> None:
        done = run.step + 1  # updates done, this one included
        if done % self.every or not run.is_main_process:
            return
        if self._beta is None:
            self._beta = model_beta(model, self.beta, who="PVariationLogger")
        values = rooted_p_variations(model, self._beta, self.qs)
        self.latest = dict(zip(self.keys, values, strict=True))
        self.latest_step = done
        self._computed = (done, self._beta, dict(zip(self.qs, values, strict=True)))
        run.log(dict(self.latest), step=run.step)

    def computed(self, updates: int, beta: float, q: float) -> float | None:
        """The rooted ``q``-variation of the weights path with exponent ``beta`` that this process
        computed after ``updates`` updates of the run, if it did (``q`` one of p, p/2, 3p/4); else None.

        Only values computed in this process count (not those a resume restored, nor on a process
        that is not the main one, where nothing is computed). The training loop changes the model's
        weights only in optimizer updates (evaluation uses copies, or restores the subspace point), so
        the weights after ``updates`` updates are the same until the next update.

        Example: ``logger.computed(run.step, 0.5, 2.0)`` at an epoch end
        """
        if self._computed is None:
            return None
        done, beta_used, values = self._computed
        if done != updates or beta_used != beta:
            return None
        return values.get(float(q))

    def state_dict(self) -> dict[str, Any]:
        return {"latest": dict(self.latest), "latest_step": self.latest_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.latest = {k: float(v) for k, v in state.get("latest", {}).items()}
        self.latest_step = state.get("latest_step")
        self._computed = None  # computed by another process: not handed on


# --------------------------------------------------------------------------------- dynamic lr
class DynamicLR(Callback):
    """Seed 002's dynamic learning rate: at each epoch end ``lr = C * lr0 / pv^2``.

    ``pv`` is the rooted p-variation ``p_variation(path, p) ** (1/p)`` of the weights path after the
    epoch, ``lr0`` each parameter group's initial lr (``initial_lr``, which timm's scheduler sets; else
    ``lr`` at the run start), ``C`` 10 for a ReLU model and 2 otherwise (``activation``, else the
    model's ``activation_name``/``activation`` attribute; unknown: 2, with a warning). Every parameter
    group gets ``C * lr0_g / pv^2``; ``dynamic_lr`` (group 0) is logged at the epoch's step.

    The scheduler: train.py's ``--dynamic-lr`` needs ``--sched none`` (a config error otherwise), so
    the lr is the callback's alone (``--lr`` in the first epoch, the original's constant lr0). In code
    next to a scheduler the dynamic lr still wins: the loop steps the scheduler before
    ``on_epoch_end``, and a per-update scheduler (``--sched-on-updates``, the default) would set its
    own lr again after the next update, so the dynamic lr is also set again before every update
    (``on_before_step``). The scheduler then only shapes the first epoch, and ``summary.csv``'s
    ``lr`` column, read before ``on_epoch_end``, shows the scheduler's value: ``dynamic_lr`` is the
    lr in use.
    A path with pv = 0 (every block equal, e.g. a constant init not yet moved) or a non-finite pv
    leaves the lr as it is, with a warning. ``lr0`` and the current lr are checkpointed.

    ``pv`` is computed once per epoch end: when a ``PVariationLogger`` among the run's callbacks
    (``run.callbacks``; train.py's ``--pvar``, always on with ``--dynamic-lr``) computed it after the
    epoch's last update with the same p and beta (the updates done by then a multiple of
    ``--pvar-every``), its value is taken (``PVariationLogger.computed``: the same number); otherwise
    it is computed here.

    Example: ``DynamicLR(p=2)``; ``python train.py --pvar 2 --dynamic-lr``
    """

    def __init__(
        self,
        p: float = 2.0,
        *,
        activation: str | None = None,
        C: float | None = None,
        beta: float | None = None,
    ) -> None:
        self.p = _check_p(p, "DynamicLR")
        self.activation = activation
        self.C = C
        self.beta = beta
        self.lr0: list[float] | None = None
        self.lr: list[float] | None = None
        self._beta: float | None = None
        self._C: float | None = None

    def constant(self, model: nn.Module) -> float:
        """C of ``model``: the given one, else 10 for relu and 2 otherwise."""
        if self.C is not None:
            return float(self.C)
        name = activation_name(model, self.activation)
        if name is None:
            warnings.warn(
                f"DynamicLR: the activation of {type(model).__name__} is unknown (no `activation_name` "
                f"or `activation` attribute): C = 2 as for a non-ReLU model; pass activation=... or C=...",
                stacklevel=2,
            )
        return 10.0 if name == "relu" else 2.0

    def _set(self, run: Any) -> None:
        for group, lr in zip(run.optimizer.param_groups, self.lr, strict=True):
            group["lr"] = lr

    def on_run_start(self, run: Any) -> None:
        groups = run.optimizer.param_groups
        if self.lr0 is None:
            self.lr0 = [float(g.get("initial_lr", g["lr"])) for g in groups]
        elif len(self.lr0) != len(groups):
            raise ValueError(
                f"DynamicLR: the checkpoint has {len(self.lr0)} parameter groups, the optimizer {len(groups)}"
            )
        if self.lr is not None:  # resumed after an epoch end: the scheduler's lr is not the one in use
            self._set(run)

    def on_before_step(self, run: Any, model: nn.Module) -> None:
        if self.lr is not None:
            self._set(run)

    def on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        model = run.unwrapped
        if self._beta is None:
            self._beta = model_beta(model, self.beta, who="DynamicLR")
        pv = self._logged(run)
        if pv is None:
            (pv,) = rooted_p_variations(model, self._beta, [self.p])
        if not (math.isfinite(pv) and pv > 0):
            warnings.warn(
                f"DynamicLR: the {self.p:g}-variation of the weights path after epoch {epoch} is {pv}: "
                f"the learning rate is left as it is",
                stacklevel=2,
            )
            return
        if self._C is None:
            self._C = self.constant(model)
        self.lr = [self._C * lr0 / pv**2 for lr0 in self.lr0]
        self._set(run)
        run.log({"dynamic_lr": self.lr[0]})

    def _logged(self, run: Any) -> float | None:
        """The rooted p-variation of the current weights that a ``PVariationLogger`` of ``run``
        computed after the last update (``run.step`` updates), if one did; else None."""
        callbacks = getattr(getattr(run, "callbacks", None), "callbacks", None) or []
        for callback in callbacks:
            if isinstance(callback, PVariationLogger):
                value = callback.computed(run.step, self._beta, self.p)
                if value is not None:
                    return value
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"lr0": self.lr0, "lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr0 = None if state.get("lr0") is None else [float(v) for v in state["lr0"]]
        self.lr = None if state.get("lr") is None else [float(v) for v in state["lr"]]


# ------------------------------------------------------------------------------------- Omega
class OmegaRecorder(Callback):
    """Omega(t) = mean over the samples of an update of ``|d loss_i / d yhat_i|^2`` (seed 002's
    ``store_grad``), per optimizer update; logged as ``omega`` and appended to ``omega.csv``.

    A forward hook on the unwrapped model (training forwards with autograd on) puts a tensor hook on
    the output, which sees ``d L / d yhat`` of the loss L that is back-propagated. The training loss
    is a batch mean and accelerate divides it by ``--grad-accum-steps``, so for a micro-batch of B
    samples ``d L / d yhat_i = (1 / (B * accum)) d loss_i / d yhat_i``: the captured gradient is
    multiplied back by ``B * accum`` to give the per-sample gradient (and divided by the float16
    loss scale under ``--amp``). A micro-batch computed in k forwards whose mean losses are averaged
    (subspace ``--num-samples`` chunks) is multiplied by ``B_chunk * k * accum``. Omega is the
    mean of the squared per-sample gradient norms over every sample of the update (all micro-batches;
    under DDP all processes: sums and counts are reduced), so it does not depend on the batch size.
    It is computed from the gradient itself, whatever the criterion (label smoothing included).

    Fix of the original: it squared the captured gradient as it was, ``d L / d yhat_i = g_i / B``
    (g_i the per-sample gradient), and so logged ``mean_i |g_i / B|^2 = Omega / B^2``, a value that
    depends on the batch size (and on the accumulation steps); this one is the seed's formula.

    ``history``: ``[step, omega]`` per update (step = updates before it), checkpointed; the main
    process writes it to ``omega.csv`` (columns ``step,omega``) in the run folder at every epoch end.
    A resumed run rewrites ``omega.csv`` from the checkpoint's history first, dropping rows of
    updates after the checkpoint, so no row is duplicated. ``python -m
    timm_overparam.research.curve_fit RUN_FOLDER`` fits ``C / (t + 1)^rho`` to it.

    Assumes every training forward of the model in train mode with autograd on feeds the loss.

    Example: ``OmegaRecorder()``; ``python train.py --store-grad``
    """

    def __init__(self) -> None:
        self.history: list[list[float]] = []
        self._written = 0
        self._handle: Any = None
        self._run: Any = None
        self._model: nn.Module | None = None
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._tag: int | None = None
        self._forwards = 0
        self._backward_seen = True

    # the hooks
    def _forward_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if module is not self._model or not module.training or not torch.is_grad_enabled():
            return  # an evaluation copy (deepcopy keeps the hook), eval mode or no_grad
        if not isinstance(output, torch.Tensor) or not output.requires_grad or output.ndim == 0:
            return
        if self._backward_seen:  # the first forward of a new micro-batch
            self._forwards, self._backward_seen = 0, False
        self._forwards += 1
        batch = output.shape[0]
        output.register_hook(lambda grad: self._capture(grad, batch))

    def _capture(self, grad: torch.Tensor, batch: int) -> None:
        self._backward_seen = True
        step = self._run.step
        if self._tag != step:  # the first micro-batch of this update (drops those of a skipped update)
            self._sum, self._count, self._tag = None, 0, step
        accum = int(getattr(self._run.config, "grad_accum_steps", 1) or 1)
        factor = float(batch * self._forwards * accum)
        g = grad.detach().float().reshape(batch, -1)
        total = (g * factor).pow(2).sum(dtype=torch.float64)
        self._sum = total if self._sum is None else self._sum + total
        self._count += batch

    # the protocol
    def on_run_start(self, run: Any) -> None:
        self._run, self._model = run, run.unwrapped
        self._handle = self._model.register_forward_hook(
            lambda module, inputs, output: self._forward_hook(module, inputs, output)
        )
        if run.is_main_process:  # a resumed run starts from the checkpoint's rows
            write_text_atomic(Path(run.folder) / OMEGA_CSV, _csv_rows(self.history, header=True))
        self._written = len(self.history)

    def on_before_step(self, run: Any, model: nn.Module) -> None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if self._tag == run.step and self._sum is not None:
            total = self._sum.to(device=device, dtype=torch.float64)
        else:
            total = torch.zeros((), dtype=torch.float64, device=device)
        count = self._count if self._tag == run.step else 0
        self._sum, self._count, self._tag = None, 0, None
        sums = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=device)])
        acc = getattr(run, "acc", None)
        if acc is not None and getattr(acc, "num_processes", 1) > 1:
            sums = acc.reduce(sums, reduction="sum")
        total, count = sums.tolist()
        if count == 0:
            return
        scaler = getattr(acc, "scaler", None) if acc is not None else None
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        omega = total / count / scale**2
        self.history.append([run.step, omega])
        run.log({"omega": omega}, step=run.step)

    def on_epoch_end(self, run: Any, epoch: int, metrics: dict[str, float]) -> None:
        self._flush(run)

    def on_run_end(self, run: Any, results: dict[str, Any]) -> None:
        self._flush(run)
        if self._handle is not None:
            self._handle.remove()
        self._handle = self._run = self._model = None

    def _flush(self, run: Any) -> None:
        """Append the rows not yet in ``omega.csv`` (main process)."""
        if run.is_main_process and self._written < len(self.history):
            with open(Path(run.folder) / OMEGA_CSV, "a", newline="") as f:
                f.write(_csv_rows(self.history[self._written :], header=False))
        self._written = len(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [[int(s), float(o)] for s, o in state.get("history", [])]
        self._written = 0


def _csv_rows(rows: list[list[float]], header: bool) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if header:
        writer.writerow(["step", "omega"])
    writer.writerows([[int(s), repr(float(o))] for s, o in rows])
    return text.getvalue()
