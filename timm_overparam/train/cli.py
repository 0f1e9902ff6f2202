"""Command lines of train.py and validate.py: timm's flag names and meanings, YAML configs, point lists.

Flags shared with timm's train.py/validate.py keep their names and meanings; the families add
``--subspace-beta --layerwise --num-samples --eval-points --eval-ensembles --bn-recal-batches``.
``-c config.yaml`` sets defaults from a YAML file (keys are flag names with underscores); an
unknown key is an error that names it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import yaml
from timm.utils import ParseKwargs

from timm_overparam.train.data import DIGITS

PlainPoint = float | tuple[float, ...]


def parse_points(text: str | None) -> list[PlainPoint]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``; simplex points as colon-separated coordinates.

    >>> parse_points("0,0.5,1"), parse_points("0.2:0.8")
    ([0.0, 0.5, 1.0], [(0.2, 0.8)])
    """
    if not text:
        return []
    points: list[PlainPoint] = []
    for item in text.split(","):
        try:
            parts = [float(t) for t in item.split(":")]
        except ValueError:
            raise ValueError(
                f"bad point {item!r}: use a number in [0, 1] or coordinates like 0.2:0.3:0.5"
            ) from None
        points.append(parts[0] if len(parts) == 1 else tuple(parts))
    return points


def parse_ensembles(text: str | None) -> list[list[PlainPoint]]:
    """``"0+1,0+0.5+1"`` -> ``[[0.0, 1.0], [0.0, 0.5, 1.0]]`` (members joined by ``+``).

    >>> parse_ensembles("0+1")
    [[0.0, 1.0]]
    """
    if not text:
        return []
    return [parse_points(group.replace("+", ",")) for group in text.split(",")]


