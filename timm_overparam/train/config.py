"""The typed run configs behind train.py and validate.py: one object for the CLI, YAML files and Python.

``TrainConfig`` (train.py) and ``ValidateConfig`` (validate.py) carry every flag. Their values
live in small dataclass groups (``data``, ``eval``, ``family``, ``optim``, ``schedule``,
``augment``, ``logging``) next to a few top-level fields (``model``, ``seed``, ``amp``...), but
every key is also a flat keyword and attribute, named like its flag with underscores::

    cfg = TrainConfig(model="resnet18_op3", epochs=3, batch_size=64)   # cfg.data.batch_size == 64
    cfg = TrainConfig.from_yaml("configs/cifar10_resnet18_op3.yaml", epochs=5)
    cfg.to_yaml("run.yaml"); TrainConfig.from_yaml("run.yaml") == cfg   # what args.yaml holds

A config checks itself when it is built (and on ``check()``): an unknown key, a value of the wrong
type, a choice not offered, a non-finite number or a count below 1 is a ``ConfigError`` naming
the key, the value and the valid choices. The command line (``train/cli.py``) builds its flags
from these fields; nothing here imports argparse.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import yaml

from timm_overparam.core.yaml_file import read_yaml_file

DIGITS = "sklearn/digits"  # the embedded dataset (see train/data.py)
SYNTHETIC = ("synthetic/sin", "synthetic/constant")  # regression data of seed 002 (research/synthetic.py)
TASKS = ("classification", "regression")
DEFAULT_EVAL_METRIC = {"classification": "top1", "regression": "loss"}  # without --eval-metric
ParsedPoint = float | tuple[float, ...]  # a point as the command line gives it


class ConfigError(ValueError):
    """A bad key or value of a run config; the message names the key, the value and the fix."""


def option(
    default: Any = None,
    help: str = "",
    *,
    kind: str | None = None,
    flags: tuple[str, ...] = (),
    choices: tuple[Any, ...] | None = None,
    nargs: int | str | None = None,
    minimum: int | None = None,
    negatable: bool = False,
    metavar: str | None = None,
    const: Any = None,
) -> Any:
    """A config field with what its flag needs: ``kind`` (int, float, str, bool, kwargs,
    callbacks; default: the default's type), ``nargs`` for lists (``"?"`` with ``const``: the
    value of the bare flag), ``choices``, ``minimum``.

    Example: ``epochs: int = option(10, "epochs to train", minimum=1)``
    """
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(default)]
    meta = dict(
        help=help,
        kind=kind,
        flags=flags,
        choices=choices,
        nargs=nargs,
        minimum=minimum,
        negatable=negatable,
        metavar=metavar,
        const=const,
    )
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------- values
def parse_points(text: str | None) -> list[ParsedPoint]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``; simplex points as colon-separated coordinates.

    >>> parse_points("0,0.5,1"), parse_points("0.2:0.8")
    ([0.0, 0.5, 1.0], [(0.2, 0.8)])
    """
    if not text:
        return []
    points: list[ParsedPoint] = []
    for item in text.split(","):
        try:
            parts = [float(t) for t in item.split(":")]
        except ValueError:
            raise ValueError(
                f"bad point {item!r}: use a number in [0, 1] or coordinates like 0.2:0.3:0.5"
            ) from None
        points.append(parts[0] if len(parts) == 1 else tuple(parts))
    return points


def parse_ensembles(text: str | None) -> list[list[ParsedPoint]]:
    """``"0+1,0+0.5+1"`` -> ``[[0.0, 1.0], [0.0, 0.5, 1.0]]`` (members joined by ``+``).

    >>> parse_ensembles("0+1")
    [[0.0, 1.0]]
    """
    if not text:
        return []
    return [parse_points(group.replace("+", ",")) for group in text.split(",")]


def mixed_precision(config: Any) -> str:
    """accelerate's ``mixed_precision`` for ``amp``/``amp_dtype``.

    >>> mixed_precision(TrainConfig(amp=True, amp_dtype="bfloat16"))
    'bf16'
    """
    return {"float16": "fp16", "bfloat16": "bf16"}[config.amp_dtype] if config.amp else "no"


_CALLBACK_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_HOOKS = ("on_run_start", "on_before_step", "on_after_step", "on_epoch_end", "on_run_end")


