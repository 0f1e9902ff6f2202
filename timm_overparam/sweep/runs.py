"""Run records from the three places runs live, as one type: ``Run``.

- this project's run folders (``args.yaml`` + ``summary.csv``, and ``results.json`` once the run
  finished), found recursively under the given paths;
- wandb run folders on disk (``wandb/offline-run-<date>-<id>/`` or ``run-<date>-<id>/``, the
  ``run-<id>.wandb`` transaction log inside), read with the protobuf records wandb ships;
- synced runs, through wandb's public ``wandb.Api()``.

Metric names drop the ``eval_`` prefix of ``summary.csv`` and of the logged metrics (``top1``,
``ece``, ``point0.5_top1``, ``ens0+1_top1``, ``erank``); history rows keep ``train_loss``, ``lr`` and
``train_step_time`` as they are. Every field a run may lack (counts, timing, reliability bins,
rank metrics) is optional: older runs have none of them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Run",
    "find_runs",
    "read_api_runs",
    "read_folder_run",
    "read_runs",
    "read_wandb_folder",
    "split_points",
]

# as in train/loop.py's DECREASING: the run's best epoch minimises these
LOWER_IS_BETTER = ("loss", "ece", "mae")
NOT_METRICS = ("epoch", "lr")  # history columns that are not evaluation metrics (nor are train_*)


@dataclass(frozen=True)
class Run:
    """One run, whichever source it was read from.

    ``config``: the run's flat keys (``model``, ``seed``, ``lr``...). ``final``: metric -> value at
    the last evaluation (``results.json``'s ``final``, a wandb summary, or the last history row of
    an unfinished run). ``history``: one dict per epoch (``epoch``, ``train_loss``, ``lr``, metrics).
    ``best_epoch``: the epoch of the run's best checkpoint (by its own ``eval_metric``).
    ``param_count``: trained parameters; ``param_count_stock``: the stock (inference) model's.
    ``reliability``: name (``model``, ``point0.5``, ``ens0+1``) -> ``{"count", "confidence",
    "accuracy"}`` per bin. ``state``: ``"finished"`` or why not (``unfinished``, ``failed``, a wandb
    state such as ``crashed``).

    >>> run = Run("a", "folder", "output/a", {"model": "resnet18", "seed": 0}, {"top1": 0.9})
    >>> run.finished, run.final["top1"]
    (True, 0.9)
    """

    name: str
    source: str  # "folder", "wandb-folder" or "wandb-api"
    location: str  # the folder, or entity/project/run id
    config: dict[str, Any]
    final: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    state: str = "finished"
    best_epoch: int | None = None
    param_count: int | None = None
    param_count_stock: int | None = None
    seconds_per_step: float | None = None
    reliability: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state == "finished"


# ------------------------------------------------------------------------------------- all sources
def read_runs(
    paths: Sequence[str | os.PathLike] = (),
    *,
    wandb: str | None = None,
    sweep: str | None = None,
    api: Any = None,
) -> list[Run]:
    """Every run under ``paths`` (run folders and wandb run folders) and of the wandb project ``wandb``
    (``entity/project``, only the sweep ``sweep`` if given; ``api``: a ``wandb.Api``-like object).

    Example: ``read_runs(["output/sweeps/digits_depth"])`` or ``read_runs(wandb="me/proj", sweep="ab12")``
    """
    if sweep is not None and wandb is None:
        raise ValueError(f"--sweep {sweep!r} needs --wandb ENTITY/PROJECT (the project the sweep ran in)")
    if not paths and wandb is None:
        raise ValueError("no runs to read: give run folders (paths) or --wandb ENTITY/PROJECT")
    runs, seen = [], set()
    for path in paths:  # a run under two of the paths (a folder and its parent) is read once
        for run in find_runs(path):
            if Path(run.location).resolve() not in seen:
                seen.add(Path(run.location).resolve())
                runs.append(run)
    if wandb is not None:
        runs += read_api_runs(wandb, sweep=sweep, api=api)
    return runs


def find_runs(path: str | os.PathLike) -> list[Run]:
    """The runs in and under ``path``: run folders, and wandb run folders that are not inside one (a
    run folder logged to wandb holds its own ``wandb/``: the run folder, which has more, is read).

    Example: ``find_runs("output/train")``
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder: give folders holding run folders")
    folders, logs = [], []
    for dirpath, dirnames, filenames in os.walk(root):  # symbolic links (last, best, latest-run) not followed
        dirnames.sort()
        if "args.yaml" in filenames and "summary.csv" in filenames:
            folders.append(Path(dirpath))
        elif any(_is_wandb_log(name) for name in filenames):
            logs.append(Path(dirpath))
    logs = [log for log in logs if not any(f in log.parents for f in folders)]
    runs = [read_folder_run(f) for f in folders] + [read_wandb_folder(w) for w in logs]
    if not runs:
        raise ValueError(
            f"no runs under {str(root)!r}: a run folder holds args.yaml and summary.csv, a wandb run "
            f"folder (wandb/offline-run-*) a run-<id>.wandb file"
        )
    return runs


