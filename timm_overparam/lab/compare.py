"""Several lab runs side by side: the success rate of each (model, size) in each run, and the best.

Runs of one experiment that differ in a setting (a learning rate, steps, momentum...) answer "is it
the step size?": ``python -m timm_overparam.lab compare output/lab/boolnet_lr*`` prints, per model
and size, every run's success rate (its mean metric beside it) under a column named by the
settings that differ between the runs, and the best run. Rates come from ``summarize_results``
(one threshold for all runs: ``--success`` or the first run's).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from timm_overparam.sweep.stats import natural_key

from .report import load_results, summarize_results

__all__ = ["compare_runs_table"]


def _labels(settings: list[dict]) -> list[str]:
    """Each run's name: the settings whose values differ between the runs (``lr=0.3``)."""
    keys = [k for k in settings[0] if len({repr(s.get(k)) for s in settings}) > 1]
    keys += [k for s in settings for k in s if k not in settings[0] and k not in keys]
    labels = [", ".join(f"{k}={s.get(k)}" for k in keys) or "same settings" for s in settings]
    return [f"{label} (run {i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def compare_runs_table(
    runs: Sequence[str | os.PathLike],
    models: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    success: float | None = None,
) -> str:
    """A markdown table: one row per (model, size) any run holds, one column per run (success rate
    and mean metric), and the run with the highest success rate (ties: the higher mean).

    Example: ``print(compare_runs_table(["output/lab/boolnet_lr0.1", "output/lab/boolnet_lr1.0"]))``
    """
    if not runs:
        raise ValueError("compare needs at least one run folder")
    results = [load_results(r) for r in runs]
    experiments = {r["experiment"] for r in results}
    if len(experiments) > 1:
        raise ValueError(
            f"the runs are of different experiments {sorted(experiments)}: compare one at a time"
        )
    threshold = float(results[0]["settings"]["success"] if success is None else success)
    labels = _labels([r["settings"] for r in results])
    cells: dict[tuple[str, int], list[tuple[float, float] | None]] = {}
    for i, result in enumerate(results):
        for row in summarize_results(result, threshold):
            if (models and row.model not in models) or (sizes and row.size not in sizes):
                continue
            cells.setdefault((row.model, row.size), [None] * len(results))[i] = (row.success_rate, row.mean)
    if not cells:
        raise ValueError(f"no (model, size) of {list(models or [])} x {list(sizes or [])} in these runs")
    metric = results[0]["settings"].get("metric", "metric")
    header = ["model", "size", *labels, "best"]
    out = [
        f"success rate ({metric} >= {threshold:g}) and mean {metric}, per run",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---:"] + ["---:"] * len(labels) + ["---"]) + "|",
    ]
    for (model, size), values in sorted(cells.items(), key=lambda kv: (natural_key(kv[0][0]), kv[0][1])):
        shown = ["" if v is None else f"{100 * v[0]:.1f}% ({v[1]:.3f})" for v in values]
        best = max((v, i) for i, v in enumerate(values) if v is not None)[1]
        out.append("| " + " | ".join([model, str(size), *shown, labels[best]]) + " |")
    return "\n".join(out) + "\n"
