"""Model families as strategies: each owns its training loss, per-epoch evaluation and final export.

- ``OpFamily`` (expanded tensors): evaluated in collapsed form on a copy, with a check that the
  collapsed and expanded logits agree; exports ``collapsed.safetensors`` (stock timm);
- ``SubspaceFamily`` (line, curve, simplex): the loss at sampled points plus the regulariser;
  evaluated at the chosen points and ensembles, each point with recalibrated BatchNorm statistics;
  exports ``point-<p>.safetensors`` with each point's statistics;
- ``PlainFamily``: any other timm model, evaluated and kept as it is.

Every family runs both tasks (``--task``): classification reports ``METRICS`` (top1, top5, loss,
ece, precision, recall) and reliability bins, regression ``REGRESSION_METRICS`` (loss: the p-loss,
mae); a regression ensemble averages its members' outputs. A model (in its stock form) with a
``block_weights()`` method, the depth-limit ResNet's ``(L, ...)`` tensor of its residual blocks'
weights, also gets ``blocks.safetensors`` (key ``blocks``; ``export_block_weights``).

With ``--log-rank`` every evaluated model (not ensembles) also reports the effective rank of its
validation embeddings (``erank``, ``rank_entropy``; ``eval/rank.py``). ``reliability(detail)`` gives
the reliability bins of the latest evaluation (``results.json``).

The training loop (``train/loop.py``) calls ``loss``, ``evaluate`` and ``export`` and never asks
which family it runs. A family reads from the run (``run.val_loader``, ``run.acc``,
``run.criterion``, ``run.bn_loader(epoch)``) and never changes the model it evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import torch
from timm.utils import reparameterize_model
from torch import Tensor, nn
from torch.nn.utils import parametrize

from timm_overparam.core.atomic import atomic_path
from timm_overparam.core.modes import preserve_modes
from timm_overparam.core.numerics import rel_err
from timm_overparam.core.weights import save_weights
from timm_overparam.eval.metrics import Gather, Metrics, RegressionMetrics, evaluate_model
from timm_overparam.eval.points import SubspaceResults, evaluate_points
from timm_overparam.eval.rank import embedding_rank
from timm_overparam.expand.convert import collapse, is_expanded
from timm_overparam.subspace.parametrization import SubspaceConfig, coefficients
from timm_overparam.subspace.points import at_point, extract_point, sampled_loss
from timm_overparam.subspace.regularizer import subspace_regularizer
from timm_overparam.train.config import dynamo_plugin, parse_ensembles, parse_points

METRICS = [f.name for f in fields(Metrics) if f.name != "reliability"]  # every classification evaluation
REGRESSION_METRICS = [f.name for f in fields(RegressionMetrics)]  # every regression evaluation
RANK_METRICS = ["rank_entropy", "erank"]  # with --log-rank, of every evaluated model (not ensembles)
BLOCKS_FILE = "blocks.safetensors"  # the residual blocks' weights of a model with block_weights()


def task_metrics(task: str) -> list[str]:
    """The metrics every evaluation of ``task`` reports.

    >>> task_metrics("regression")
    ['loss', 'mae']
    """
    return list(REGRESSION_METRICS if task == "regression" else METRICS)


def point_name(point: Any) -> str:
    """A point as text for metric keys and file names: ``0.5``, ``0.2_0.3_0.5``.

    >>> point_name(0.5), point_name((0.2, 0.8))
    ('0.5', '0.2_0.8')
    """
    return (
        "_".join(f"{float(t):g}" for t in point) if isinstance(point, (tuple, list)) else f"{float(point):g}"
    )


def ensemble_name(members: Any) -> str:
    """An ensemble's key in metric names and records: ``ens`` and its members' names joined by ``+``.

    >>> ensemble_name([0.0, 1.0])
    'ens0+1'
    """
    return "ens" + "+".join(point_name(p) for p in members)


def default_points(model: nn.Module) -> list[Any]:
    """Lines and curves: 0, 0.5, 1. Simplexes: every vertex and the centre."""
    config: SubspaceConfig = model.subspace_config
    if config.shape != "simplex":
        return [0.0, 0.5, 1.0]
    eye = torch.eye(config.n).tolist()
    return [tuple(v) for v in eye] + [tuple([1.0 / config.n] * config.n)]


def check_points(config: SubspaceConfig, points: list[Any], ensembles: list[list[Any]]) -> None:
    """Every point lies on the subspace, and every ensemble member is one of the evaluated points.

    >>> check_points(SubspaceConfig("line"), [0.0, 1.0], [[0.0, 1.0]])
    >>> check_points(SubspaceConfig("line"), [0.0, 1.5], [])
    Traceback (most recent call last):
    ...
    ValueError: --eval-points: point 1.5 is outside [0, 1]
    """
    for p in points:
        try:
            coefficients(config.shape, config.n, p)
        except ValueError as e:
            raise ValueError(f"--eval-points: {e}") from None
    names = {point_name(p) for p in points}
    for e in ensembles:
        missing = [point_name(p) for p in e if point_name(p) not in names]
        if missing:
            raise ValueError(
                f"--eval-ensembles: member(s) {missing} of {'+'.join(map(point_name, e))} are not evaluated "
                f"points {sorted(names)}: add them to --eval-points"
            )


def flat(metrics: Metrics | RegressionMetrics, prefix: str = "") -> dict[str, float]:
    """The scalar metrics (classification or regression) as a flat dict with ``prefix`` on every key.

    >>> flat(Metrics(top1=0.5, top5=1.0, loss=0.7, ece=0.1, precision=0.5, recall=0.5), "point0_")["point0_top1"]
    0.5
    >>> flat(RegressionMetrics(loss=0.25, mae=0.5))
    {'loss': 0.25, 'mae': 0.5}
    """
    return {f"{prefix}{f.name}": getattr(metrics, f.name) for f in fields(metrics) if f.name != "reliability"}


def rank_metrics(model: nn.Module, loader: Iterable, gather: Gather | None) -> dict[str, float]:
    """``rank_entropy`` and ``erank`` of ``model``'s embeddings on ``loader`` (``eval.rank.embedding_rank``).

    This is a pass over the data of its own, not shared with the logits pass: the logits are not
    ``get_classifier()`` of the pre-logits embeddings for every timm model (distilled ViTs average
    two heads, for one), and sharing it would change ``eval/points.py`` for every subspace point;
    the extra pass runs only with ``--log-rank``.

    Example: ``rank_metrics(model, val_loader, None)["erank"]``
    """
    rank = embedding_rank(model, loader, gather)
    return {"rank_entropy": rank.entropy, "erank": rank.erank}


def timm_record(metrics: Metrics | RegressionMetrics) -> dict[str, float]:
    """validate.py's form of metrics, as timm's validate.py writes them (accuracies in percent;
    precision and recall fractions, like the ECE); regression metrics as they are.

    >>> timm_record(Metrics(top1=0.5, top5=1.0, loss=0.7, ece=0.1, precision=0.5, recall=0.5))["top1_err"]
    50.0
    """
    if isinstance(metrics, RegressionMetrics):
        return flat(metrics)
    top1, top5 = 100 * metrics.top1, 100 * metrics.top5
    return {
        "top1": round(top1, 4),
        "top1_err": round(100 - top1, 4),
        "top5": round(top5, 4),
        "top5_err": round(100 - top5, 4),
        "loss": round(metrics.loss, 6),
        "ece": round(metrics.ece, 6),
        "precision": round(metrics.precision, 6),
        "recall": round(metrics.recall, 6),
    }


def _millions(model: nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 4)


def export_block_weights(model: nn.Module, path: Any, metadata: dict[str, str] | None = None) -> Any:
    """Write ``model.block_weights()`` (an ``(L, ...)`` tensor: the trained residual blocks' weights,
    one row per block) to the safetensors file ``path`` under the key ``blocks``, atomically; returns
    the path, or None (nothing written) when the model has no ``block_weights`` method.

    ``model`` is the stock form (a family's ``stock``: the collapsed op model, a subspace point).

    Example: ``export_block_weights(model, folder / "blocks.safetensors", {"model": "depth_limit_resnet"})``
    """
    from safetensors.torch import save_file

    method = getattr(model, "block_weights", None)
    if not callable(method):
        return None
    with torch.no_grad():
        blocks = method()
    if not isinstance(blocks, Tensor) or blocks.ndim < 1:
        raise TypeError(
            f"{type(model).__name__}.block_weights() must return an (L, ...) tensor, got {type(blocks).__name__}"
            + (f" of shape {tuple(blocks.shape)}" if isinstance(blocks, Tensor) else "")
        )
    with atomic_path(path) as tmp:
        save_file({"blocks": blocks.detach().cpu().contiguous().clone()}, tmp, metadata=metadata)
    return path


class PlainFamily:
    """A model trained, evaluated and kept as it is (the base of the other families).

    Example: ``PlainFamily(config, model).loss(run, model, x, y)``
    """

    name = "plain"

    def __init__(self, config: Any, model: nn.Module) -> None:
        self.config = config
        self.task, self.p_loss = config.task, config.p_loss
        if parse_points(config.eval_points) or config.eval_ensembles or getattr(config, "num_samples", 1) > 1:
            raise ValueError(
                f"--eval-points/--eval-ensembles/--num-samples need a subspace model, not {config.model!r}"
            )

    @staticmethod
    def matches(model: nn.Module) -> bool:
        return True

    def stock(self, model: nn.Module) -> nn.Module:
        """The model in stock-timm form (a copy for op and subspace models)."""
        return model

    def metric_names(self) -> list[str]:
        """The metrics ``evaluate`` reports."""
        return self.base_names() + self.rank_names()

    def base_names(self) -> list[str]:
        """The task's metrics of one evaluated model (``task_metrics``)."""
        return task_metrics(self.task)

    def rank_names(self) -> list[str]:
        """``RANK_METRICS`` with ``--log-rank``, else none."""
        return list(RANK_METRICS) if self.config.log_rank else []

    def loss(self, run: Any, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The training loss of a batch (``model`` is the prepared, possibly wrapped, model)."""
        return run.criterion(model(x), y)

    def evaluate(self, run: Any, model: nn.Module, epoch: int) -> tuple[dict[str, float], Any]:
        """Metrics of ``model`` (unwrapped; never changed) and what ``export`` and ``reliability``
        need of them (here the ``Metrics``)."""
        gather = run.acc.gather_for_metrics
        result = evaluate_model(model, run.val_loader, gather, task=self.task, p_loss=self.p_loss)
        metrics = flat(result)
        if self.config.log_rank:
            metrics |= rank_metrics(model, run.val_loader, gather)
        return metrics, result

    def reliability(self, detail: Any) -> dict[str, dict[str, Any]]:
        """The reliability bins of the evaluation that gave ``detail``, by name (here ``model``;
        none for regression)."""
        return _bins([("model", detail)])

    def export(self, run: Any, model: nn.Module, metrics: dict[str, float], detail: Any) -> dict[str, Any]:
        """Write the stock-timm exports (main process); returns the extra results fields (``exports``)."""
        return {"exports": self.export_blocks(run, model)}

    def export_blocks(self, run: Any, stock: nn.Module) -> list[Any]:
        """``blocks.safetensors`` of the stock model ``stock`` if it has ``block_weights()`` (main
        process); the written paths."""
        if not run.acc.is_main_process:
            return []
        metadata = {"model": str(self.config.model), "model_kwargs": repr(dict(self.config.model_kwargs))}
        path = export_block_weights(stock, run.folder / BLOCKS_FILE, metadata)
        return [] if path is None else [path]

    def validate(self, model: nn.Module, val_loader: Any, bn_loader: Any, gather: Any) -> dict[str, Any]:
        """validate.py's record of ``model``: its stock form evaluated (``reparam``: through timm's
        ``reparameterize_model``), parameter counts in millions."""
        stock = self.stock(model)
        if getattr(self.config, "reparam", False):
            stock = reparameterize_model(stock)
        metrics = evaluate_model(
            compiled(stock, self.config), val_loader, gather, task=self.task, p_loss=self.p_loss
        )
        record = timm_record(metrics) | {"param_count": _millions(stock)}
        if self.config.log_rank:
            record |= rank_metrics(stock, val_loader, gather)
        return record


class OpFamily(PlainFamily):
    """Over-parameterized (expanded) models: evaluated and exported collapsed."""

    name = "op"

    @staticmethod
    def matches(model: nn.Module) -> bool:
        return any(is_expanded(m) for m in model.modules())

    def stock(self, model: nn.Module) -> nn.Module:
        return collapse(model)

    def metric_names(self) -> list[str]:
        return [*self.base_names(), *self.rank_names(), "collapse_rel_err"]

    def evaluate(self, run: Any, model: nn.Module, epoch: int) -> tuple[dict[str, float], Any]:
        plain = collapse(model)
        metrics, result = super().evaluate(run, plain, epoch)
        metrics["collapse_rel_err"] = self.check_collapse(run, model, plain, epoch)
        return metrics, result

    @torch.no_grad()
    def check_collapse(self, run: Any, expanded: nn.Module, plain: nn.Module, epoch: int) -> float:
        """Relative error between expanded and collapsed eval logits on the first validation batch."""
        x, _ = next(iter(run.val_loader))
        with preserve_modes(expanded, training=False):
            err = rel_err(expanded(x).float(), plain.eval()(x).float())
        limit = 1e-4 if run.acc.mixed_precision == "no" else 5e-2
        if not math.isfinite(err):
            raise FloatingPointError(
                f"the evaluation after epoch {epoch} is not finite (the model's outputs): the training diverged; "
                f"{run.kept()} (lower --lr or set --clip-grad)"
            )
        if not err <= limit:
            raise RuntimeError(f"collapsed and expanded logits differ by {err:.3g} (relative; limit {limit})")
        return err

    def export(self, run: Any, model: nn.Module, metrics: dict[str, float], detail: Any) -> dict[str, Any]:
        plain = collapse(model)
        gather = run.acc.gather_for_metrics
        expanded = flat(evaluate_model(model, run.val_loader, gather, task=self.task, p_loss=self.p_loss))
        results: dict[str, Any] = {
            "expanded": expanded,
            "param_count_collapsed": sum(p.numel() for p in plain.parameters()),
        }
        exports = []
        if run.acc.is_main_process:
            exports.append(save_weights(plain, run.folder / "collapsed.safetensors"))
        exports += self.export_blocks(run, plain)
        count = sum(p.numel() for p in model.parameters())
        if self.task == "regression":
            shown = f"loss: expanded {expanded['loss']:.6g}, collapsed {metrics['loss']:.6g}"
        else:
            shown = f"top-1: expanded {100 * expanded['top1']:.2f}%, collapsed {100 * metrics['top1']:.2f}%"
        run.say(f"{shown}; parameters: expanded {count:,}, collapsed {results['param_count_collapsed']:,}")
        return results | {"exports": exports}

    def validate(self, model: nn.Module, val_loader: Any, bn_loader: Any, gather: Any) -> dict[str, Any]:
        record = super().validate(model, val_loader, bn_loader, gather)
        return record | {
            "param_count_expanded": _millions(model),
            "param_count_collapsed": record["param_count"],
        }


class SubspaceFamily(PlainFamily):
    """Line, curve and simplex models: sampled-point loss; evaluated and exported at points."""

    name = "subspace"

    def __init__(self, config: Any, model: nn.Module) -> None:
        self.config = config
        self.task, self.p_loss = config.task, config.p_loss
        self.points = parse_points(config.eval_points) or default_points(model)
        self.ensembles = parse_ensembles(config.eval_ensembles)
        check_points(model.subspace_config, self.points, self.ensembles)

    @staticmethod
    def matches(model: nn.Module) -> bool:
        return isinstance(getattr(model, "subspace_config", None), SubspaceConfig)

    def stock(self, model: nn.Module) -> nn.Module:
        return extract_point(model, self.points[0])

    def metric_names(self) -> list[str]:
        base = self.base_names()
        names = base + self.rank_names()
        names += [f"point{point_name(p)}_{k}" for p in self.points for k in base + self.rank_names()]
        names += [f"{ensemble_name(e)}_{k}" for e in self.ensembles for k in base]
        return names

    def loss(self, run: Any, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        loss = sampled_loss(model, run.criterion, x, y, self.config.num_samples)
        if self.config.subspace_beta:
            loss = loss + self.config.subspace_beta * subspace_regularizer(run.unwrapped)
        return loss

    def evaluate(self, run: Any, model: nn.Module, epoch: int) -> tuple[dict[str, float], Any]:
        gather = run.acc.gather_for_metrics
        res = self.evaluate_points(model, run.val_loader, run.bn_loader(epoch), gather)
        points = [
            flat(m) | self.point_rank(model, res, i, run.val_loader, gather)
            for i, m in enumerate(res.metrics)
        ]
        metrics = {k: sum(m[k] for m in points) / len(points) for k in points[0]}
        for p, m in zip(res.points, points, strict=True):
            metrics |= {f"point{point_name(p)}_{k}": v for k, v in m.items()}
        for e, m in zip(res.ensembles, res.ensemble_metrics, strict=True):
            metrics |= flat(m, f"{ensemble_name(e)}_")
        return metrics, res

    def evaluate_points(
        self,
        model: nn.Module,
        val_loader: Iterable,
        bn_loader: Iterable,
        gather: Gather | None,
        forward: Callable[[Tensor], Tensor] | None = None,
    ) -> SubspaceResults:
        """The run's points and ensembles of ``model`` evaluated (each point with BatchNorm
        statistics recalibrated on ``bn_loader``; the validation passes through ``forward``, by
        default ``model``), as the run's options ask."""
        return evaluate_points(
            model,
            val_loader,
            self.points,
            self.ensembles,
            bn_loader=bn_loader,
            bn_batches=self.config.bn_recal_batches,
            average=self.config.ensemble_average,
            gather=gather,
            task=self.task,
            p_loss=self.p_loss,
            forward=forward,
        )

    def point_rank(
        self, model: nn.Module, res: SubspaceResults, i: int, loader: Iterable, gather: Gather | None
    ) -> dict[str, float]:
        """``rank_metrics`` of point ``i`` of ``res`` with the BatchNorm statistics it was evaluated
        with (none without ``--log-rank``); the model is restored afterwards."""
        if not self.config.log_rank:
            return {}
        with at_point(model, res.points[i], res.bn_stats[i] if res.bn_stats else None), parametrize.cached():
            return rank_metrics(model, loader, gather)

    def reliability(self, detail: Any) -> dict[str, dict[str, Any]]:
        """The bins of every point (``point0.5``) and ensemble (``ens0+1``) of the evaluation ``detail``."""
        named = [(f"point{point_name(p)}", m) for p, m in zip(detail.points, detail.metrics, strict=True)]
        named += [
            (ensemble_name(e), m) for e, m in zip(detail.ensembles, detail.ensemble_metrics, strict=True)
        ]
        return _bins(named)

    def export(self, run: Any, model: nn.Module, metrics: dict[str, float], detail: Any) -> dict[str, Any]:
        exports = []
        for i, p in enumerate(self.points):
            plain = extract_point(model, p, detail.bn_stats[i] if detail.bn_stats else None)  # as evaluated
            if run.acc.is_main_process:
                exports.append(save_weights(plain, run.folder / f"point-{point_name(p)}.safetensors"))
            if i == 0:  # the stock model of the subspace: its first point
                exports += self.export_blocks(run, plain)
        return {"param_count_point": sum(p.numel() for p in plain.parameters()), "exports": exports}

    def validate(self, model: nn.Module, val_loader: Any, bn_loader: Any, gather: Any) -> dict[str, Any]:
        """validate.py's record of the run's points and ensembles; with ``--torchcompile`` the
        validation passes run compiled (the same graphs for every point), the BatchNorm recalibration eager."""
        res = self.evaluate_points(model, val_loader, bn_loader, gather, forward=compiled(model, self.config))
        points = [
            {"point": p} | timm_record(m) | self.point_rank(model, res, i, val_loader, gather)
            for i, (p, m) in enumerate(zip(res.points, res.metrics, strict=True))
        ]
        return (
            {k: v for k, v in points[0].items() if k != "point"}
            | {"point": res.points[0]}
            | {
                "points": points,
                "ensembles": [
                    {"members": list(e)} | timm_record(m)
                    for e, m in zip(res.ensembles, res.ensemble_metrics, strict=True)
                ],
                "param_count": _millions(model),
                "param_count_point": _millions(extract_point(model, res.points[0])),
            }
        )


