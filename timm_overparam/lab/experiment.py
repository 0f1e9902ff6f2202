"""A lab run: every (model, size) configuration of one experiment, resumable, in one results file.

Model names are a base (``naive``, ``random_conv``, ``hyper`` for the pattern task; ``boolnet``,
``hyper`` for BoolNet) with an optional family suffix: ``_op2``, ``_op3``, ``_op4``
(expand-and-project) or ``_line`` (a subspace). ``naive_op2`` at 3 filters is
``timm.create_model("lab_naive_cnn_op2", filters=3)``: the project's own conversion. A
hypernetwork has no size: the seed repeated it at every size, and so does the lab (each size its
own restarts).

Restart ``r`` of size ``s`` has seed ``SeedSequence((seed, s, r))``: every model at one size shares
the restarts' seeds, so its data stream and, for the op and line variants of the same base, its
initial function are the base model's (``init='preserve'``, a line's vertex 0): comparisons
between models are paired.

``<out>/results.json`` is rewritten (atomically) after each configuration; a rerun with the same
settings skips the configurations it holds and adds new models or sizes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from timm_overparam.core.atomic import write_text_atomic

from .report import RESULTS, VERSION, write_report
from .restarts import build_model, train_restarts
from .tasks import TASKS, Task

__all__ = ["MODELS", "LabModel", "parse_model", "parse_sizes", "restart_seeds", "run_lab"]

# base name -> (timm architecture, its size kwarg or None for a hypernetwork), per experiment
MODELS: dict[str, dict[str, tuple[str, str | None]]] = {
    "pattern": {
        "naive": ("lab_naive_cnn", "filters"),
        "random_conv": ("lab_random_conv", "filters"),
        "hyper": ("lab_hyper_cnn", None),
    },
    "boolnet": {"boolnet": ("lab_boolnet", "width"), "hyper": ("lab_hyper_boolnet", None)},
}
_FAMILY = re.compile(r"^(?P<base>.+?)(?:_(?P<family>op[234]|line))?$")


@dataclass(frozen=True)
class LabModel:
    """A lab model name resolved: base, family (``plain``, ``op``, ``line``), timm architecture and
    the kwarg that takes the size (None for a hypernetwork).

    >>> parse_model("pattern", "naive_op2").arch
    'lab_naive_cnn_op2'
    """

    name: str
    base: str
    family: str
    arch: str
    size_kwarg: str | None

    def kwargs(self, size: int, op_width: float = 1.0) -> dict[str, Any]:
        """``timm.create_model`` kwargs at ``size``."""
        kwargs: dict[str, Any] = {} if self.size_kwarg is None else {self.size_kwarg: size}
        if self.family == "op" and op_width != 1.0:
            kwargs["op_width"] = op_width
        return kwargs


def parse_model(experiment: str, name: str) -> LabModel:
    """Resolve ``name`` (e.g. ``naive``, ``boolnet_op4``, ``hyper_line``) for ``experiment``."""
    if experiment not in MODELS:
        raise ValueError(f"experiment must be one of {sorted(MODELS)}, got {experiment!r}")
    match = _FAMILY.match(name)
    base, suffix = match["base"], match["family"]
    if base not in MODELS[experiment]:
        raise ValueError(
            f"unknown {experiment} model {name!r}: models are {sorted(MODELS[experiment])}, "
            "each optionally with _op2, _op3, _op4 or _line"
        )
    arch, size_kwarg = MODELS[experiment][base]
    family = "plain" if suffix is None else "line" if suffix == "line" else "op"
    return LabModel(name, base, family, arch if suffix is None else f"{arch}_{suffix}", size_kwarg)


def parse_sizes(text: str) -> list[int]:
    """``"1-7"``, ``"1,3,5"`` or ``"1-3,8"`` as a sorted list of distinct sizes >= 1.

    >>> parse_sizes("1-3,8")
    [1, 2, 3, 8]
    """
    sizes: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if m is None:
            raise ValueError(f"sizes are numbers and ranges like 1-7 or 1,3,5; got {text!r}")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if lo < 1 or hi < lo:
            raise ValueError(f"a size range runs from 1 up (e.g. 1-7), got {part.strip()!r} in {text!r}")
        sizes.update(range(lo, hi + 1))
    return sorted(sizes)


def restart_seeds(seed: int, size: int, restarts: int) -> list[int]:
    """The seeds of ``restarts`` restarts at ``size``: ``SeedSequence((seed, size, r))`` per restart.

    >>> restart_seeds(0, 3, 2) == restart_seeds(0, 3, 2) != restart_seeds(0, 4, 2)
    True
    """
    return [int(np.random.SeedSequence((seed, size, r)).generate_state(1)[0]) for r in range(restarts)]


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _deployed(model: torch.nn.Module, base: torch.nn.Module) -> int:
    """Parameters of the network that is deployed: the generated one for a hypernetwork, else the
    stock model the op collapse / line point extraction gives (the base architecture)."""
    generated = getattr(model, "generated_parameters", None)
    return int(generated) if generated is not None else sum(p.numel() for p in base.parameters())


def _settings(
    task: Task, restarts: int, seed: int, dtype: str, beta: float, success: float, op_width: float
) -> dict:
    return {
        "restarts": restarts,
        "seed": seed,
        "dtype": dtype,
        "steps": task.steps,
        "lr": task.lr,
        "momentum": task.momentum,
        "beta": beta,
        "op_width": op_width,
        "metric": task.metric,
        "success": success,
        "size_name": task.size_name,
    }


def run_lab(
    experiment: str,
    models: Sequence[str],
    sizes: Sequence[int],
    *,
    restarts: int,
    out: str | Path,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    steps: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    beta: float = 1.0,
    op_width: float = 1.0,
    success: float | None = None,
    progress: bool = True,
) -> Path:
    """Train ``restarts`` restarts of every model at every size of ``experiment``, write
    ``<out>/results.json`` after each configuration, then ``report.md`` and ``lab.png``.

    ``steps``, ``lr``, ``momentum`` override the seed's recipe; ``success`` the threshold of a
    successful restart (default: the task's). Returns ``out``.

    Example: ``run_lab("boolnet", ["boolnet", "hyper"], range(1, 23), restarts=50, out="output/lab/boolnet")``
    """
    if experiment not in TASKS:
        raise ValueError(f"experiment must be one of {sorted(TASKS)}, got {experiment!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not models:
        raise ValueError("give at least one model")
    parsed = [parse_model(experiment, m) for m in models]
    sizes = sorted(set(sizes))
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be integers >= 1, got {list(sizes)!r}")
    overrides = {k: v for k, v in (("steps", steps), ("lr", lr), ("momentum", momentum)) if v is not None}
    task = TASKS[experiment](**overrides)
    settings = _settings(
        task, restarts, seed, dtype, beta, task.success if success is None else success, op_width
    )

    out = Path(out)
    path = out / RESULTS
    results = _load_or_start(path, experiment, settings)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(m, s) for m in parsed for s in sizes if f"{m.name}:{s}" not in results["configs"]]
    torch_dtype = getattr(torch, dtype)
    for model, size in tqdm(todo, desc=f"lab {experiment}", unit="config", disable=not progress):
        start = time.perf_counter()
        kwargs = model.kwargs(size, op_width)
        seeds = restart_seeds(seed, size, restarts)
        trained = train_restarts(model.arch, kwargs, task, seeds, dtype=torch_dtype, device=device, beta=beta)
        sample = build_model(model.arch, kwargs, seeds[0])
        base = build_model(MODELS[experiment][model.base][0], model.kwargs(size), seeds[0])
        trainable = _trainable(sample)
        config = {
            "model": model.name,
            "base": model.base,
            "family": model.family,
            "arch": model.arch,
            "size": size,
            "trainable_params": trainable,
            "deployed_params": _deployed(sample, base),
            "seed_x": _seed_x(experiment, model, size, sample, trainable),
            "seeds": seeds,
            "metric": trained.metric.tolist(),
            "seconds": round(time.perf_counter() - start, 3),
        }
        if trained.points is not None:
            config["points"] = {f"{p:g}": v.tolist() for p, v in trained.points.items()}
        results["configs"][f"{model.name}:{size}"] = config
        write_text_atomic(path, json.dumps(results, indent=1) + "\n")
    write_report(out)
    return out


def _seed_x(experiment: str, model: LabModel, size: int, sample: torch.nn.Module, trainable: int) -> int:
    """The seed's x axis: trainable parameters (pattern) or width (BoolNet); a hypernetwork at its
    generated network (pattern: 5 parameters; BoolNet: width 2)."""
    if experiment == "boolnet":
        return 2 if model.size_kwarg is None else size
    generated = getattr(sample, "generated_parameters", None)
    return int(generated) if generated is not None else trainable


def _load_or_start(path: Path, experiment: str, settings: dict) -> dict:
    """The results held at ``path`` when they were made with the same settings, else a new record."""
    if not path.exists():
        return {"version": VERSION, "experiment": experiment, "settings": settings, "configs": {}}
    held = json.loads(path.read_text())
    if held.get("experiment") != experiment or held.get("settings") != settings:
        differ = {
            k: (held.get("settings", {}).get(k), v)
            for k, v in settings.items()
            if held.get("settings", {}).get(k) != v
        }
        if held.get("experiment") != experiment:
            differ["experiment"] = (held.get("experiment"), experiment)
        raise ValueError(
            f"{path} holds results made with other settings (held, asked): {differ}; "
            "give another --out for a new run, or the same settings to resume this one"
        )
    return held
