"""The job behind train.py: an accelerate loop with timm's optimizer, scheduler and EMA.

Evaluation every epoch works on copies of the unwrapped model: op models in collapsed form (with a
check that collapsed and expanded logits agree), subspace models at the chosen points and
ensembles, each point with recalibrated BatchNorm statistics. The experiment folder gets
``args.yaml``, ``summary.csv``, ``results.json``, checkpoints (``last``, ``best``, history) and the
stock-timm export (``collapsed.safetensors`` or ``point-<p>.safetensors``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import timm
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import broadcast_object_list, set_seed
from filelock import FileLock, Timeout
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, update_summary
from torch import Tensor, nn
from tqdm import tqdm

from timm_overparam.core.weights import load_weights, save_weights
from timm_overparam.eval.points import Metrics, evaluate_model, evaluate_points
from timm_overparam.expand.convert import collapse, is_expanded
from timm_overparam.subspace.parametrization import (
    SubspaceConfig,
    _coefficients,
    extract_point,
    sampled_loss,
    subspace_regularizer,
)
from timm_overparam.train.checkpoint import Checkpoints, TrainerState, read_state, write_text_atomic
from timm_overparam.train.cli import mixed_precision, parse_ensembles, parse_points
from timm_overparam.train.data import (
    DIGITS,
    DataInfo,
    data_config,
    describe,
    loader,
    open_dataset,
    transforms,
)

DECREASING = ("loss", "ece")  # metrics where lower is better
DIGITS_SIZE = 32  # the 8x8 digits are upsampled to this unless --img-size says otherwise


def family(model: nn.Module) -> str:
    """``'op'`` (expanded tensors), ``'subspace'`` or ``'plain'``.

    >>> family(nn.Linear(2, 2))
    'plain'
    """
    if isinstance(getattr(model, "subspace_config", None), SubspaceConfig):
        return "subspace"
    return "op" if any(is_expanded(m) for m in model.modules()) else "plain"


def create_model(args: argparse.Namespace, info: DataInfo) -> nn.Module:
    """``timm.create_model`` from the CLI args (classes and channels default to the dataset's).

    Example: ``create_model(args, DataInfo(num_classes=10, in_chans=1))``
    """
    if args.model not in timm.list_models():
        close = timm.list_models(f"*{args.model.split('_')[0]}*")[:8]
        raise ValueError(f"unknown model {args.model!r} (did you import timm_overparam?); similar: {close}")
    kwargs = dict(args.model_kwargs or {})
    for flag, key in (("drop", "drop_rate"), ("drop_path", "drop_path_rate")):
        if getattr(args, flag, None) is not None:
            kwargs[key] = getattr(args, flag)
    if args.pretrained_path:
        if not args.pretrained:
            raise ValueError(f"--pretrained-path {args.pretrained_path!r} needs --pretrained")
        kwargs["pretrained_cfg_overlay"] = dict(file=args.pretrained_path)
    subspace = args.model in timm.list_models(module="subspace")
    if getattr(args, "layerwise", False):
        if not subspace:
            raise ValueError(
                f"--layerwise is for subspace models (<arch>_line/_curve/_simplex), not {args.model!r}"
            )
        kwargs["subspace_layerwise"] = True
    if args.pretrained_path and not os.path.isfile(args.pretrained_path):
        raise ValueError(f"--pretrained-path {args.pretrained_path!r} is not a file")
    try:
        model = timm.create_model(
            args.model,
            pretrained=args.pretrained,
            num_classes=args.num_classes or info.num_classes,
            in_chans=args.in_chans or info.in_chans,
            **kwargs,
        )
        if args.pretrained_path:
            check_pretrained_file(model, args.pretrained_path)
        return model
    except Exception as e:
        if not args.pretrained_path:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"--pretrained-path {args.pretrained_path!r} does not hold weights of the base of "
            f"{args.model!r} ({type(e).__name__}: {first[:300]})"
        ) from e


def check_pretrained_file(model: nn.Module, path: str) -> None:
    """Raise if the weights file ``path`` lacks tensors of ``model``'s stock form (its classifier aside).

    timm loads a pretrained file without ``strict`` when the classifier is reset, so a foreign file
    would otherwise leave the model at its random init with only a log line.

    Example: ``check_pretrained_file(timm.create_model("resnet18"), "resnet18.safetensors")``
    """
    kind = family(model)
    stock = (
        collapse(model)
        if kind == "op"
        else extract_point(model, default_points(model)[0])
        if kind == "subspace"
        else model
    )
    classifier = stock.pretrained_cfg.get("classifier") or ()
    heads = {classifier} if isinstance(classifier, str) else set(classifier)
    found = set(timm.models.load_state_dict(path))
    missing = [k for k in stock.state_dict() if k not in found and k.rsplit(".", 1)[0] not in heads]
    if missing:
        raise KeyError(f"{len(missing)} tensors of the model are missing, e.g. {missing[:4]}")


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
            _coefficients(config.shape, config.n, p)
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


def point_name(point: Any) -> str:
    """A point as text for metric keys and file names: ``0.5``, ``0.2_0.3_0.5``.

    >>> point_name(0.5), point_name((0.2, 0.8))
    ('0.5', '0.2_0.8')
    """
    return (
        "_".join(f"{float(t):g}" for t in point) if isinstance(point, (tuple, list)) else f"{float(point):g}"
    )


def _flat(metrics: Metrics, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in asdict(metrics).items()}


def _rel_err(a: Tensor, b: Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def open_data(args: argparse.Namespace) -> tuple[Any, Any, DataInfo]:
    """Train and validation datasets (without transforms yet) and their classes/channels."""
    train_set = open_dataset(
        args.dataset, args.data_dir, args.train_split, download=args.dataset_download, train=True
    )
    val_set = open_dataset(
        args.dataset, args.data_dir, args.val_split, download=args.dataset_download, train=False
    )
    return train_set, val_set, describe(train_set)


def set_transforms(
    args: argparse.Namespace, model: nn.Module, train_set: Any, val_set: Any, augment: bool = True
) -> dict[str, Any]:
    """Give both datasets timm's transforms for ``model`` (the train set's without augmentation
    unless ``augment``); returns the data config used."""
    if args.img_size is None and args.input_size is None and args.dataset == DIGITS:
        args.img_size = DIGITS_SIZE
    in_chans = args.in_chans or describe(train_set).in_chans
    config = data_config(model, args, in_chans)
    digits = args.dataset == DIGITS
    train_set.transform = transforms(config, args, train=augment, digits=digits)
    val_set.transform = transforms(config, args, train=False, digits=digits)
    return config


class Trainer:
    """One training run (see the module docstring); ``run()`` does it all.

    Example: ``Trainer(parse_args(train_parser(), ["--epochs", "1"])).run()``
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.acc = Accelerator(
            mixed_precision=mixed_precision(args),
            gradient_accumulation_steps=args.grad_accum_steps,
            log_with="wandb" if args.log_wandb else None,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            step_scheduler_with_optimizer=False,
        )
        set_seed(args.seed)
        self.points = parse_points(args.eval_points)
        self.ensembles = parse_ensembles(args.eval_ensembles)
        for flag in ("num_samples", "grad_accum_steps", "epochs", "bn_recal_batches", "checkpoint_hist"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
        train_set, val_set, info = open_data(args)
        num_classes = args.num_classes or info.num_classes
        if num_classes < 2:
            raise ValueError(
                f"the training data has {num_classes} class: classification needs at least 2 "
                f"(check --data-dir and --train-split, or pass --num-classes)"
            )
        model = create_model(args, info)
        if args.initial_checkpoint:
            load_weights(model, args.initial_checkpoint)
        self.kind = family(model)
        if self.kind != "subspace" and (self.points or self.ensembles or args.num_samples > 1):
            raise ValueError(
                f"--eval-points/--eval-ensembles/--num-samples need a subspace model, not {args.model!r}"
            )
        if self.kind == "subspace":
            self.points = self.points or default_points(model)
            check_points(model.subspace_config, self.points, self.ensembles)
        self.config = set_transforms(args, model, train_set, val_set)
        self.train_set = train_set
        eval_batch = args.validation_batch_size or args.batch_size
        train_loader = loader(
            train_set, args.batch_size, shuffle=True, workers=args.workers, seed=args.seed, drop_last=True
        )
        val_loader = loader(val_set, eval_batch, shuffle=False, workers=args.workers, seed=args.seed)
        if len(train_loader) == 0:
            raise ValueError(
                f"the training set has {len(train_set)} samples, fewer than one batch "
                f"(-b {args.batch_size}); lower -b"
            )
        opt_kwargs = {k: v for k, v in (("eps", args.opt_eps), ("betas", args.opt_betas)) if v is not None}
        optimizer = create_optimizer_v2(
            model, args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum, **opt_kwargs
        )
        self.model, self.optimizer, self.train_loader, self.val_loader = self.acc.prepare(
            model, optimizer, train_loader, val_loader
        )
        self.scheduler, self.epochs = create_scheduler_v2(
            optimizer,
            sched=args.sched,
            num_epochs=args.epochs,
            decay_epochs=args.decay_epochs,
            decay_rate=args.decay_rate,
            cooldown_epochs=args.cooldown_epochs,
            min_lr=args.min_lr,
            warmup_lr=args.warmup_lr,
            warmup_epochs=args.warmup_epochs,
            step_on_epochs=not args.sched_on_updates,
            updates_per_epoch=math.ceil(len(self.train_loader) / args.grad_accum_steps),
        )
        self.ema = ModelEmaV3(self.unwrapped, decay=args.model_ema_decay) if args.model_ema else None
        self.criterion = (
            LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else nn.CrossEntropyLoss()
        )
        names = self.metric_names()
        if args.eval_metric not in names:
            raise ValueError(f"--eval-metric {args.eval_metric!r} is not one of {names}")
        self.start_epoch, self.step = 0, 0
        self.points_result: Any = None  # the latest evaluate_points result of the training model
        decreasing = args.eval_metric.split("_")[-1] in DECREASING
        if args.resume:
            state = Checkpoints(self.acc, Path(args.resume).parent, decreasing, args.checkpoint_hist).load(
                args.resume, self.model, args.model, self.ema.module if self.ema else None
            )
            self.start_epoch, self.step = state.epoch, state.step
            if self.start_epoch:
                self.scheduler.step(self.start_epoch)
        self.folder, self.lock = self._claim_folder()  # last: nothing below can fail
        self.checkpoints = Checkpoints(self.acc, self.folder, decreasing, args.checkpoint_hist)

    @property
    def unwrapped(self) -> nn.Module:
        return self.acc.unwrap_model(self.model)

    def metric_names(self) -> list[str]:
        """The metrics every evaluation of this run reports (the choices of ``--eval-metric``)."""
        base = [f.name for f in fields(Metrics)]
        names = list(base)
        if self.kind == "op":
            names.append("collapse_rel_err")
        if self.kind == "subspace":
            names += [f"point{point_name(p)}_{k}" for p in self.points for k in base]
            names += [f"ens{'+'.join(point_name(p) for p in e)}_{k}" for e in self.ensembles for k in base]
        if self.ema is not None:
            names += [f"ema_{n}" for n in names]
        return names

    def _claim_folder(self) -> tuple[Path, FileLock | None]:
        """The experiment folder, created (main process) and locked for this run.

        A run never writes into a folder that holds another run: a new run needs a new or empty
        folder (a default name gets a ``-2``, ``-3``... suffix if taken), a resumed run continues
        its own. The lock (``.lock``, released by the OS if the process dies) keeps two live runs out
        of one folder. Every process gets the main process's folder, or its error.
        """
        args = self.args
        own = Path(args.resume).resolve().parent if args.resume else None
        answer: list[Any] = [None, None]
        lock = None
        if self.acc.is_main_process:
            try:
                answer[0] = str(self._create_folder(own))
                lock = FileLock(Path(answer[0]) / ".lock")
                lock.acquire(timeout=0)
            except Timeout:
                answer[1] = (
                    f"another run is writing to {answer[0]!r} (its .lock is held): wait for it to end, "
                    f"or choose another --experiment"
                )
            except OSError as e:
                answer[1] = (
                    f"cannot write to the experiment folder {answer[0] or args.output!r}: {e.strerror or e} "
                    f"(--output {args.output!r} must be a writable folder)"
                )
            except ValueError as e:
                answer[1] = str(e)
        broadcast_object_list(answer)
        if answer[1] is not None:
            raise ValueError(answer[1])
        return Path(answer[0]), lock

    def _create_folder(self, own: Path | None) -> Path:
        args = self.args
        if own is not None and not args.experiment:
            return own
        output = Path(args.output)
        if output.exists() and not output.is_dir():
            raise ValueError(f"--output {args.output!r} is a file, not a folder of experiment folders")
        if args.experiment:
            folder = output / args.experiment
            folder.mkdir(parents=True, exist_ok=True)
            taken = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
            if taken and folder.resolve() != own:
                fix = (
                    f"continue that run with --resume {folder / 'last'}"
                    if (folder / "last").is_symlink()
                    else "delete it (it has no checkpoint to resume from)"
                )
                raise ValueError(
                    f"{str(folder)!r} already holds a run ({', '.join(sorted(taken)[:4])}): choose another "
                    f"--experiment, or {fix}"
                )
            return folder
        stem = f"{datetime.now():%Y%m%d-%H%M%S}-{args.model}-{self.config['input_size'][-1]}"
        output.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            folder = output / (stem if i == 1 else f"{stem}-{i}")
            try:
                folder.mkdir()  # atomic: two runs started in the same second get different folders
                return folder
            except FileExistsError:
                continue
        raise ValueError(f"999 experiment folders named {stem!r}* in {args.output!r}: pass --experiment")

    # ------------------------------------------------------------------------------------ training
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data; returns the mean loss over every process."""
        args, acc, model = self.args, self.acc, self.model
        model.train()
        self.train_loader.set_epoch(epoch)
        total, count = torch.zeros((), device=acc.device), 0
        bar = tqdm(
            self.train_loader, desc=f"epoch {epoch}", disable=not acc.is_local_main_process, leave=False
        )
        for i, (x, y) in enumerate(bar):
            with acc.accumulate(model):
                if self.kind == "subspace":
                    loss = sampled_loss(model, self.criterion, x, y, args.num_samples)
                    if args.subspace_beta:
                        loss = loss + args.subspace_beta * subspace_regularizer(self.unwrapped)
                else:
                    loss = self.criterion(model(x), y)
                finite = acc.gather(torch.isfinite(loss.detach()).reshape(1)).all()
                if not finite:
                    raise FloatingPointError(
                        f"the loss is {loss.item()} at epoch {epoch}, batch {i}: training stopped; "
                        f"{self._kept()} (lower --lr or set --clip-grad)"
                    )
                acc.backward(loss)
                if args.clip_grad and acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), args.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.step += 1
                self.scheduler.step_update(self.step)
                if self.ema is not None:
                    self.ema.update(self.unwrapped, step=self.step)
            total += loss.detach() * len(x)
            count += len(x)
            if i % args.log_interval == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
        loss_sum = acc.reduce(torch.stack([total, torch.tensor(float(count), device=acc.device)]), "sum")
        return {"loss": (loss_sum[0] / loss_sum[1]).item()}

    # ---------------------------------------------------------------------------------- evaluation
    def bn_loader(self, epoch: int) -> Iterable:
        """Training batches for BatchNorm recalibration: the same on every process and after a resume."""
        return loader(
            self.train_set, self.args.batch_size, shuffle=True, workers=0, seed=self.args.seed + epoch
        )

    def evaluate(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], Any]:
        """Metrics of ``model`` (unwrapped; never changed): collapsed, at points, or as it is."""
        gather = self.acc.gather_for_metrics
        if self.kind == "op":
            plain = collapse(model)
            metrics = _flat(evaluate_model(plain, self.val_loader, gather))
            metrics["collapse_rel_err"] = self.check_collapse(model, plain, epoch)
            return metrics, None
        if self.kind == "subspace":
            res = evaluate_points(
                model,
                self.val_loader,
                self.points,
                self.ensembles,
                bn_loader=self.bn_loader(epoch),
                bn_batches=self.args.bn_recal_batches,
                average=self.args.ensemble_average,
                gather=gather,
            )
            metrics = {
                k: sum(getattr(m, k) for m in res.metrics) / len(res.metrics) for k in asdict(res.metrics[0])
            }
            for p, m in zip(res.points, res.metrics, strict=True):
                metrics |= _flat(m, f"point{point_name(p)}_")
            for e, m in zip(res.ensembles, res.ensemble_metrics, strict=True):
                metrics |= _flat(m, f"ens{'+'.join(point_name(p) for p in e)}_")
            self.points_result = res
            return metrics, res
        return _flat(evaluate_model(model, self.val_loader, gather)), None

    @torch.no_grad()
    def check_collapse(self, expanded: nn.Module, plain: nn.Module, epoch: int) -> float:
        """Relative error between expanded and collapsed eval logits on the first validation batch."""
        x, _ = next(iter(self.val_loader))
        modes = {m: m.training for m in expanded.modules()}
        expanded.eval()
        try:
            err = _rel_err(expanded(x).float(), plain.eval()(x).float())
        finally:
            for m, training in modes.items():
                m.training = training
        limit = 1e-4 if self.acc.mixed_precision == "no" else 5e-2
        if not math.isfinite(err):
            raise FloatingPointError(
                f"the evaluation after epoch {epoch} is not finite (the model's outputs): the training diverged; "
                f"{self._kept()} (lower --lr or set --clip-grad)"
            )
        if not err <= limit:
            raise RuntimeError(f"collapsed and expanded logits differ by {err:.3g} (relative; limit {limit})")
        return err

    # ------------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train, evaluate and checkpoint every epoch, export; returns the results record.

        A resumed run whose epochs are all done only redoes the end: exports and ``results.json``.
        """
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> dict[str, Any]:
        args, acc = self.args, self.acc
        if acc.is_main_process:
            write_text_atomic(self.folder / "args.yaml", yaml.safe_dump(vars(args), sort_keys=False))
            self._truncate_summary()
        if args.log_wandb:
            acc.init_trackers(
                args.wandb_project or "timm_overparam",
                config=vars(args),
                init_kwargs={
                    "wandb": {"name": self.folder.name, "tags": args.wandb_tags, "dir": str(self.folder)}
                },
            )
        self.log(f"{args.model} ({self.kind}): {self.folder}")
        if self.start_epoch >= self.epochs:  # every epoch done before: the end of the run again
            metrics = self.evaluate_all(self.epochs - 1)
        for epoch in range(self.start_epoch, self.epochs):
            start = time.perf_counter()
            train = self.train_epoch(epoch)
            metrics = self.evaluate_all(epoch)
            self.scheduler.step(epoch + 1, metrics[args.eval_metric])
            lr = self.optimizer.param_groups[0]["lr"]
            if acc.is_main_process:  # before the checkpoint: a resume drops rows of unsaved epochs
                summary = self.folder / "summary.csv"
                update_summary(epoch, train, metrics, summary, lr=lr, write_header=not summary.exists())
            state = TrainerState(
                args.model, epoch + 1, self.step, metrics[args.eval_metric], args.eval_metric
            )
            state.model_kwargs = dict(args.model_kwargs or {})
            self.checkpoints.save(state, self.ema.module if self.ema else None)
            acc.log(
                {"train_loss": train["loss"], "lr": lr, **{f"eval_{k}": v for k, v in metrics.items()}},
                step=epoch,
            )
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if "_" not in k)
            self.log(
                f"epoch {epoch}: train loss {train['loss']:.4f}, {shown} ({time.perf_counter() - start:.1f} s)"
            )
        best = read_state(self.folder / "best")
        results = self.finish(metrics, best.epoch - 1, best.metric)
        acc.end_training()
        return results

    def evaluate_all(self, epoch: int) -> dict[str, float]:
        """The training model's metrics (and the EMA's, as ``ema_*``); a non-finite one stops the run."""
        metrics, _ = self.evaluate(self.unwrapped, epoch)
        if self.ema is not None:
            points_result = self.points_result
            metrics |= {f"ema_{k}": v for k, v in self.evaluate(self.ema.module, epoch)[0].items()}
            self.points_result = points_result
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise FloatingPointError(
                f"the evaluation after epoch {epoch} is not finite ({bad[0]} = {metrics[bad[0]]}): the "
                f"training diverged; {self._kept()} (lower --lr or set --clip-grad)"
            )
        return metrics

    def _kept(self) -> str:
        """What a stopped run leaves: the last checkpoint, or none."""
        last = self.folder / "last"
        if last.is_symlink():
            return f"the last checkpoint {str(self.folder / os.readlink(last))!r} is untouched"
        return f"no checkpoint was written in {str(self.folder)!r}"

    def _truncate_summary(self) -> None:
        """Drop ``summary.csv`` rows of epochs after the checkpoint this run starts from (a resume)."""
        summary = self.folder / "summary.csv"
        if not summary.exists():
            return
        with open(summary, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < self.start_epoch]
        if len(kept) == len(rows):
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(summary, text.getvalue())

    def finish(
        self, metrics: dict[str, float], best_epoch: int | None, best_metric: float | None
    ) -> dict[str, Any]:
        """Exports and ``results.json``; for op models also the expanded model's accuracy."""
        model = self.unwrapped
        results: dict[str, Any] = {
            "model": self.args.model,
            "family": self.kind,
            "epochs": self.epochs,
            "eval_metric": self.args.eval_metric,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "final": metrics,
            "param_count": sum(p.numel() for p in model.parameters()),
        }
        exports = []
        if self.kind == "op":
            plain = collapse(model)
            expanded = _flat(evaluate_model(model, self.val_loader, self.acc.gather_for_metrics))
            results |= {
                "expanded": expanded,
                "param_count_collapsed": sum(p.numel() for p in plain.parameters()),
            }
            if self.acc.is_main_process:
                exports.append(save_weights(plain, self.folder / "collapsed.safetensors"))
            self.log(
                f"top-1: expanded {100 * expanded['top1']:.2f}%, collapsed {100 * metrics['top1']:.2f}%; "
                f"parameters: expanded {results['param_count']:,}, collapsed {results['param_count_collapsed']:,}"
            )
        elif self.kind == "subspace":
            res = self.points_result
            for i, p in enumerate(self.points):
                plain = extract_point(model, p, res.bn_stats[i] if res.bn_stats else None)  # as evaluated
                if self.acc.is_main_process:
                    exports.append(save_weights(plain, self.folder / f"point-{point_name(p)}.safetensors"))
            results["param_count_point"] = sum(p.numel() for p in plain.parameters())
        results["exports"] = [str(p) for p in exports]
        if self.acc.is_main_process:
            write_text_atomic(self.folder / "results.json", json.dumps(results, indent=2))
        self.acc.wait_for_everyone()
        return results

    def log(self, text: str) -> None:
        if self.acc.is_main_process:
            print(text, flush=True)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run train.py's job for parsed ``args``; returns the results record (also in ``results.json``).

    Example: ``train(parse_args(train_parser(), ["--model", "resnet18_op3", "--epochs", "2"]))``
    """
    return Trainer(args).run()