def compiled(model: nn.Module, config: Any) -> nn.Module:
    """``model`` under ``torch.compile`` with the config's ``--torchcompile`` options (accelerate's
    ``TorchDynamoPlugin`` kwargs), or ``model`` itself without the flag."""
    plugin = dynamo_plugin(config)
    return model if plugin is None else torch.compile(model, **plugin.to_kwargs())


def _bins(named: list[tuple[str, Any]]) -> dict[str, dict[str, Any]]:
    """The reliability bins of named metrics that have them (classification; regression has none)."""
    return {name: m.reliability.to_dict() for name, m in named if getattr(m, "reliability", None) is not None}


FAMILIES: list[type[PlainFamily]] = [SubspaceFamily, OpFamily, PlainFamily]


def family_of(model: nn.Module, config: Any) -> PlainFamily:
    """The family strategy of ``model`` for the run ``config`` (its points and options checked).

    Example: ``family_of(timm.create_model("resnet18_op3"), TrainConfig()).name == "op"``
    """
    return next(f for f in FAMILIES if f.matches(model))(config, model)


def family(model: nn.Module) -> str:
    """``'op'`` (expanded tensors), ``'subspace'`` or ``'plain'``.

    >>> family(nn.Linear(2, 2))
    'plain'
    """
    return next(f for f in FAMILIES if f.matches(model)).name