class KeyValues(ParseKwargs):
    """timm's ``k=v`` action (values read as Python literals), with an error naming a pair without ``=``."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        for value in values:
            if value and "=" not in value:
                parser.error(f"{option}: {value!r} is not key=value (e.g. {value}=3)")
        super().__call__(parser, namespace, values, option)


def _data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Dataset")
    group.add_argument("--data-dir", default=None, help="path to the dataset")
    group.add_argument(
        "--dataset",
        default=None,
        help=f"{DIGITS!r} (embedded, the default without a data dir), '' or 'folder' for an image folder "
        "(the default with one), or a timm name: torch/cifar10, torch/mnist, hfds/<id>, ...",
    )
    group.add_argument("--train-split", default="train", help="training split")
    group.add_argument("--val-split", default="validation", help="validation split")
    group.add_argument("--dataset-download", action="store_true", help="download torch/ datasets if missing")
    group.add_argument("--num-classes", type=int, default=None, help="classes (default: the dataset's)")
    group.add_argument("--in-chans", type=int, default=None, help="image channels (default: the dataset's)")
    group.add_argument("--img-size", type=int, default=None, help="input image size (default: the model's)")
    group.add_argument("--input-size", type=int, nargs=3, default=None, metavar="N", help="C H W, overrides")
    group.add_argument("--crop-pct", type=float, default=None, help="eval center crop fraction")
    group.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN", help="pixel mean")
    group.add_argument("--std", type=float, nargs="+", default=None, metavar="STD", help="pixel std")
    group.add_argument("--interpolation", default="", help="resize interpolation (default: the model's)")
    group.add_argument("-b", "--batch-size", type=int, default=64, help="batch size per process")
    group.add_argument("-vb", "--validation-batch-size", type=int, default=None, help="eval batch size")
    group.add_argument("-j", "--workers", type=int, default=0, help="data loading processes per process")


def _precision_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--amp", action="store_true", help="mixed precision (accelerate)")
    parser.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"), help="amp dtype")


def mixed_precision(args: argparse.Namespace) -> str:
    """accelerate's ``mixed_precision`` for ``--amp``/``--amp-dtype``.

    >>> mixed_precision(argparse.Namespace(amp=True, amp_dtype="bfloat16"))
    'bf16'
    """
    return {"float16": "fp16", "bfloat16": "bf16"}[args.amp_dtype] if args.amp else "no"


def _model_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    group = parser.add_argument_group("Model")
    group.add_argument("--model", default=default_model, help="timm name, e.g. resnet18_op3, resnet18_line")
    group.add_argument("--pretrained", action="store_true", help="start from the base model's weights")
    group.add_argument(
        "--pretrained-path",
        default=None,
        help="with --pretrained: a local file of the base model's weights instead of the hub's",
    )
    group.add_argument(
        "--model-kwargs", nargs="*", default={}, action=KeyValues, help="create_model kwargs, k=v ..."
    )
    group.add_argument(
        "--eval-points", default=None, help="subspace points to evaluate: 0,0.5,1 (simplex: 1:0:0,0.5:0.5:0)"
    )
    group.add_argument("--eval-ensembles", default=None, help="ensembles of evaluated points: 0+1,0+0.5+1")
    group.add_argument(
        "--ensemble-average", default="logits", choices=("logits", "probs"), help="what ensembles average"
    )
    group.add_argument(
        "--bn-recal-batches", type=int, default=50, help="training batches to recalibrate BatchNorm per point"
    )


def train_parser() -> argparse.ArgumentParser:
    """The train.py parser.

    >>> train_parser().parse_args(["--model", "resnet18_op3", "--epochs", "2"]).epochs
    2
    """
    parser = argparse.ArgumentParser(
        description="Train an over-parameterized (op) or subspace timm model with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of flag defaults")
    _data_args(parser)
    _model_args(parser, "resnet18_op3")
    group = parser.add_argument_group("Model (training)")
    group.add_argument("--initial-checkpoint", default="", help="load these weights (safetensors) first")
    group.add_argument(
        "--resume", default="", help="resume from a checkpoint folder (output/train/<exp>/last)"
    )
    group.add_argument("--drop", type=float, default=None, help="dropout rate")
    group.add_argument("--drop-path", type=float, default=None, help="drop path rate")
    group.add_argument("--grad-accum-steps", type=int, default=1, help="micro-batches per optimizer step")
    group = parser.add_argument_group("Subspace training")
    group.add_argument("--subspace-beta", type=float, default=1.0, help="weight of subspace_regularizer")
    group.add_argument("--layerwise", action="store_true", help="sample one point per module")
    group.add_argument("--num-samples", type=int, default=1, help="points per batch (batch split in chunks)")
    group = parser.add_argument_group("Optimizer (timm's create_optimizer_v2)")
    group.add_argument("--opt", default="sgd", help="optimizer name")
    group.add_argument("--opt-eps", type=float, default=None, help="optimizer epsilon")
    group.add_argument("--opt-betas", type=float, nargs="+", default=None, help="optimizer betas")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight-decay", type=float, default=2e-5, help="weight decay")
    group.add_argument("--clip-grad", type=float, default=None, help="clip gradient norm at this value")
    group.add_argument("--lr", type=float, default=0.05, help="learning rate")
    group = parser.add_argument_group("Schedule (timm's create_scheduler_v2)")
    group.add_argument("--sched", default="cosine", help="cosine, step, multistep, plateau, tanh, poly")
    group.add_argument("--epochs", type=int, default=10, help="epochs to train")
    group.add_argument("--warmup-epochs", type=int, default=1, help="linear warm-up epochs")
    group.add_argument("--warmup-lr", type=float, default=1e-5, help="warm-up start learning rate")
    group.add_argument("--min-lr", type=float, default=0.0, help="lower bound of cyclic schedules")
    group.add_argument("--decay-epochs", type=float, default=90, help="epoch interval of step decay")
    group.add_argument("--decay-rate", type=float, default=0.1, help="step decay factor")
    group.add_argument("--cooldown-epochs", type=int, default=0, help="epochs at min-lr after the schedule")
    group.add_argument(
        "--sched-on-updates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step the schedule every optimizer update (warm-up included) rather than every epoch",
    )
    group = parser.add_argument_group("Augmentation (train split; the embedded digits get none)")
    group.add_argument("--no-aug", action="store_true", help="no training augmentation")
    group.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="random-resized-crop scale")
    group.add_argument("--ratio", type=float, nargs=2, default=[3 / 4, 4 / 3], help="crop aspect ratio")
    group.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    group.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    group.add_argument("--color-jitter", type=float, default=0.4, help="color jitter factor")
    group.add_argument("--aa", default=None, help="auto-augment policy, e.g. rand-m9-mstd0.5")
    group.add_argument("--reprob", type=float, default=0.0, help="random erase probability")
    group.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    group = parser.add_argument_group("Misc")
    _precision_args(group)
    group.add_argument(
        "--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3)"
    )
    group.add_argument("--model-ema-decay", type=float, default=0.998, help="EMA decay")
    group.add_argument("--seed", type=int, default=42, help="random seed")
    group.add_argument("--log-interval", type=int, default=50, help="batches between progress updates")
    group.add_argument("--checkpoint-hist", type=int, default=2, help="best checkpoints to keep")
    group.add_argument("--output", default="output/train", help="folder of experiment folders")
    group.add_argument("--experiment", default="", help="experiment folder name (default: date-model-size)")
    group.add_argument("--eval-metric", default="top1", help="metric that picks 'best' (e.g. top1, loss)")
    group.add_argument("--log-wandb", action="store_true", help="log to wandb through accelerate's trackers")
    group.add_argument("--wandb-project", default=None, help="wandb project (default: timm_overparam)")
    group.add_argument("--wandb-tags", nargs="+", default=[], help="wandb tags")
    return parser


def validate_parser() -> argparse.ArgumentParser:
    """The validate.py parser.

    >>> validate_parser().parse_args(["--model", "resnet18", "--results-format", "csv"]).results_format
    'csv'
    """
    parser = argparse.ArgumentParser(
        description="Evaluate a timm, op or subspace model (collapsed, or at chosen subspace points).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-c", "--config", default="", metavar="FILE", help="YAML file of flag defaults")
    _data_args(parser)
    _model_args(parser, "resnet18_op3")
    parser.add_argument(
        "--checkpoint", default="", help="a .safetensors file or a train.py checkpoint folder"
    )
    parser.add_argument("--use-ema", action="store_true", help="the checkpoint folder's EMA weights")
    parser.add_argument("--reparam", action="store_true", help="timm reparameterize_model (collapses op)")
    parser.add_argument("--results-file", default="", help="write the results record here")
    parser.add_argument("--results-format", default="json", choices=("json", "csv"), help="results format")
    parser.add_argument("--seed", type=int, default=42, help="seed of the BatchNorm recalibration order")
    _precision_args(parser)
    return parser


def _config_value(action: argparse.Action, key: str, value: Any, file: str) -> Any:
    """A YAML value for ``action`` checked the way argparse checks a flag (type, nargs, choices)."""
    where = f"config {file!r}: {key}"
    if value is None:
        return None
    if isinstance(
        action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where} must be a mapping of keyword names to values, got {value!r}")
        return value
    many = action.nargs not in (None, "?")
    items = value if many and isinstance(value, list) else [value]
    if many and not isinstance(value, list):
        raise ValueError(f"{where} must be a list, got {value!r}")
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        raise ValueError(f"{where} must be a list of {action.nargs} values, got {value!r}")
    checked = []
    for item in items:
        if action.type is int and (isinstance(item, bool) or not isinstance(item, int)):
            raise ValueError(f"{where} must be an integer, got {item!r}")
        if action.type is float:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ValueError(f"{where} must be a number, got {item!r}")
            item = float(item)
        if action.type is None and not isinstance(item, str):
            raise ValueError(f"{where} must be text, got {item!r}")
        if action.choices is not None and item not in action.choices:
            raise ValueError(f"{where} must be one of {list(action.choices)}, got {item!r}")
        checked.append(item)
    return checked if many else checked[0]


def read_config(file: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The flag values of a YAML ``-c`` file, checked against ``parser`` (names, types, choices).

    Example: ``read_config("configs/cifar10_resnet18_op3.yaml", train_parser())["model"]``
    """
    try:
        with open(file) as f:
            values = yaml.safe_load(f)
    except OSError as e:
        raise ValueError(f"cannot read config {file!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"config {file!r} is not valid YAML: {' '.join(str(e).split())}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(
            f"config {file!r} must be a mapping of flag names to values (key: value lines), "
            f"got a {type(values).__name__}"
        )
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise ValueError(f"config {file!r} has unknown keys {unknown}; valid: {sorted(actions)}")
    return {k: _config_value(actions[k], k, v, file) for k, v in values.items() if k != "config"}


def _check_finite(args: argparse.Namespace) -> None:
    for key, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {bad[0]!r}")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser`` after applying ``-c`` YAML defaults; the dataset follows the data dir.

    >>> parse_args(train_parser(), []).dataset
    'sklearn/digits'
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, rest = config_parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(known.config, parser))
    args = parser.parse_args(rest)
    args.config = known.config
    _check_finite(args)
    if args.dataset is None:
        args.dataset = "" if args.data_dir else DIGITS
    parse_points(args.eval_points), parse_ensembles(args.eval_ensembles)  # bad lists fail here, not later
    return args