def dynamo_plugin(config: Any) -> Any:
    """accelerate's ``TorchDynamoPlugin`` for ``torchcompile``/``torchcompile_mode`` (None: eager).

    A backend that neither torch nor accelerate knows is an error listing the ones both do.

    >>> dynamo_plugin(TrainConfig()) is None
    True
    """
    if not config.torchcompile:
        return None
    import torch._dynamo
    from accelerate.utils import DynamoBackend, TorchDynamoPlugin

    known = {b.value.lower() for b in DynamoBackend} & set(torch._dynamo.list_backends(exclude_tags=()))
    if config.torchcompile.lower() not in known:
        raise ConfigError(
            f"--torchcompile {config.torchcompile!r} is not a torch.compile backend accelerate can use; "
            f"choose one of {sorted(known)}"
        )
    return TorchDynamoPlugin(backend=config.torchcompile.upper(), mode=config.torchcompile_mode)


def load_callback(name: str) -> Any:
    """An instance of the callback class ``module:Class`` (built without arguments).

    >>> type(load_callback("timm_overparam.train.callbacks:NormRecorder")).__name__
    'NormRecorder'
    """
    module, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"callbacks: cannot import {name!r} ({e}): give an importable module:Class"
        ) from None
    return obj()


def callback_name(callback: Any) -> str:
    """The ``module:Class`` name of a callback (as given, or of its class).

    >>> callback_name("mod:Cls"), callback_name(NotImplemented)
    ('mod:Cls', 'builtins:NotImplementedType')
    """
    if isinstance(callback, str):
        return callback
    return f"{type(callback).__module__}:{type(callback).__qualname__}"


def check_value(key: str, value: Any, meta: dict[str, Any], where: str, default: Any = None) -> Any:
    """``value`` for the field ``key`` checked (type, list length, choices, finite, minimum) and
    normalised (ints as floats, tuples as lists); errors begin with ``where``.

    >>> check_value("lr", 1, dict(kind="float", nargs=None, choices=None, minimum=None), "lr")
    1.0
    """
    kind, nargs = meta["kind"], meta["nargs"]
    if value is None and (default is None or kind == "callbacks"):
        return [] if kind == "callbacks" else None
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind == "kwargs":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where} must be a mapping of keyword names to values, got {value!r}")
        return dict(value)
    if kind == "callbacks":
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not _CALLBACK_NAME.fullmatch(item):
                    raise ConfigError(f"{where}: {item!r} is not module:Class (e.g. mylab.probes:WeightPath)")
                load_callback(item)  # an import error now, not after the data is loaded
            elif not any(callable(getattr(item, h, None)) for h in _HOOKS):
                raise ConfigError(
                    f"{where}[{i}]: {item!r} is not a callback (an object with on_* methods, see "
                    f"timm_overparam.train.callbacks.Callback, or a 'module:Class' name)"
                )
        return items
    many = nargs not in (None, "?")
    if many and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    items = list(value) if many else [value]
    if isinstance(nargs, int) and len(items) != nargs:
        raise ConfigError(f"{where} must be a list of {nargs} values, got {value!r}")
    checked = []
    for item in items:
        if kind == "int" and (isinstance(item, bool) or not isinstance(item, int)):
            raise ConfigError(f"{where} must be an integer, got {item!r}")
        if kind == "float":
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(f"{where} must be a number, got {item!r}")
            item = float(item)
            if not math.isfinite(item):
                raise ConfigError(f"{where} must be a finite number, got {item!r}")
        if kind == "str" and not isinstance(item, str):
            raise ConfigError(f"{where} must be text, got {item!r}")
        if meta["choices"] is not None and item not in meta["choices"]:
            raise ConfigError(f"{where} must be one of {list(meta['choices'])}, got {item!r}")
        if meta["minimum"] is not None and item < meta["minimum"]:
            raise ConfigError(f"{where} must be >= {meta['minimum']}, got {item!r}")
        checked.append(item)
    return checked if many else checked[0]


def flag_name(key: str) -> str:
    """The command-line flag of a config key.

    >>> flag_name("batch_size")
    '--batch-size'
    """
    return f"--{key.replace('_', '-')}"


