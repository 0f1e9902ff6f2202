"""The job behind validate.py: evaluate a checkpoint, collapsed (op) or at chosen points (subspace).

Result records follow timm's validate.py (``model, top1, top1_err, top5, top5_err, param_count,
img_size, crop_pct, interpolation``; accuracies in percent, parameter counts in millions) plus
``loss``, ``ece``, expanded vs collapsed parameter counts and per-point results.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.core.weights import load_weights
from timm_overparam.train.checkpoint import EMA_FILE, MODEL_FILE, read_state, verify_files
from timm_overparam.train.config import ValidateConfig, mixed_precision
from timm_overparam.train.data import loader
from timm_overparam.train.families import family_of
from timm_overparam.train.loop import create_model, open_data, set_transforms


def weights_file(args: ValidateConfig) -> Path | None:
    """The weights file a validation (or a landscape) reads: ``--checkpoint`` itself, or the model
    (``--use-ema``: EMA) file of a train.py checkpoint folder, checked against its manifest; None
    without a checkpoint.

    Example: ``weights_file(ValidateConfig(model="resnet18", checkpoint="output/train/x/best"))``
    """
    if not args.checkpoint:
        return None
    path = Path(args.checkpoint)
    if path.is_dir():
        state = read_state(path)  # a train.py checkpoint folder
        if args.model != state.model:
            raise ValueError(
                f"{str(path)!r} holds a {state.model!r} model, not {args.model!r}: pass --model {state.model}"
            )
        name = EMA_FILE if args.use_ema else MODEL_FILE
        if args.use_ema and not (path / EMA_FILE).is_file():
            raise ValueError(f"{str(path)!r} has no {EMA_FILE}: it was trained without --model-ema")
        verify_files(path, [name], state)  # a bit flip would otherwise evaluate at chance, silently
        return path / name
    if args.use_ema:
        raise ValueError("--use-ema needs a train.py checkpoint folder, not a single file")
    return path


def validate(config: ValidateConfig) -> dict[str, Any]:
    """Evaluate ``config.model`` with ``config.checkpoint``; returns timm-style record(s) and writes the results file.

    Example: ``validate(ValidateConfig(model="resnet18", checkpoint="c.safetensors"))``
    """
    if not isinstance(config, ValidateConfig):
        raise TypeError(f"validate takes a ValidateConfig, got a {type(config).__name__}")
    args = config.replace()  # a checked copy: the data defaults (img_size) are filled in below
    if args.results_file:
        check_writable(args.results_file)  # before the evaluation, not after it
    acc = Accelerator(mixed_precision=mixed_precision(args))
    set_seed(args.seed)
    train_set, val_set, info = open_data(args)
    weights = weights_file(args)
    model = create_model(args, info)
    if weights is not None:
        load_weights(model, weights)
    strategy = family_of(model, args)  # its points and options checked before anything runs
    config = set_transforms(args, model, train_set, val_set, augment=False)  # BN recalibration data
    batch = args.validation_batch_size or args.batch_size
    val_loader = acc.prepare(loader(val_set, batch, shuffle=False, workers=args.workers, seed=args.seed))
    model = acc.unwrap_model(acc.prepare(model))
    bn = loader(train_set, args.batch_size, shuffle=True, workers=0, seed=args.seed)
    record: dict[str, Any] = {"model": args.model, "family": strategy.name}
    record |= strategy.validate(model, val_loader, bn, acc.gather_for_metrics)
    record |= {
        "img_size": config["input_size"][-1],
        "crop_pct": config["crop_pct"],
        "interpolation": config["interpolation"],
        "checkpoint": str(weights) if weights else "",
        "dataset": args.dataset,
        "num_samples": len(val_set),
    }
    if args.results_file and acc.is_main_process:
        write_results(record, args.results_file, args.results_format)
    return record


def check_writable(path: str | os.PathLike) -> None:
    """Raise a ValueError naming ``path`` unless a file can be written there (its folder is created).

    Example: ``check_writable("results/resnet18.json")``
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--results-file {str(path)!r} is a folder: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise ValueError(f"cannot write --results-file {str(path)!r}: {e.strerror or e}") from None


def write_results(record: dict[str, Any], path: str | os.PathLike, fmt: str) -> None:
    """Write the record as JSON, or as one CSV row (nested per-point lists as JSON text); atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        write_text_atomic(path, json.dumps(record, indent=2))
    else:
        flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in record.items()}
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(flat))
        writer.writeheader()
        writer.writerow(flat)
        write_text_atomic(path, text.getvalue())
