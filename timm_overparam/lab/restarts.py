"""Restarts of one configuration trained at once as a batch of models, or one at a time.

``train_restarts`` stacks the parameters of R models (each built under its own seed) and trains
them together: one ``torch.func.vmap`` of ``functional_call`` over the stacked parameters gives
every restart's loss, the sum of the losses one backward (each restart's slice of a stacked
gradient is exactly its own gradient), and one ``torch.optim.SGD`` over the stacked tensors the
update (SGD is elementwise, momentum included). A restart whose step is skipped (BoolNet's rule)
gets its parameters and momentum back after the step. ``train_restart`` is the plain loop of one
model: the reference the batch must equal (float64 tests) and the baseline of the benchmark.

Models come from timm's registry, so ``_op2`` and ``_line`` variants are this project's own
conversions. A restart is evaluated as it deploys: an op model collapsed (the batch composes the
same weights; the loop calls ``collapse``), a line at points 0, 0.5 and 1 (the loop calls
``extract_point``), a hypernetwork at ``z = 0``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from timm_overparam.expand.convert import collapse
from timm_overparam.subspace.parametrization import SubspaceParam
from timm_overparam.subspace.points import extract_point, set_point
from timm_overparam.subspace.regularizer import subspace_regularizer

from .tasks import Task

__all__ = ["EVAL_POINTS", "RestartResults", "build_model", "train_restart", "train_restarts"]

EVAL_POINTS = (0.0, 0.5, 1.0)  # where a line is evaluated; the midpoint is its metric
_EVAL_ELEMENTS = 1 << 24  # validation inputs evaluated at once (restarts are chunked to stay under)


def build_model(arch: str, kwargs: dict, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` under ``torch.manual_seed(seed)`` (the global RNG is
    restored afterwards), in ``dtype``.

    >>> build_model("lab_boolnet", {"width": 3}, seed=0).fc.weight.shape
    torch.Size([3, 2])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, **kwargs)
    config = getattr(model, "subspace_config", None)
    if config is not None and (config.shape != "line" or config.layerwise):
        raise ValueError(
            f"the lab trains lines ({arch!r} is a {'layerwise ' if config.layerwise else ''}{config.shape}): "
            "a curve or simplex draws a random vertex pair per step for its regulariser, which one "
            "vectorised batch cannot draw per restart; use the _line variant"
        )
    return model.to(dtype)


class _Objective(nn.Module):
    """The training loss of one restart: BCE-with-logits, plus ``beta`` times the subspace
    regulariser for a line (the project's training loss for subspaces)."""

    def __init__(self, model: nn.Module, beta: float) -> None:
        super().__init__()
        self.model, self.beta = model, beta
        self.line = hasattr(model, "subspace_config")

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(self.model(x).squeeze(-1), y)
        if self.line and self.beta:
            loss = loss + self.beta * subspace_regularizer(self.model)
        return loss


def _coefficient_names(model: nn.Module, prefix: str = "") -> list[str]:
    """Names of the line's point buffers (one per subspace tensor)."""
    return [
        f"{prefix}{name}.coefficients" for name, m in model.named_modules() if isinstance(m, SubspaceParam)
    ]


def _line_coefficients(points: Tensor, dtype: torch.dtype) -> Tensor:
    """``(1 - a, a)`` per point (float64 arithmetic, as ``set_point``), in ``dtype``."""
    return torch.stack((1.0 - points, points), dim=-1).to(dtype)


@dataclass(frozen=True)
class RestartResults:
    """Per restart: ``metric`` (R,) as deployed (op collapsed, a line's midpoint, a hypernetwork at
    z = 0); ``points`` {point: (R,)} for lines, else None; ``state`` the final parameters stacked
    (R, ...) under the model's own names."""

    metric: Tensor
    points: dict[float, Tensor] | None
    state: dict[str, Tensor]


def train_restarts(
    arch: str,
    kwargs: dict,
    task: Task,
    seeds: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    beta: float = 1.0,
) -> RestartResults:
    """Train one restart per seed of ``timm.create_model(arch, **kwargs)`` on ``task``, all at once.

    Restart ``r`` equals ``train_restart(arch, kwargs, task, seeds[r], ...)`` (tested in float64).

    >>> from timm_overparam.lab.tasks import BoolNetTask
    >>> out = train_restarts("lab_boolnet", {"width": 4}, BoolNetTask(steps=20), seeds=[0, 1])
    >>> tuple(out.metric.shape)
    (2,)
    """
    if not seeds:
        raise ValueError("train_restarts needs at least one seed")
    models = [build_model(arch, kwargs, seed, dtype) for seed in seeds]
    objectives = [_Objective(m, beta) for m in models]
    template = copy.deepcopy(objectives[0]).to(device)
    params = _stack([dict(o.named_parameters()) for o in objectives], device)
    buffers = _stack([dict(o.named_buffers()) for o in objectives], device)
    del models, objectives

    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    draws = [task.draw(g, dtype) for g in generators]
    x, y, z = (torch.stack([getattr(d, k) for d in draws]).to(device) for k in ("x", "y", "z"))
    active = torch.stack([d.active for d in draws]).to(device)
    points = torch.stack([d.points for d in draws]).to(device)
    coefficient_names = _coefficient_names(template)
    seed_name = "model.z" if "model.z" in buffers else None

    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=task.lr, momentum=task.momentum)
    losses = vmap(lambda p, b, xs, ys: functional_call(template, (p, b), (xs, ys)))
    template.train()
    for t in range(x.shape[1]):
        runs = active[:, t]
        if not bool(runs.any()):
            continue
        step_buffers = dict(buffers)
        if seed_name:
            step_buffers[seed_name] = z[:, t]
        if coefficient_names:
            c = _line_coefficients(points[:, t], dtype)
            step_buffers.update(dict.fromkeys(coefficient_names, c))
        kept = None if bool(runs.all()) else _snapshot(optimizer, trainable)
        loss = losses(params, step_buffers, x[:, t], y[:, t]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if kept is not None:
            _restore(optimizer, trainable, kept, ~runs)

    model_params = {name.removeprefix("model."): p.detach() for name, p in params.items()}
    model_buffers = {name.removeprefix("model."): b for name, b in buffers.items()}
    scores = _evaluate(template.model, model_params, model_buffers, task, generators, dtype, device)
    if coefficient_names:
        return RestartResults(scores[0.5], scores, model_params)
    return RestartResults(scores[None], None, model_params)


def _stack(named: list[dict[str, Tensor]], device: torch.device | str) -> dict[str, Tensor]:
    """Each name's tensors stacked along a new first dimension (restarts); grads as the originals."""
    out = {}
    for name, first in named[0].items():
        stacked = torch.stack([n[name].detach() for n in named]).to(device)
        out[name] = stacked.requires_grad_(first.requires_grad)
    return out


def _snapshot(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
    """Copies of the parameters and their momentum buffers before a partial step."""
    kept = []
    for p in params:
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        kept.append((p.detach().clone(), None if buf is None else buf.clone()))
    return kept


def _restore(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    kept: list[tuple[Tensor, Tensor | None]],
    skipped: Tensor,
) -> None:
    """Put back the skipped restarts' parameters and momentum (none yet: zero, as no buffer)."""
    with torch.no_grad():
        for p, (value, buf) in zip(params, kept, strict=True):
            p[skipped] = value[skipped]
            now = optimizer.state.get(p, {}).get("momentum_buffer")
            if now is not None:
                now[skipped] = 0.0 if buf is None else buf[skipped]


def _evaluate(
    model: nn.Module,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    task: Task,
    generators: list[torch.Generator],
    dtype: torch.dtype,
    device: torch.device | str,
) -> dict[float | None, Tensor]:
    """Validation metric per restart, drawn from each restart's generator after training; at every
    point of ``EVAL_POINTS`` for a line (key = point), else once (key None)."""
    coefficient_names = _coefficient_names(model)
    where: list[float | None] = list(EVAL_POINTS) if coefficient_names else [None]
    out: dict[float | None, list[Tensor]] = {p: [] for p in where}
    logits_of = vmap(lambda p, b, xs: functional_call(model, (p, b), (xs,)).squeeze(-1))
    model.eval()
    start = 0
    while start < len(generators):
        # restarts in chunks of at most _EVAL_ELEMENTS validation inputs (at least one restart)
        sets = [task.validation(generators[start], dtype)]
        while start + len(sets) < len(generators) and (len(sets) + 1) * sets[0][0].numel() <= _EVAL_ELEMENTS:
            sets.append(task.validation(generators[start + len(sets)], dtype))
        part = slice(start, start + len(sets))
        start += len(sets)
        vx = torch.stack([s[0] for s in sets]).to(device)
        vy = torch.stack([s[1] for s in sets]).to(device)
        p = {k: v[part] for k, v in params.items()}
        b = {k: v[part] for k, v in buffers.items()}
        for point in where:
            if point is not None:
                c = _line_coefficients(
                    torch.full((len(sets),), point, dtype=torch.float64, device=device), dtype
                )
                b.update(dict.fromkeys(coefficient_names, c))
            with torch.no_grad():
                out[point].append(task.score(logits_of(p, b, vx), vy))
    return {point: torch.cat(values) for point, values in out.items()}


def train_restart(
    arch: str,
    kwargs: dict,
    task: Task,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    beta: float = 1.0,
) -> tuple[nn.Module, dict[float | None, float]]:
    """One restart trained alone: the trained model and its metric as deployed ({None: value}, or
    {point: value} for a line), evaluated on the stock model (``collapse`` / ``extract_point``).

    >>> from timm_overparam.lab.tasks import BoolNetTask
    >>> model, metric = train_restart("lab_boolnet", {"width": 4}, BoolNetTask(steps=20), seed=0)
    >>> list(metric)
    [None]
    """
    model = build_model(arch, kwargs, seed, dtype).to(device)
    objective = _Objective(model, beta)
    generator = torch.Generator().manual_seed(int(seed))
    d = task.draw(generator, dtype)
    line = objective.line
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=task.lr, momentum=task.momentum
    )
    has_seed = "z" in dict(model.named_buffers())
    objective.train()
    for t in range(d.x.shape[0]):
        if not bool(d.active[t]):
            continue
        if has_seed:
            model.z.copy_(d.z[t])
        if line:
            set_point(model, float(d.points[t]))
        loss = objective(d.x[t].to(device), d.y[t].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if has_seed:
        model.z.zero_()
    vx, vy = (v.to(device) for v in task.validation(generator, dtype))
    deployed: Callable[[float | None], nn.Module] = (
        (lambda point: extract_point(model, point)) if line else (lambda _: collapse(model))
    )
    metric = {}
    for point in EVAL_POINTS if line else (None,):
        stock = deployed(point).eval()
        with torch.no_grad():
            metric[point] = float(task.score(stock(vx).squeeze(-1), vy))
    return model, metric