# -------------------------------------------------------------------------------------- groups
@dataclass
class DataConfig:
    """Dataset, input size and loaders (train.py and validate.py)."""

    data_dir: str | None = option(None, "path to the dataset", kind="str")
    dataset: str | None = option(
        None,
        f"{DIGITS!r} (embedded, the default without a data dir), '' or 'folder' for an image folder "
        "(the default with one), a timm name: torch/cifar10, torch/mnist, hfds/<id>, ..., or a synthetic "
        "regression set (with --task regression): synthetic/sin, synthetic/constant",
        kind="str",
    )
    train_split: str = option("train", "training split")
    val_split: str = option("validation", "validation split")
    dataset_download: bool = option(False, "download torch/ datasets if missing")
    num_classes: int | None = option(None, "classes (default: the dataset's)", kind="int", minimum=1)
    in_chans: int | None = option(None, "image channels (default: the dataset's)", kind="int", minimum=1)
    img_size: int | None = option(None, "input image size (default: the model's)", kind="int", minimum=1)
    input_size: list[int] | None = option(  # noqa: RUF009
        None, "C H W, overrides", kind="int", nargs=3, metavar="N", minimum=1
    )
    crop_pct: float | None = option(None, "eval center crop fraction", kind="float")
    mean: list[float] | None = option(None, "pixel mean", kind="float", nargs="+", metavar="MEAN")  # noqa: RUF009
    std: list[float] | None = option(None, "pixel std", kind="float", nargs="+", metavar="STD")  # noqa: RUF009
    interpolation: str = option("", "resize interpolation (default: the model's)")
    batch_size: int = option(64, "batch size per process", flags=("-b", "--batch-size"), minimum=1)
    validation_batch_size: int | None = option(
        None, "eval batch size", kind="int", flags=("-vb", "--validation-batch-size"), minimum=1
    )
    workers: int = option(0, "data loading processes per process", flags=("-j", "--workers"), minimum=0)
    train_fraction: float = option(
        1.0,
        "keep this fraction of the training split, in (0, 1]: a class-stratified subset drawn with --seed",
    )
    label_noise: float = option(
        0.0, "fraction in [0, 1) of training labels (the first ones) replaced by uniform random labels"
    )
    synthetic_samples: int = option(
        100_000,
        "synthetic/ datasets: samples drawn with --seed, split 90/10 into train/validation",
        minimum=10,
    )
    synthetic_c: float | None = option(
        None,
        "synthetic/ datasets: c (sin: separability, K = e^(-4c)/(8N), default 0.01; constant: the target, "
        "default 0.1)",
        kind="float",
    )


@dataclass
class EvalConfig:
    """What every evaluation adds (the embeddings' effective rank), and for subspace models which points
    and ensembles are evaluated, with their BatchNorm recalibration."""

    eval_points: str | None = option(
        None, "subspace points to evaluate: 0,0.5,1 (simplex: 1:0:0,0.5:0.5:0)", kind="str"
    )
    eval_ensembles: str | None = option(None, "ensembles of evaluated points: 0+1,0+0.5+1", kind="str")
    ensemble_average: str = option("logits", "what ensembles average", choices=("logits", "probs"))
    bn_recal_batches: int = option(50, "training batches to recalibrate BatchNorm per point", minimum=1)
    log_rank: bool = option(
        False, "add the effective rank of the validation embeddings to every evaluation (erank, rank_entropy)"
    )


@dataclass
class ObjectiveConfig:
    """The task: its loss and its metrics (train.py and validate.py)."""

    task: str = option(
        "classification",
        "classification (cross-entropy; top1, top5, loss, ece, precision, recall) or regression "
        "(p-loss; loss, mae)",
        choices=TASKS,
    )
    p_loss: float = option(
        2.0, "regression: the loss is the mean over samples of |y - yhat|_p^p with this p (>= 1)", minimum=1
    )