# ------------------------------------------------------------------------------ this project's folders
def read_folder_run(folder: str | os.PathLike) -> Run:
    """A run folder of train.py: ``args.yaml``, ``summary.csv`` and, once finished, ``results.json``.

    Example: ``read_folder_run("output/train/20260101-120000-resnet18_op3-32")``
    """
    folder = Path(folder)
    config = yaml.safe_load((folder / "args.yaml").read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{str(folder / 'args.yaml')!r} is not a mapping of keys to values")
    with open(folder / "summary.csv", newline="") as f:
        history = [_history_row(row) for row in csv.DictReader(f)]
    results_file = folder / "results.json"
    if not results_file.exists():
        return Run(
            folder.name,
            "folder",
            str(folder),
            config,
            _last_metrics(history),
            history,
            state="unfinished",
            best_epoch=_best_epoch(history, config.get("eval_metric", "top1")),
            seconds_per_step=_mean_step_time(history),
        )
    results = json.loads(results_file.read_text())
    if not isinstance(results.get("final"), dict):
        raise ValueError(f"{str(results_file)!r} has no 'final' metrics: not a results.json of train.py")
    count = results.get("param_count")
    stock = results.get("param_count_collapsed", results.get("param_count_point", count))
    return Run(
        folder.name,
        "folder",
        str(folder),
        config,
        {k: float(v) for k, v in results["final"].items() if _is_number(v)},
        history,
        best_epoch=results.get("best_epoch"),
        param_count=count,
        param_count_stock=stock,
        seconds_per_step=results.get("seconds_per_step", _mean_step_time(history)),
        reliability=results.get("reliability") or {},
    )


def _history_row(row: dict[str, str]) -> dict[str, float]:
    """A ``summary.csv`` row as numbers: ``eval_`` dropped from metric names, ``epoch`` an int."""
    out: dict[str, float] = {}
    for key, text in row.items():
        if key is None or text in (None, ""):
            continue
        out[key.removeprefix("eval_")] = int(text) if key == "epoch" else float(text)
    return out


# ------------------------------------------------------------------------------------- wandb on disk
def _is_wandb_log(name: str) -> bool:
    return name.startswith("run-") and name.endswith(".wandb")


def read_wandb_folder(folder: str | os.PathLike) -> Run:
    """A wandb run folder (``.../wandb/offline-run-<date>-<id>/``): config, summary, history and
    state from its ``run-<id>.wandb`` log (offline runs write no ``config.yaml`` nor summary file).

    Example: ``read_wandb_folder("output/train/x/wandb/offline-run-20260101_120000-ab12cd34")``
    """
    folder = Path(folder)
    log = next(p for p in sorted(folder.iterdir()) if _is_wandb_log(p.name))
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    steps: dict[int, dict[str, float]] = {}
    name, state = log.stem.removeprefix("run-"), "unfinished"
    for record in _wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name = record.run.display_name or name  # a later run record may carry no name
            _apply(config, record.run.config)
        elif kind == "config":
            _apply(config, record.config)
        elif kind == "summary":
            _apply(summary, record.summary)
        elif kind == "history":
            row = {_item_key(i): _item_value(i) for i in record.history.item}
            step = int(row.get("_step", record.history.step.num))
            steps.setdefault(step, {}).update(row)
        elif kind == "exit":
            state = (
                "finished" if record.exit.exit_code == 0 else f"failed (exit code {record.exit.exit_code})"
            )
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    history = _logged_history(sorted(steps.items()))
    return _logged_run(name, "wandb-folder", str(folder), config, summary, history, state)


def _wandb_records(path: Path) -> Iterator[Any]:
    """The records of a wandb transaction log, as ``wandb_internal_pb2.Record`` messages.

    wandb (0.31) ships no reader of these files, only their protobuf schema: this reads the framing
    wandb writes, leveldb's log format (32 KiB blocks of chunks: crc32 of type + data, length, type
    FULL/FIRST/MIDDLE/LAST; the first block shortened by the 7-byte file header ``:W&B``, 0xBEE1,
    version 0). The only code here that knows wandb internals. A torn tail (a killed run) ends the
    records; a file of another format is a ValueError.
    """
    import wandb
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    if data[:header] != struct.pack("<4sHB", b":W&B", 0xBEE1, 0):
        raise ValueError(
            f"{str(path)!r} is not a wandb transaction log of the format this reader knows (header "
            f"{data[:header]!r}; wandb {wandb.__version__}): sync the run (`wandb sync`) and read it with --wandb"
        )
    pos, parts = header, b""
    while True:
        if block - pos % block < header:  # a block's tail too short for a chunk header: zero padding
            pos += block - pos % block
        if pos + header > len(data):
            return
        checksum, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        chunk = data[pos + header : pos + header + length]
        if (
            len(chunk) < length
            or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != checksum
            or not 1 <= kind <= 4
        ):
            return  # a torn or damaged tail: the records before it stand
        pos += header + length
        parts = chunk if kind in (1, 2) else parts + chunk  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(parts)
            except Exception as e:  # protobuf's DecodeError: a schema that changed
                raise ValueError(
                    f"cannot decode a record of {str(path)!r} with the protobuf schema of wandb "
                    f"{wandb.__version__} ({e}): sync the run (`wandb sync`) and read it with --wandb"
                ) from e
            yield record


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _item_value(item: Any) -> Any:
    """The value of a history/summary/config item: JSON text, or (newer wandb) a typed field."""
    typed = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if typed is None:
        return json.loads(item.value_json) if item.value_json else None
    if typed == "json":
        return json.loads(item.json)
    return None if typed == "none" else getattr(item, typed)


def _apply(target: dict[str, Any], record: Any) -> None:
    """Apply a config/summary record's updates and removals to ``target``."""
    for item in record.update:
        target[_item_key(item)] = _item_value(item)
    for item in record.remove:
        target.pop(_item_key(item), None)


# ------------------------------------------------------------------------------------- wandb's server
def read_api_runs(path: str, sweep: str | None = None, api: Any = None) -> list[Run]:
    """The runs of the wandb project ``path`` (``entity/project``; only sweep ``sweep`` if given)
    through wandb's public API (``api``: a ``wandb.Api()``, made here if not given).

    Example: ``read_api_runs("me/timm_overparam", sweep="ab12cd34")``
    """
    if path.count("/") != 1 or not all(path.split("/")):
        raise ValueError(f"--wandb {path!r}: give ENTITY/PROJECT, e.g. --wandb my-team/timm_overparam")
    import wandb

    try:  # everything that talks to the server; the records are converted below
        api = api if api is not None else wandb.Api()
        fetched = [
            (r.name, r.id, r.state, dict(r.config), dict(r.summary), list(r.scan_history()))
            for r in api.runs(path, filters={"sweep": sweep} if sweep else None)
        ]
    except (wandb.errors.Error, OSError) as e:  # no login, no network (requests' errors are OSErrors)
        raise ValueError(
            f"cannot read the runs of {path!r} from wandb ({type(e).__name__}: {e}): log in (`wandb login` "
            f"or WANDB_API_KEY), check the network and the entity/project names, or compare local folders"
        ) from e
    if not fetched:
        where = f"sweep {sweep!r} of {path!r}" if sweep else repr(path)
        raise ValueError(
            f"wandb has no runs in {where}: check the names (the sweep id is its last path part)"
        )
    runs = []
    for name, run_id, state, config, summary, rows in fetched:
        steps = [(int(row["_step"]), row) for row in rows if row.get("_step") is not None]
        history = _logged_history(sorted(steps, key=lambda s: s[0]))
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        runs.append(
            _logged_run(name or run_id, "wandb-api", f"{path}/{run_id}", config, summary, history, state)
        )
    return runs


# -------------------------------------------------------------------------------------- logged runs
def _logged_history(rows: Iterable[tuple[int, dict[str, Any]]]) -> list[dict[str, float]]:
    """The per-epoch rows of a logged history. train.py logs its epoch metrics with an ``epoch`` key
    at the optimizer-update step (callbacks log per update on the same axis): when rows carry
    ``epoch`` only those are epochs; without it (older runs, other programs) the step is the epoch.
    """
    rows = list(rows)
    tagged = any("epoch" in row for _, row in rows)
    return [
        _logged_row(row, int(row["epoch"]) if tagged else step)
        for step, row in rows
        if not tagged or "epoch" in row
    ]


def _logged_row(row: dict[str, Any], epoch: int) -> dict[str, float]:
    """A logged history row as numbers at ``epoch``, ``eval_`` dropped; wandb's own keys
    (``_step``, ``_runtime``) and non-numbers left out."""
    out: dict[str, float] = {"epoch": epoch}
    for key, value in row.items():
        if key != "epoch" and not key.startswith("_") and _is_number(value):
            out[key.removeprefix("eval_")] = float(value)
    return out


def _logged_run(
    name: str,
    source: str,
    location: str,
    config: dict[str, Any],
    summary: dict[str, Any],
    history: list[dict[str, float]],
    state: str,
) -> Run:
    """A wandb run as a ``Run``: final metrics from the summary (the last history row without one),
    parameter counts and seconds per step from the summary when they were logged."""
    final = {
        k.removeprefix("eval_"): float(v)
        for k, v in summary.items()
        if not k.startswith("_") and _is_number(v) and k not in NOT_METRICS and not k.startswith("train_")
    }
    count = summary.get("param_count")
    stock = summary.get("param_count_collapsed", summary.get("param_count_point", count))
    for key in ("param_count", "param_count_collapsed", "param_count_point", "seconds_per_step"):
        final.pop(key, None)
    return Run(
        name,
        source,
        location,
        config,
        final or _last_metrics(history),
        history,
        state=state,
        best_epoch=_best_epoch(history, config.get("eval_metric", "top1")),
        param_count=count,
        param_count_stock=stock,
        seconds_per_step=summary.get("seconds_per_step", _mean_step_time(history)),
    )


# ------------------------------------------------------------------------------------ subspace points
_POINT = re.compile(r"(point[^_]+|ens[^_]+)_(.+)")


def split_points(runs: Sequence[Run]) -> list[Run]:
    """Each subspace run as one run per evaluated point and ensemble, its ``model`` named
    ``<model>@<point>`` (``resnet18_line@0.5``, ``resnet18_line@ens0+1``) and that point's metrics,
    history and reliability bins under the plain names, so points compare and pair with standard
    runs; other runs unchanged.

    >>> line = Run("a", "folder", "a", {"model": "m_line"}, {"top1": 0.8, "point0_top1": 0.7, "ens0+1_top1": 0.9})
    >>> [(r.config["model"], r.final) for r in split_points([line])]
    [('m_line@0', {'top1': 0.7}), ('m_line@ens0+1', {'top1': 0.9})]
    """
    out: list[Run] = []
    for run in runs:
        names = sorted({m[1] for k in run.final if (m := _POINT.fullmatch(k))}, key=_natural)
        if not names:
            out.append(run)
            continue
        for name in names:
            final, history = _at(run.final, name), [_at(row, name, keep=("epoch",)) for row in run.history]
            tag = name.removeprefix("point")
            config = {**run.config, "model": f"{run.config.get('model')}@{tag}"}
            reliability = {"model": run.reliability[name]} if name in run.reliability else {}
            out.append(replace(run, config=config, final=final, history=history, reliability=reliability))
    return out


def _at(values: dict[str, float], name: str, keep: tuple[str, ...] = ()) -> dict[str, float]:
    """The entries of ``values`` that belong to the point ``name`` (prefix dropped), and ``keep``."""
    picked = {k: v for k, v in values.items() if k in keep or k.startswith("train_")}
    return picked | {k[len(name) + 1 :]: v for k, v in values.items() if k.startswith(f"{name}_")}


def _natural(text: str) -> tuple:
    """Points in order: ``point0 < point0.5 < point1 < ens...``."""
    number = re.fullmatch(r"point(-?\d+(?:\.\d+)?)", text)
    return (0, float(number[1]), text) if number else (1, 0.0, text)


# -------------------------------------------------------------------------------------------- shared
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _last_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of the last history row (what an unfinished run reached)."""
    if not history:
        return {}
    return {k: v for k, v in history[-1].items() if k not in NOT_METRICS and not k.startswith("train_")}


def _best_epoch(history: list[dict[str, float]], eval_metric: str) -> int | None:
    """The epoch whose ``eval_metric`` is best (lowest for loss and ECE), the first of ties."""
    rows = [r for r in history if eval_metric in r]
    if not rows:
        return None
    sign = 1 if eval_metric.split("_")[-1] in LOWER_IS_BETTER else -1
    return int(min(rows, key=lambda r: sign * r[eval_metric])["epoch"])


def _mean_step_time(history: Iterable[dict[str, float]]) -> float | None:
    """The mean ``train_step_time`` (seconds per optimizer update) over the epochs that logged it."""
    times = [r["train_step_time"] for r in history if "train_step_time" in r]
    return statistics.fmean(times) if times else None
