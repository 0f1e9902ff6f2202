"""The job behind train.py: an accelerate loop with timm's optimizer, scheduler and EMA.

``train(TrainConfig(...))`` runs it. The loop reads top to bottom like accelerate's examples; what
differs between op, subspace and plain models (the loss, the evaluation every epoch, the exports)
is the family strategy's (``train/families.py``), and research instruments attach as callbacks
(``train/callbacks.py``; the research flags ``--pvar``, ``--dynamic-lr`` and ``--store-grad`` attach
those of ``timm_overparam.research.callbacks``). The task (``--task classification|regression``)
chooses the criterion (cross-entropy, or the p-loss ``PLoss``) and the metrics. Evaluation works on
copies of the unwrapped model. The experiment folder gets ``args.yaml`` (the config, readable by
``TrainConfig.from_yaml``), ``summary.csv``, ``results.json``, checkpoints (``last``, ``best``,
history) and the stock-timm export (``collapsed.safetensors`` or ``point-<p>.safetensors``; models
with ``block_weights()`` also ``blocks.safetensors``).
"""

from __future__ import annotations

import copy
import csv
import importlib
import io
import json
import math
import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import timm
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    broadcast,
    broadcast_object_list,
    set_seed,
)
from filelock import FileLock, Timeout
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, update_summary
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from tqdm import tqdm

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.core.weights import load_weights
from timm_overparam.eval.metrics import PLoss
from timm_overparam.train.callbacks import CallbackList
from timm_overparam.train.checkpoint import (
    Checkpoints,
    TrainerState,
    is_sharded,
    read_callbacks,
    read_state,
)
from timm_overparam.train.config import (
    TrainConfig,
    default_eval_metric,
    dynamo_plugin,
    load_callback,
    mixed_precision,
)
from timm_overparam.train.data import (
    DIGITS,
    DataInfo,
    TrainingView,
    data_config,
    describe,
    loader,
    open_dataset,
    tensor_data_config,
    transforms,
)
from timm_overparam.train.families import family_of
from timm_overparam.train.sharding import mark_blocks

DECREASING = ("loss", "ece", "mae")  # metrics where lower is better
RESEARCH_CALLBACKS = "timm_overparam.research.callbacks"  # the module of the research flags' callbacks
DIGITS_SIZE = 32  # the 8x8 digits are upsampled to this unless --img-size says otherwise