@dataclass
class ResearchConfig:
    """Research instruments of the depth-limit study (seed 002), attached as callbacks of
    ``timm_overparam.research.callbacks`` (a model with ``block_weights()``)."""

    pvar: float | None = option(
        None,
        "log the p-, p/2- and 3p/4-variation of the path of the block weights (p >= 2): PVariationLogger",
        kind="float",
        metavar="P",
    )
    pvar_every: int = option(1, "with --pvar: every N optimizer updates", minimum=1, metavar="N")
    dynamic_lr: bool = option(
        False, "learning rate C * lr / pvar^2 at each epoch end (DynamicLR; needs --pvar and --sched none)"
    )
    store_grad: bool = option(
        False, "log Omega(t), the mean over samples of |d loss / d yhat_i|^2, every update (OmegaRecorder)"
    )


@dataclass
class FamilyConfig:
    """Training options of the subspace family (line, curve, simplex models)."""

    subspace_beta: float = option(1.0, "weight of subspace_regularizer")
    layerwise: bool = option(False, "sample one point per module")
    num_samples: int = option(1, "points per batch (batch split in chunks)", minimum=1)


@dataclass
class OptimConfig:
    """timm's ``create_optimizer_v2`` and gradient clipping."""

    opt: str = option("sgd", "optimizer name")
    opt_eps: float | None = option(None, "optimizer epsilon", kind="float")
    opt_betas: list[float] | None = option(None, "optimizer betas", kind="float", nargs="+")  # noqa: RUF009
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(2e-5, "weight decay")
    clip_grad: float | None = option(None, "clip gradient norm at this value", kind="float")
    lr: float = option(0.05, "learning rate")


@dataclass
class ScheduleConfig:
    """timm's ``create_scheduler_v2``."""

    sched: str = option(
        "cosine", "cosine, step, multistep, plateau, tanh, poly, constant, or none (the lr is left alone)"
    )
    epochs: int = option(10, "epochs to train", minimum=1)
    warmup_epochs: int = option(1, "linear warm-up epochs", minimum=0)
    warmup_lr: float = option(1e-5, "warm-up start learning rate")
    min_lr: float = option(0.0, "lower bound of cyclic schedules")
    decay_epochs: float = option(90.0, "epoch interval of step decay")
    decay_rate: float = option(0.1, "step decay factor")
    cooldown_epochs: int = option(0, "epochs at min-lr after the schedule", minimum=0)
    sched_on_updates: bool = option(
        True,
        "step the schedule every optimizer update (warm-up included) rather than every epoch",
        negatable=True,
    )


@dataclass
class AugmentConfig:
    """Training augmentation (timm's ``create_transform``; the embedded digits get none) and the loss."""

    no_aug: bool = option(False, "no training augmentation")
    scale: list[float] = option([0.08, 1.0], "random-resized-crop scale", kind="float", nargs=2)  # noqa: RUF009
    ratio: list[float] = option([3 / 4, 4 / 3], "crop aspect ratio", kind="float", nargs=2)  # noqa: RUF009
    hflip: float = option(0.5, "horizontal flip probability")
    vflip: float = option(0.0, "vertical flip probability")
    color_jitter: float = option(0.4, "color jitter factor")
    aa: str | None = option(None, "auto-augment policy, e.g. rand-m9-mstd0.5", kind="str")
    reprob: float = option(0.0, "random erase probability")
    smoothing: float = option(0.1, "label smoothing")


@dataclass
class LoggingConfig:
    """Where the run writes, what it prints and logs, and which metric picks ``best``."""

    log_interval: int = option(50, "batches between progress updates", minimum=1)
    checkpoint_hist: int = option(2, "best checkpoints to keep", minimum=1)
    output: str = option("output/train", "folder of experiment folders")
    experiment: str = option("", "experiment folder name (default: date-model-size)")
    eval_metric: str | None = option(
        None, "metric that picks 'best' (default: top1 for classification, loss for regression)", kind="str"
    )
    log_wandb: bool = option(False, "log to wandb through accelerate's trackers")
    wandb_project: str | None = option(
        None, "wandb project (default: $WANDB_PROJECT, else timm_overparam)", kind="str"
    )
    wandb_tags: list[str] = option([], "wandb tags", kind="str", nargs="+")  # noqa: RUF009


GROUP_TITLES = {
    "data": "Dataset",
    "objective": "Task (classification or regression) and its loss",
    "eval": "Evaluation (subspace points and ensembles, effective rank)",
    "family": "Subspace training",
    "optim": "Optimizer (timm's create_optimizer_v2)",
    "schedule": "Schedule (timm's create_scheduler_v2)",
    "augment": "Augmentation (train split; the embedded digits get none)",
    "logging": "Output and logging",
    "research": "Research instruments (depth-limit study: p-variation, dynamic lr, Omega)",
}


