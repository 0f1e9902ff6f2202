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
from timm.utils import reparameterize_model

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.core.weights import load_weights
from timm_overparam.eval.metrics import Metrics, evaluate_model
from timm_overparam.eval.points import evaluate_points
from timm_overparam.expand.convert import collapse
from timm_overparam.subspace.points import extract_point
from timm_overparam.train.checkpoint import EMA_FILE, MODEL_FILE, read_state, verify_files
from timm_overparam.train.config import ValidateConfig, mixed_precision, parse_ensembles, parse_points
from timm_overparam.train.data import loader
from timm_overparam.train.families import check_points, default_points, family
from timm_overparam.train.loop import create_model, open_data, set_transforms


def _record(metrics: Metrics) -> dict[str, float]:
    top1, top5 = 100 * metrics.top1, 100 * metrics.top5
    return {
        "top1": round(top1, 4),
        "top1_err": round(100 - top1, 4),
        "top5": round(top5, 4),
        "top5_err": round(100 - top5, 4),
        "loss": round(metrics.loss, 6),
        "ece": round(metrics.ece, 6),
    }


def _weights_file(args: ValidateConfig) -> Path | None:
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
    weights = _weights_file(args)
    model = create_model(args, info)
    if weights is not None:
        load_weights(model, weights)
    kind = family(model)
    config = set_transforms(args, model, train_set, val_set, augment=False)  # BN recalibration data
    batch = args.validation_batch_size or args.batch_size
    val_loader = acc.prepare(loader(val_set, batch, shuffle=False, workers=args.workers, seed=args.seed))
    model = acc.prepare(model)
    model = acc.unwrap_model(model)
    count = sum(p.numel() for p in model.parameters())
    record: dict[str, Any] = {"model": args.model, "family": kind}
    points = parse_points(args.eval_points)
    if kind == "subspace":
        check_points(
            model.subspace_config, points or default_points(model), parse_ensembles(args.eval_ensembles)
        )
        bn = loader(train_set, args.batch_size, shuffle=True, workers=0, seed=args.seed)
        res = evaluate_points(
            model,
            val_loader,
            points or default_points(model),
            parse_ensembles(args.eval_ensembles),
            bn_loader=bn,
            bn_batches=args.bn_recal_batches,
            average=args.ensemble_average,
            gather=acc.gather_for_metrics,
        )
        record |= _record(res.metrics[0]) | {"point": res.points[0]}
        record["points"] = [{"point": p} | _record(m) for p, m in zip(res.points, res.metrics, strict=True)]
        record["ensembles"] = [
            {"members": list(e)} | _record(m)
            for e, m in zip(res.ensembles, res.ensemble_metrics, strict=True)
        ]
        plain = extract_point(model, res.points[0])
        record["param_count"] = round(count / 1e6, 4)
        record["param_count_point"] = round(sum(p.numel() for p in plain.parameters()) / 1e6, 4)
    else:
        if points or args.eval_ensembles:
            raise ValueError(f"--eval-points/--eval-ensembles need a subspace model, not {args.model!r}")
        evaluated = collapse(model) if kind == "op" or args.reparam else model
        if args.reparam:
            evaluated = reparameterize_model(evaluated)
        record |= _record(evaluate_model(evaluated, val_loader, acc.gather_for_metrics))
        record["param_count"] = round(sum(p.numel() for p in evaluated.parameters()) / 1e6, 4)
        if kind == "op":
            record["param_count_expanded"] = round(count / 1e6, 4)
            record["param_count_collapsed"] = record["param_count"]
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