def create_model(args: Any, info: DataInfo) -> nn.Module:
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
    if info.task == "regression":
        if args.num_classes not in (None, info.outputs):
            raise ValueError(
                f"--num-classes {args.num_classes}: a regression model has one output per target dimension "
                f"({info.outputs} here); leave --num-classes out"
            )
        num_classes = info.outputs
    else:
        num_classes = args.num_classes or info.num_classes
    try:
        model = timm.create_model(
            args.model,
            pretrained=args.pretrained,
            num_classes=num_classes,  # timm's head size: the classes, or the regression outputs
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


def plain_sgd(opt: str, momentum: float) -> str:
    """timm's optimizer name for ``--opt``, with Nesterov SGD at momentum 0 as plain SGD.

    timm's ``sgd``/``nesterov`` set ``nesterov=True``, which torch refuses without momentum; at
    momentum 0 Nesterov's update is plain SGD, timm's ``momentum`` optimizer (seed 002's recipe
    is ``--opt sgd --momentum 0``).

    >>> plain_sgd("sgd", 0.0), plain_sgd("sgd", 0.9), plain_sgd("adamw", 0.0)
    ('momentum', 'sgd', 'adamw')
    """
    return "momentum" if momentum == 0 and opt.lower() in ("sgd", "nesterov") else opt


def check_pretrained_file(model: nn.Module, path: str) -> None:
    """Raise if the weights file ``path`` lacks tensors of ``model``'s stock form (its classifier aside).

    timm loads a pretrained file without ``strict`` when the classifier is reset, so a foreign file
    would otherwise leave the model at its random init with only a log line.

    Example: ``check_pretrained_file(timm.create_model("resnet18"), "resnet18.safetensors")``
    """
    stock = family_of(model, TrainConfig()).stock(model)
    classifier = stock.pretrained_cfg.get("classifier") or ()
    heads = {classifier} if isinstance(classifier, str) else set(classifier)
    found = set(timm.models.load_state_dict(path))
    missing = [k for k in stock.state_dict() if k not in found and k.rsplit(".", 1)[0] not in heads]
    if missing:
        raise KeyError(f"{len(missing)} tensors of the model are missing, e.g. {missing[:4]}")


def open_data(args: Any) -> tuple[Any, Any, DataInfo]:
    """Train and validation datasets (without transforms yet) and what the model needs of them
    (``describe``); the train set is a ``TrainingView`` with ``--train-fraction`` < 1 or
    ``--label-noise`` > 0. The data's task (regression for float targets) must be ``--task``."""
    options = dict(
        download=args.dataset_download,
        seed=args.seed,
        synthetic_samples=args.synthetic_samples,
        synthetic_c=args.synthetic_c,
    )
    train_set = open_dataset(args.dataset, args.data_dir, args.train_split, train=True, **options)
    info = describe(train_set)
    if info.task != args.task:
        if info.task == "regression":
            raise ValueError(f"dataset {args.dataset!r} has regression targets: add --task regression")
        raise ValueError(
            f"--task {args.task} needs float targets (synthetic/sin, synthetic/constant); dataset "
            f"{args.dataset!r} has classes: leave --task out (classification)"
        )
    if args.train_fraction < 1 or args.label_noise > 0:
        train_set = TrainingView(
            train_set, fraction=args.train_fraction, noise=args.label_noise, seed=args.seed
        )
    val_set = open_dataset(args.dataset, args.data_dir, args.val_split, train=False, **options)
    return train_set, val_set, info


def set_transforms(
    args: Any, model: nn.Module, train_set: Any, val_set: Any, augment: bool = True
) -> dict[str, Any]:
    """Give both datasets timm's transforms for ``model`` (the train set's without augmentation
    unless ``augment``); returns the data config used. Tensor data (``tensor_inputs``: the synthetic
    vectors) gets no transform; its config is ``tensor_data_config``."""
    if getattr(train_set, "tensor_inputs", False):
        return tensor_data_config(describe(train_set))
    if args.img_size is None and args.input_size is None and args.dataset == DIGITS:
        args.img_size = DIGITS_SIZE
    in_chans = args.in_chans or describe(train_set).in_chans
    config = data_config(model, args, in_chans)
    digits = args.dataset == DIGITS
    train_set.transform = transforms(config, args, train=augment, digits=digits)
    val_set.transform = transforms(config, args, train=False, digits=digits)
    return config


def make_criterion(config: Any) -> nn.Module:
    """The training criterion of ``config``: cross-entropy (label-smoothed with ``--smoothing``), or
    for ``--task regression`` the p-loss (``eval.metrics.PLoss``, ``--p-loss``); both are means over
    the samples of the batch.

    >>> make_criterion(TrainConfig(task="regression", p_loss=3))
    PLoss(p=3.0)
    """
    if config.task == "regression":
        return PLoss(config.p_loss)
    return LabelSmoothingCrossEntropy(config.smoothing) if config.smoothing else nn.CrossEntropyLoss()


def research_callbacks(config: Any) -> list[Any]:
    """The callbacks the research flags ask for, from ``timm_overparam.research.callbacks`` (imported
    only when a flag is set): ``PVariationLogger(p, every)`` for ``--pvar`` (``--pvar-every``),
    ``DynamicLR(p)`` for ``--dynamic-lr``, ``OmegaRecorder()`` for ``--store-grad``, in this order.

    >>> research_callbacks(TrainConfig())
    []
    """
    if config.pvar is None and not config.dynamic_lr and not config.store_grad:
        return []
    module = importlib.import_module(RESEARCH_CALLBACKS)
    callbacks: list[Any] = []
    if config.pvar is not None:
        callbacks.append(module.PVariationLogger(p=config.pvar, every=config.pvar_every))
    if config.dynamic_lr:
        callbacks.append(module.DynamicLR(p=config.pvar))
    if config.store_grad:
        callbacks.append(module.OmegaRecorder())
    return callbacks


class Trainer:
    """One training run (see the module docstring); ``run()`` does it all.

    What callbacks see as ``run``: ``config``, ``acc`` (the Accelerator), ``unwrapped`` (the model),
    ``optimizer``, ``family``, ``epoch``, ``step`` (optimizer updates done), ``folder``,
    ``callbacks`` (the run's ``CallbackList``: one callback can read another's results),
    ``is_main_process`` and ``log(metrics)``.

    For callbacks that need the gradient of the loss with respect to the model's outputs (Omega(t),
    ``--store-grad``) the protocol has no loss hook: such a callback registers a forward hook on
    ``run.unwrapped`` in ``on_run_start`` and, on an output that requires grad, a tensor hook
    (``output.register_hook``). Evaluation runs under ``torch.no_grad()`` on copies of the model
    (which carry the forward hooks), so the hook must skip outputs with ``requires_grad`` False.
    ``research.callbacks.OmegaRecorder`` is such a callback: it turns what the hook sees into
    per-sample gradients itself (batch mean, ``--num-samples`` chunks, ``--grad-accum-steps`` and
    float16 ``--amp``'s loss scale undone).

    Example: ``Trainer(TrainConfig(model="resnet18_op3", epochs=1)).run()``
    """

    def __init__(self, config: TrainConfig) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer takes a TrainConfig, got a {type(config).__name__}")
        cfg = self.config = config.replace()  # a checked copy: the run may fill in defaults (img_size)
        cfg.eval_metric = default_eval_metric(cfg)  # top1, or loss for regression, unless given
        self.callbacks = CallbackList(
            [load_callback(c) if isinstance(c, str) else c for c in cfg.callbacks] + research_callbacks(cfg)
        )
        self.acc = Accelerator(
            mixed_precision=mixed_precision(cfg),
            gradient_accumulation_steps=cfg.grad_accum_steps,
            log_with="wandb" if cfg.log_wandb else None,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            step_scheduler_with_optimizer=False,
            dynamo_plugin=dynamo_plugin(cfg),
            # several points per batch are several forwards before one backward: DDP's buffer
            # broadcast at each forward rewrote BatchNorm statistics the first forward's graph saved
            # (torch 2.4: "modified by an inplace operation"). Training uses batch statistics, and
            # every process takes the main process's buffers before evaluating and saving.
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=cfg.num_samples == 1)],
        )
        set_seed(cfg.seed)
        train_set, val_set, info = open_data(cfg)
        num_classes = cfg.num_classes or info.num_classes
        if cfg.task == "classification" and num_classes < 2:
            raise ValueError(
                f"the training data has {num_classes} class: classification needs at least 2 "
                f"(check --data-dir and --train-split, or pass --num-classes)"
            )
        model = create_model(cfg, info)
        if cfg.pvar is not None and not callable(getattr(model, "block_weights", None)):
            raise ValueError(
                f"--pvar follows the path of a model's residual block weights: {cfg.model!r} has no "
                f"block_weights() (use depth_limit_resnet, or a model that defines it)"
            )
        if cfg.initial_checkpoint:
            load_weights(model, cfg.initial_checkpoint)
        self.family = family_of(model, cfg)
        self.replica = self._check_sharding(model)
        self.data_config = set_transforms(cfg, model, train_set, val_set)
        self.train_set = train_set
        eval_batch = cfg.validation_batch_size or cfg.batch_size
        train_loader = loader(
            train_set, cfg.batch_size, shuffle=True, workers=cfg.workers, seed=cfg.seed, drop_last=True
        )
        val_loader = loader(val_set, eval_batch, shuffle=False, workers=cfg.workers, seed=cfg.seed)
        if len(train_loader) == 0:
            raise ValueError(
                f"the training set has {len(train_set)} samples, fewer than one batch "
                f"(-b {cfg.batch_size}); lower -b"
            )
        opt_kwargs = {k: v for k, v in (("eps", cfg.opt_eps), ("betas", cfg.opt_betas)) if v is not None}
        optimizer = create_optimizer_v2(
            model,
            plain_sgd(cfg.opt, cfg.momentum),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            **opt_kwargs,
        )
        self.model, self.optimizer, self.train_loader, self.val_loader = self.acc.prepare(
            model, optimizer, train_loader, val_loader
        )
        self.scheduler, self.epochs = create_scheduler_v2(
            optimizer,
            sched=cfg.sched,
            num_epochs=cfg.epochs,
            decay_epochs=cfg.decay_epochs,
            decay_rate=cfg.decay_rate,
            cooldown_epochs=cfg.cooldown_epochs,
            min_lr=cfg.min_lr,
            warmup_lr=cfg.warmup_lr,
            warmup_epochs=cfg.warmup_epochs,
            step_on_epochs=not cfg.sched_on_updates,
            updates_per_epoch=math.ceil(len(self.train_loader) / cfg.grad_accum_steps),
        )
        self.ema = ModelEmaV3(self.unwrapped, decay=cfg.model_ema_decay) if cfg.model_ema else None
        self.criterion = make_criterion(cfg)
        names = self.metric_names()
        if cfg.eval_metric not in names:
            raise ValueError(f"--eval-metric {cfg.eval_metric!r} is not one of {names}")
        self.start_epoch, self.step, self.epoch = 0, 0, 0
        self.detail: Any = None  # what the family's export needs of the latest evaluation
        decreasing = cfg.eval_metric.split("_")[-1] in DECREASING
        if cfg.resume:
            state = Checkpoints(self.acc, Path(cfg.resume).parent, decreasing, cfg.checkpoint_hist).load(
                cfg.resume, self.model, cfg.model, self.ema.module if self.ema else None, self.replica
            )
            self.callbacks.load(read_callbacks(cfg.resume), repr(str(cfg.resume)))
            self.start_epoch, self.step = state.epoch, state.step
            if self.start_epoch and self.scheduler is not None:
                self.scheduler.step(self.start_epoch)
        self.folder, self.lock = self._claim_folder()  # last: nothing below can fail
        self.checkpoints = Checkpoints(self.acc, self.folder, decreasing, cfg.checkpoint_hist)

    @property
    def unwrapped(self) -> nn.Module:
        return self.acc.unwrap_model(self.model, keep_torch_compile=False)

    def full_model(self) -> nn.Module:
        """The model with whole parameters that every process evaluates and the exports are made of:
        ``unwrapped``, or under FSDP2 the run's replica loaded with the gathered full state. With
        several processes the training model's buffers (BatchNorm statistics, which data parallelism
        keeps per process) are set to the main process's first, as DDP does before each forward, so
        that every process evaluates one model and a sharded checkpoint (which saves replicated
        tensors from any one process) holds the main process's. A collective call.

        Example: ``metrics = run.family.evaluate(run, run.full_model(), epoch)``
        """
        model = self.main_buffers(self.unwrapped)  # also what a sharded checkpoint saves of them
        if self.replica is not None:
            options = StateDictOptions(full_state_dict=True, cpu_offload=False)
            self.replica.load_state_dict(get_model_state_dict(model, options=options))
            model = self.replica
        return model

    def main_buffers(self, model: nn.Module) -> nn.Module:
        """``model`` with the main process's buffers on every process (a collective call)."""
        if self.acc.num_processes > 1:
            broadcast(list(model.buffers()), from_process=0)
        return model

    def _check_sharding(self, model: nn.Module) -> nn.Module | None:
        """Refuse FSDP1, and under DeepSpeed what ``_check_deepspeed`` refuses. Under FSDP2: refuse
        what needs whole parameters at every step; return the evaluation replica (an unsharded copy
        of ``model``, made before accelerate shards it) after naming the model's blocks as its FSDP2
        units (``sharding.mark_blocks``). Else None."""
        cfg, acc = self.config, self.acc
        if acc.distributed_type == DistributedType.DEEPSPEED:
            self._check_deepspeed()
            return None
        if acc.distributed_type == DistributedType.FSDP and not is_sharded(acc):
            raise ValueError(
                "FSDP1 is not supported: set fsdp_version: 2 in the accelerate config (or --fsdp_version 2; "
                "accelerate >= 1.6 and torch >= 2.6), as configs/accelerate/fsdp2.yaml does"
            )
        if not is_sharded(acc):
            return None
        plugin = acc.state.fsdp_plugin
        if plugin.state_dict_type.name != "SHARDED_STATE_DICT":
            raise ValueError(
                f"fsdp_state_dict_type {plugin.state_dict_type.name}: train.py checkpoints FSDP2 runs sharded; "
                "set fsdp_state_dict_type: SHARDED_STATE_DICT (the full weights are written beside the shards)"
            )
        research = cfg.pvar is not None or cfg.dynamic_lr or cfg.store_grad
        refused = [
            f
            for f, on in (("--model-ema", cfg.model_ema), ("--pvar/--dynamic-lr/--store-grad", research))
            if on
        ]
        if refused:
            raise ValueError(
                f"{' and '.join(refused)} read whole parameters at every step, which FSDP2 shards: train "
                "with DDP (configs/accelerate/ddp.yaml) or leave them out"
            )
        mark_blocks(model)  # the FSDP2 units of accelerate's TRANSFORMER_BASED_WRAP policy
        return copy.deepcopy(model)

    def _check_deepspeed(self) -> None:
        """DeepSpeed ZeRO stages 1 and 2 (whole parameters on every process): refuse ZeRO-3, 16-bit
        weights and what needs whole gradients or the optimizer's own step; take gradient clipping
        and accumulation from train.py's flags (accelerate would clip at 1.0 by default)."""
        cfg, config = self.config, self.acc.state.deepspeed_plugin.deepspeed_config
        stage = config.get("zero_optimization", {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ValueError(
                f"DeepSpeed ZeRO stage {stage}: train.py runs ZeRO stages 1 and 2; to shard the parameters "
                "too, use FSDP2: accelerate launch --config_file configs/accelerate/fsdp2.yaml"
            )
        sixteen = [k for k in ("fp16", "bf16") if str(config.get(k, {}).get("enabled")).lower() == "true"]
        if cfg.amp or sixteen:
            what = "--amp" if cfg.amp else f"the DeepSpeed config's {sixteen[0]}"
            raise ValueError(
                f"{what} under DeepSpeed: DeepSpeed's bf16/fp16 keep the model's weights (the factors and "
                "vertices) in 16 bits, not autocast over float32 weights as train.py's --amp does: train "
                "in float32, or use DDP/FSDP2 with --amp (configs/accelerate/ddp.yaml, fsdp2.yaml)"
            )
        research = cfg.pvar is not None or cfg.dynamic_lr or cfg.store_grad
        hooks = self.callbacks.step_hooked()
        if research or hooks:
            what = "--pvar/--dynamic-lr/--store-grad" if research else f"the callbacks {hooks}"
            raise ValueError(
                f"{what} read gradients and weights at each optimizer step, which DeepSpeed's ZeRO "
                "optimizer keeps in its own partitions: train with DDP (configs/accelerate/ddp.yaml) "
                "or leave them out"
            )
        for key, flag, wanted in (
            ("gradient_clipping", "--clip-grad", float(cfg.clip_grad or 0.0)),
            ("gradient_accumulation_steps", "--grad-accum-steps", cfg.grad_accum_steps),
        ):
            value = config.get(key, "auto")
            if value == "auto":
                config[key] = wanted
            elif value != wanted:
                raise ValueError(
                    f"the DeepSpeed config's {key} is {value}, train.py's {flag} {wanted}: set it to "
                    f"auto (train.py's flag decides) or pass {flag} {value}"
                )

    @property
    def is_main_process(self) -> bool:
        return self.acc.is_main_process

    def metric_names(self) -> list[str]:
        """The metrics every evaluation of this run reports (the choices of ``--eval-metric``)."""
        names = self.family.metric_names()
        return names + [f"ema_{n}" for n in names] if self.ema is not None else names

    def _claim_folder(self) -> tuple[Path, FileLock | None]:
        """The experiment folder, created (main process) and locked for this run.

        A run never writes into a folder that holds another run: a new run needs a new or empty
        folder (a default name gets a ``-2``, ``-3``... suffix if taken), a resumed run continues
        its own. The lock (``.lock``, released by the OS if the process dies) keeps two live runs out
        of one folder. Every process gets the main process's folder, or its error.
        """
        args = self.config
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
        args = self.config
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
        stem = f"{datetime.now():%Y%m%d-%H%M%S}-{args.model}-{self.data_config['input_size'][-1]}"
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
        """One pass over the training data; returns the mean ``loss`` over every process and
        ``step_time``, this process's wall seconds of the pass per optimizer update."""
        cfg, acc, model = self.config, self.acc, self.model
        model.train()
        self.epoch = epoch
        self.train_loader.set_epoch(epoch)
        total, count = torch.zeros((), device=acc.device), 0
        bar = tqdm(
            self.train_loader, desc=f"epoch {epoch}", disable=not acc.is_local_main_process, leave=False
        )
        start, steps = time.perf_counter(), self.step
        for i, (x, y) in enumerate(bar):
            with acc.accumulate(model):
                loss = self.family.loss(self, model, x, y)
                if not acc.gather(torch.isfinite(loss.detach()).reshape(1)).all():
                    raise FloatingPointError(
                        f"the loss is {loss.item()} at epoch {epoch}, batch {i}: training stopped; "
                        f"{self.kept()} (lower --lr or set --clip-grad)"
                    )
                acc.backward(loss)
                if cfg.clip_grad and acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                self.optimizer.step()  # callbacks' step hooks fire here, on real updates only
                self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.step += 1
                if self.scheduler is not None:  # --sched none: the lr is left alone (or to a callback)
                    self.scheduler.step_update(self.step)
                if self.ema is not None:
                    self.ema.update(self.unwrapped, step=self.step)
            total += loss.detach() * len(x)
            count += len(x)
            if i % cfg.log_interval == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}")
        seconds = time.perf_counter() - start  # at least one update: accelerate syncs at the loader's end
        loss_sum = acc.reduce(torch.stack([total, torch.tensor(float(count), device=acc.device)]), "sum")
        return {"loss": (loss_sum[0] / loss_sum[1]).item(), "step_time": seconds / (self.step - steps)}

    # ---------------------------------------------------------------------------------- evaluation
    def bn_loader(self, epoch: int) -> Iterable:
        """Training batches for BatchNorm recalibration: the same on every process and after a resume."""
        return loader(
            self.train_set, self.config.batch_size, shuffle=True, workers=0, seed=self.config.seed + epoch
        )

    def evaluate(self, model: nn.Module, epoch: int) -> tuple[dict[str, float], Any]:
        """Metrics of ``model`` (unwrapped; never changed) as its family evaluates it."""
        return self.family.evaluate(self, model, epoch)

    def evaluate_all(self, epoch: int) -> dict[str, float]:
        """The training model's metrics (and the EMA's, as ``ema_*``); a non-finite one stops the run."""
        metrics, self.detail = self.evaluate(self.full_model(), epoch)
        if self.ema is not None:
            ema = self.main_buffers(self.ema.module)
            metrics |= {f"ema_{k}": v for k, v in self.evaluate(ema, epoch)[0].items()}
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        if bad:
            raise FloatingPointError(
                f"the evaluation after epoch {epoch} is not finite ({bad[0]} = {metrics[bad[0]]}): the "
                f"training diverged; {self.kept()} (lower --lr or set --clip-grad)"
            )
        return metrics

    # ------------------------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train, evaluate and checkpoint every epoch, export; returns the results record.

        A resumed run whose epochs are all done only redoes the end: exports and ``results.json``.
        """
        try:
            return self._run()
        finally:
            self.callbacks.detach()
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> dict[str, Any]:
        cfg, acc = self.config, self.acc
        if acc.is_main_process:
            write_text_atomic(self.folder / "args.yaml", cfg.to_yaml())
            self._truncate_summary()
        if cfg.log_wandb:
            acc.init_trackers(
                cfg.wandb_project or os.environ.get("WANDB_PROJECT") or "timm_overparam",
                config=cfg.to_dict(),
                init_kwargs={
                    "wandb": {"name": self.folder.name, "tags": cfg.wandb_tags, "dir": str(self.folder)}
                },
            )
        self.say(f"{cfg.model} ({self.family.name}): {self.folder}")
        self.callbacks.attach(self.optimizer.optimizer, self)  # torch's optimizer inside accelerate's
        self.callbacks.call("on_run_start", self)
        if self.start_epoch >= self.epochs:  # every epoch done before: the end of the run again
            metrics = self.evaluate_all(self.epochs - 1)
        for epoch in range(self.start_epoch, self.epochs):
            start = time.perf_counter()
            train = self.train_epoch(epoch)
            metrics = self.evaluate_all(epoch)
            if self.scheduler is not None:
                self.scheduler.step(epoch + 1, metrics[cfg.eval_metric])
            lr = self.optimizer.param_groups[0]["lr"]
            if acc.is_main_process:  # before the checkpoint: a resume drops rows of unsaved epochs
                summary = self.folder / "summary.csv"
                update_summary(epoch, train, metrics, summary, lr=lr, write_header=not summary.exists())
            self.callbacks.call("on_epoch_end", self, epoch, metrics)
            state = TrainerState(cfg.model, epoch + 1, self.step, metrics[cfg.eval_metric], cfg.eval_metric)
            state.model_kwargs = dict(cfg.model_kwargs)
            # under FSDP2 the replica holds this epoch's whole weights since evaluate_all: not gathered again
            self.checkpoints.save(
                state, self.ema.module if self.ema else None, self.callbacks.state(), self.replica
            )
            acc.log(
                {
                    **{f"train_{k}": v for k, v in train.items()},
                    "lr": lr,
                    **{f"eval_{k}": v for k, v in metrics.items()},
                    "epoch": epoch,
                },
                step=self.step,  # one axis with what callbacks log per update: optimizer updates
            )
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if "_" not in k)
            self.say(
                f"epoch {epoch}: train loss {train['loss']:.4f}, {shown} ({time.perf_counter() - start:.1f} s)"
            )
        best = read_state(self.folder / "best")
        results = self.finish(metrics, best.epoch - 1, best.metric)
        self.callbacks.call("on_run_end", self, results)
        acc.end_training()
        return results

    def finish(
        self, metrics: dict[str, float], best_epoch: int | None, best_metric: float | None
    ) -> dict[str, Any]:
        """The family's exports and ``results.json``; returns the results record."""
        model = self.full_model()
        results: dict[str, Any] = {
            "model": self.config.model,
            "family": self.family.name,
            "epochs": self.epochs,
            "eval_metric": self.config.eval_metric,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "final": metrics,
            "param_count": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": self.seconds_per_step(),
            "reliability": self.family.reliability(self.detail),
        }
        results |= self.family.export(self, model, metrics, self.detail)
        results["exports"] = [str(p) for p in results["exports"]]
        if self.acc.is_main_process:
            write_text_atomic(self.folder / "results.json", json.dumps(results, indent=2))
        self.acc.wait_for_everyone()
        return results

    def seconds_per_step(self) -> float:
        """The mean ``train_step_time`` over the rows of ``summary.csv`` (every epoch of the run, those
        before a resume included), read by the main process and sent to every process."""
        answer: list[Any] = [None]
        if self.acc.is_main_process:
            with open(self.folder / "summary.csv", newline="") as f:
                times = [float(row["train_step_time"]) for row in csv.DictReader(f)]
            answer[0] = sum(times) / len(times)
        broadcast_object_list(answer)
        return answer[0]

    # ------------------------------------------------------------------------------- messages
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log ``metrics`` to the run's trackers (wandb) from the main process, at ``step`` (default:
        the optimizer updates done, the axis of every log of a run: the epoch metrics are logged at
        the epoch's last update with an ``epoch`` key). Without trackers it does nothing.

        Example: ``run.log({"weight_norm": 12.5})``
        """
        self.acc.log(metrics, step=self.step if step is None else step)

    def say(self, text: str) -> None:
        """Print ``text`` on the main process."""
        if self.acc.is_main_process:
            print(text, flush=True)

    def kept(self) -> str:
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


def train(config: TrainConfig) -> dict[str, Any]:
    """Run train.py's job for ``config``; returns the results record (also in ``results.json``).

    Example: ``train(TrainConfig(model="resnet18_op3", epochs=2))``
    """
    return Trainer(config).run()