# ------------------------------------------------------------------------------------- configs
_KEYS: dict[type, dict[str, tuple[str | None, Any]]] = {}


class _Config:
    """Flat keys over top-level fields and groups; checked construction; dict/YAML round trips."""

    _groups: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: Any) -> None:
        self._assign(values, lambda key: key)

    # -- the keys
    @classmethod
    def _group_types(cls) -> dict[str, type]:
        return {f.name: f.default_factory for f in fields(cls) if f.name in cls._groups}  # type: ignore[misc]

    @classmethod
    def keys(cls) -> dict[str, tuple[str | None, Any]]:
        """Every flat key -> (its group or None, its dataclass field), in declaration order.

        >>> list(ValidateConfig.keys())[:3]
        ['config', 'model', 'pretrained']
        """
        if cls in _KEYS:
            return _KEYS[cls]
        out: dict[str, tuple[str | None, Any]] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in cls._groups:
                for g in fields(f.default_factory()):  # type: ignore[misc]
                    out[g.name] = (f.name, g)
            else:
                out[f.name] = (None, f)
        _KEYS[cls] = out
        return out

    @staticmethod
    def _default(f: Any) -> Any:
        return f.default_factory() if f.default_factory is not MISSING else f.default

    def _items(self) -> Iterator[tuple[str, Any]]:
        for key in self.keys():
            yield key, getattr(self, key)

    def __getattr__(self, name: str) -> Any:
        keys = type(self).keys()
        if name in keys and keys[name][0] is not None:
            return getattr(object.__getattribute__(self, keys[name][0]), name)
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        keys = type(self).keys()
        if name in keys and keys[name][0] is not None:
            setattr(object.__getattribute__(self, keys[name][0]), name, value)
            return
        if not name.startswith("_") and name not in keys and name not in self._groups:
            raise AttributeError(f"{type(self).__name__} has no key {name!r}; valid: {sorted(keys)}")
        object.__setattr__(self, name, value)

    # -- building and checking
    def _assign(self, values: dict[str, Any], where: Callable[[str], str]) -> None:
        cls, keys = type(self), type(self).keys()
        for name, group in cls._group_types().items():
            given = values.get(name)
            if given is not None and not isinstance(given, group):
                raise ConfigError(f"{name} must be a {group.__name__}, got {given!r}")
            object.__setattr__(self, name, group() if given is None else given)
        for key, (group, f) in keys.items():
            if group is None:
                object.__setattr__(self, key, self._default(f))
        unknown = sorted(set(values) - set(keys) - set(cls._groups))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no key(s) {unknown} (keys are the flag names with underscores); "
                f"valid: {sorted(keys)}"
            )
        for key, value in values.items():
            if key not in cls._groups:
                setattr(self, key, value)
        self.check(where)

    def check(self, where: Callable[[str], str] = lambda key: key) -> None:
        """Check and normalise every value (errors name the key as ``where(key)`` gives it).

        >>> TrainConfig(epochs=0)
        Traceback (most recent call last):
        ...
        timm_overparam.train.config.ConfigError: epochs must be >= 1, got 0
        """
        for key, (_, f) in type(self).keys().items():
            setattr(self, key, check_value(key, getattr(self, key), dict(f.metadata), where(key), f.default))
        if "dataset" in type(self).keys() and self.dataset is None:
            self.dataset = "" if self.data_dir else DIGITS
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(
                f"{where('train_fraction')} must be in (0, 1] (1 keeps the whole split), "
                f"got {self.train_fraction!r}"
            )
        if not 0 <= self.label_noise < 1:
            raise ConfigError(
                f"{where('label_noise')} must be in [0, 1) (0 keeps every label), got {self.label_noise!r}"
            )
        for key, parse in (("eval_points", parse_points), ("eval_ensembles", parse_ensembles)):
            try:
                parse(getattr(self, key))
            except ValueError as e:
                raise ConfigError(f"{where(key)}: {e}") from None
        if self.task == "regression":
            for key, value, plain in (
                ("train_fraction", self.train_fraction, 1),
                ("label_noise", self.label_noise, 0),
            ):
                if value != plain:
                    raise ConfigError(
                        f"{where(key)} {value!r} needs classes (classification); for regression leave it at "
                        f"{plain} (synthetic data: choose the samples with {where('synthetic_samples')})"
                    )
        if "pvar" in type(self).keys():
            self._check_research(where)

    def _check_research(self, where: Callable[[str], str]) -> None:
        """The research flags: p >= 2 (its p/2-variation needs an exponent >= 1), ``dynamic_lr`` needs
        ``pvar`` and the learning rate to itself (no scheduler)."""
        if self.pvar is not None and self.pvar < 2:
            raise ConfigError(
                f"{where('pvar')} must be >= 2 (the p/2-variation is logged too, and a p-variation needs an "
                f"exponent >= 1), got {self.pvar!r}"
            )
        if self.dynamic_lr and self.pvar is None:
            raise ConfigError(
                f"{where('dynamic_lr')} sets the learning rate from the p-variation of the block weights: "
                f"add {where('pvar')} P (e.g. 2)"
            )
        if self.dynamic_lr and self.sched != "none":
            raise ConfigError(
                f"{where('dynamic_lr')} sets the learning rate itself, which the {self.sched!r} schedule would "
                f"overwrite every update: add {where('sched')} none"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: Callable[[str], str] = lambda key: key) -> Any:
        """A config from flat keys (or group objects), checked; errors name keys as ``where`` gives them.

        >>> TrainConfig.from_dict({"lr": 1}).optim.lr
        1.0
        """
        config = cls.__new__(cls)
        config._assign(dict(values), where)
        return config

    @classmethod
    def read_yaml(cls, path: str, where: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The checked values of a YAML file of flat keys (errors name the file and the key).

        Example: ``TrainConfig.read_yaml("configs/cifar10_resnet18_op3.yaml")["model"]``
        """
        values = read_yaml_file(path, "config", ConfigError)
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(
                f"config {path!r} must be a mapping of flag names to values (key: value lines), "
                f"got a {type(values).__name__}"
            )
        keys = cls.keys()
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ConfigError(f"config {path!r} has unknown keys {unknown}; valid: {sorted(keys)}")
        name = where or (lambda key: f"config {path!r}: {key}")
        return {
            k: check_value(k, v, dict(keys[k][1].metadata), name(k), keys[k][1].default)
            for k, v in values.items()
        }

    @classmethod
    def from_yaml(cls, path: str, **overrides: Any) -> Any:
        """A config from a YAML file of flat keys (a ``-c`` file or a run's ``args.yaml``), then ``overrides``.

        Example: ``TrainConfig.from_yaml("configs/cifar10_resnet18_op3.yaml", epochs=5)``
        """
        values = cls.read_yaml(str(path))
        values.setdefault("config", str(path))  # an args.yaml keeps the file its run started from
        return cls.from_dict({**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Every key -> value, flat, as plain YAML/JSON types (callbacks by ``module:Class`` name).

        >>> TrainConfig().to_dict()["batch_size"]
        64
        """
        out = {}
        for key, value in self._items():
            if key == "callbacks":
                value = [callback_name(c) for c in value]
            elif isinstance(value, (list, dict)):
                value = type(value)(value)
            out[key] = value
        return out

    def to_yaml(self, path: str | None = None) -> str:
        """The config as YAML (what ``from_yaml`` and ``-c`` read); written to ``path`` if given.

        Example: ``TrainConfig(epochs=2).to_yaml("run.yaml")``
        """
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def replace(self, **changes: Any) -> Any:
        """A checked copy with ``changes`` (flat keys); groups are copied, callback objects shared.

        >>> TrainConfig(epochs=2).replace(lr=0.1).epochs
        2
        """
        values = {k: v for k, v in self._items()}
        values = {k: (type(v)(v) if isinstance(v, (list, dict)) else v) for k, v in values.items()}
        return type(self).from_dict({**values, **changes})


@dataclass(init=False, eq=True, repr=True)
class _ModelConfig(_Config):
    """The keys train.py and validate.py share first: the config file and the model to create."""

    config: str = option("", "YAML file of flag defaults", flags=("-c", "--config"), metavar="FILE")
    model: str = option("resnet18_op3", "timm name, e.g. resnet18_op3, resnet18_line")
    pretrained: bool = option(False, "start from the base model's weights")
    pretrained_path: str | None = option(
        None, "with --pretrained: a local file of the base model's weights instead of the hub's", kind="str"
    )
    model_kwargs: dict[str, Any] = option({}, "create_model kwargs, k=v ...", kind="kwargs")  # noqa: RUF009
    torchcompile: str | None = option(
        None,
        "torch.compile with this backend (the bare flag: inductor): the trained model; validate.py: the evaluated one",
        kind="str",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
    )
    torchcompile_mode: str | None = option(
        None, "torch.compile mode: default, reduce-overhead, max-autotune...", kind="str"
    )


@dataclass(init=False, eq=True, repr=True)
class TrainConfig(_ModelConfig):
    """Every train.py option (see the module docstring); ``train(TrainConfig(...))`` runs it.

    >>> cfg = TrainConfig(model="resnet18_op3", epochs=3, batch_size=32)
    >>> cfg.epochs, cfg.schedule.epochs, cfg.data.batch_size
    (3, 3, 32)
    """

    _groups: ClassVar[tuple[str, ...]] = (
        "data",
        "objective",
        "eval",
        "family",
        "optim",
        "schedule",
        "augment",
        "logging",
        "research",
    )

    initial_checkpoint: str = option("", "load these weights (safetensors) first")
    resume: str = option("", "resume from a checkpoint folder (output/train/<exp>/last)")
    drop: float | None = option(None, "dropout rate", kind="float")
    drop_path: float | None = option(None, "drop path rate", kind="float")
    grad_accum_steps: int = option(1, "micro-batches per optimizer step", minimum=1)
    model_ema: bool = option(False, "keep an EMA of the weights (timm ModelEmaV3)")
    model_ema_decay: float = option(0.998, "EMA decay")
    seed: int = option(42, "random seed")
    amp: bool = option(False, "mixed precision (accelerate)")
    amp_dtype: str = option("float16", "amp dtype", choices=("float16", "bfloat16"))
    callbacks: list[Any] = option(  # noqa: RUF009
        [],
        "a callback class to attach, module:Class (repeatable; see timm_overparam.train.callbacks)",
        kind="callbacks",
        flags=("--callback",),
        metavar="MODULE:CLASS",
    )
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    family: FamilyConfig = field(default_factory=FamilyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    research: ResearchConfig = field(default_factory=ResearchConfig)


@dataclass(init=False, eq=True, repr=True)
class ValidateConfig(_ModelConfig):
    """Every validate.py option; ``validate(ValidateConfig(...))`` runs it (data and eval groups as in training).

    >>> ValidateConfig(model="resnet18", checkpoint="c.safetensors").results_format
    'json'
    """

    _groups: ClassVar[tuple[str, ...]] = ("data", "objective", "eval")

    checkpoint: str = option("", "a .safetensors file or a train.py checkpoint folder")
    use_ema: bool = option(False, "the checkpoint folder's EMA weights")
    reparam: bool = option(False, "timm reparameterize_model (collapses op)")
    results_file: str = option("", "write the results record here")
    results_format: str = option("json", "results format", choices=("json", "csv"))
    seed: int = option(42, "seed of the BatchNorm recalibration order")
    amp: bool = option(False, "mixed precision (accelerate)")
    amp_dtype: str = option("float16", "amp dtype", choices=("float16", "bfloat16"))
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def default_eval_metric(config: Any) -> str:
    """The metric that picks ``best``: ``--eval-metric``, else the task's default (top1; regression: loss).

    >>> default_eval_metric(TrainConfig()), default_eval_metric(TrainConfig(task="regression"))
    ('top1', 'loss')
    """
    return config.eval_metric or DEFAULT_EVAL_METRIC[config.task]


def _check_unique(cls: type[_Config]) -> None:
    seen: dict[str, str] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        names = [g.name for g in fields(f.default_factory())] if f.name in cls._groups else [f.name]  # type: ignore[misc]
        for name in names:
            assert name not in seen, f"{cls.__name__}: key {name!r} in {seen[name]} and {f.name}"
            seen[name] = f.name


_check_unique(TrainConfig)
_check_unique(ValidateConfig)
