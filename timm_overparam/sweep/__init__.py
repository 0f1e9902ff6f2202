"""Sweeps: wandb-format sweep files run on Optuna with a database, without a wandb server, and
``compare`` reports over runs (docs/sweeps.md).

- ``spec``: the sweep file, read and checked (``load_sweep`` -> ``SweepSpec``), each run's command;
- ``distributions``: wandb's distributions as Optuna search dimensions (``Parameter``, ``SearchSpace``);
- ``runner``: ``run_sweep``, the runs as subprocesses, heartbeats, pruning, ``trials.csv``;
- ``__main__``: ``python -m timm_overparam.sweep SWEEP.yaml --count N --jobs N``;
- ``runs``: run records from run folders, wandb logs and the wandb API (``Run``, ``read_runs``);
- ``stats``: groups, means, t intervals, paired differences (``compare_runs``);
- ``report``: the table, ``comparison.md``/``.csv`` and figures (``compare``; CLI:
  ``python -m timm_overparam.compare``).

The names below load their module (and optuna, scipy or matplotlib) when first used.
"""

import importlib
from typing import Any

_HOMES = {
    "Parameter": "distributions",
    "SearchSpace": "distributions",
    "RunFailed": "runner",
    "SweepInterrupted": "runner",
    "WandbHyperbandPruner": "runner",
    "finished_runs": "runner",
    "run_sweep": "runner",
    "Hyperband": "spec",
    "Metric": "spec",
    "SweepSpec": "spec",
    "load_sweep": "spec",
    "parse_sweep": "spec",
    "Run": "runs",
    "read_runs": "runs",
    "split_points": "runs",
    "compare_runs": "stats",
    "compare": "report",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"timm_overparam.sweep.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
