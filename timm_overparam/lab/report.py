"""The lab's report: a run's ``results.json`` as a table (``report.md``) and a figure (``lab.png``).

A lab run writes ``<run dir>/results.json`` (version 1): the experiment (``pattern`` or
``boolnet``), its settings (``restarts``, ``success``: the threshold a restart's metric must reach,
``metric``: its name...) and per config (``"<model>:<size>"``) the per-restart metric, with, for
the ``line`` family, the per-restart values at each evaluated point (``metric`` is the midpoint's).

``write_report("output/lab/pattern")`` reads it and writes, next to it:

- ``report.md``: a heading, the settings on one line and one row per config: the mean metric with
  the 95% Student t interval of the mean (``sweep.stats.summarize``), the success rate with its 95%
  Wilson interval (``scipy.stats.binomtest``) and, for lines, the mean at each endpoint;
- ``lab.png``: mean metric (left) and success rate (right) against the blog's x axis (or the
  trainable/deployed parameters, or the size), a line per model and the hypernetwork as a
  semi-transparent scatter, as the blog drew it.

Files are written atomically; matplotlib and scipy are imported when used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timm_overparam.core.atomic import atomic_path, write_text_atomic
from timm_overparam.lab.paired import paired_rows, paired_table
from timm_overparam.sweep.stats import natural_key, summarize, wilson_interval

__all__ = [
    "X_CHOICES",
    "Row",
    "load_results",
    "markdown_table",
    "plot_results",
    "summarize_results",
    "write_report",
]

VERSION = 1
DPI = 120
RESULTS = "results.json"
MIDPOINT = "0.5"  # a line's point whose values are its metric (results.json writes points as f"{p:g}")
HYPER = "hyper"  # the blog drew the hypernetwork as a scatter: one model repeated at every size

# x choice -> the config's key
X_CHOICES = {"seed": "seed_x", "trainable": "trainable_params", "deployed": "deployed_params", "size": "size"}


@dataclass(frozen=True)
class _Task:
    title: str
    seed_label: str  # the x label of the blog's figure (x="seed")
    metric_label: str


TASKS = {
    "pattern": _Task("pattern 1101 (max-pooled Conv1d)", "trainable parameters", "accuracy"),
    "boolnet": _Task(r"$y = x_1 > 0 \wedge x_2 > 0$", "width of the trained network", "macro F1"),
}


@dataclass(frozen=True)
class Row:
    """One config's statistics over its restarts.

    ``ci`` is the half width of the 95% t interval of the mean (None for one restart);
    ``success_low``/``success_high`` bound the 95% Wilson interval of ``success_rate``;
    ``endpoints``: for the ``line`` family, the mean metric at each point but the midpoint.
    """

    model: str
    base: str
    family: str
    size: int
    trainable_params: int
    deployed_params: int
    seed_x: float
    n: int
    mean: float
    ci: float | None
    success_rate: float
    success_low: float
    success_high: float
    endpoints: dict[str, float] = field(default_factory=dict)

    @property
    def hyper(self) -> bool:
        """Whether the blog drew this model as a scatter (the hypernetwork)."""
        return self.model == HYPER


# ------------------------------------------------------------------------------------------- reading
def _results_path(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    return path if path.suffix == ".json" and not path.is_dir() else path / RESULTS


def load_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``results.json`` (``run_dir`` may also name the file itself), checked to be version 1.

    Example: ``results = load_results("output/lab/pattern")``
    """
    path = _results_path(run_dir)
    if not path.is_file():
        raise ValueError(f"{path}: no results file (a lab run writes <run dir>/{RESULTS} when it ends)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(results, dict) or results.get("version") != VERSION:
        version = results.get("version") if isinstance(results, dict) else None
        raise ValueError(f"{path}: results version {version!r}; this report reads version {VERSION}")
    missing = [k for k in ("experiment", "settings", "configs") if k not in results]
    if missing:
        raise ValueError(f"{path}: results without {missing}")
    return results


# ---------------------------------------------------------------------------------------- statistics
def _endpoints(config: dict[str, Any]) -> dict[str, float]:
    """A line's mean metric at each evaluated point but its midpoint (whose values are ``metric``)."""
    points = config.get("points") or {}
    kept = sorted((k for k in points if k != MIDPOINT), key=natural_key)
    return {k: summarize(points[k]).mean for k in kept if points[k]}


def _success(results: dict[str, Any], success: float | None) -> float:
    if success is None:
        success = results.get("settings", {}).get("success")
    if success is None:
        raise ValueError("no success threshold: the settings have none, pass success=")
    return float(success)


def summarize_results(results: dict[str, Any], success: float | None = None) -> list[Row]:
    """One :class:`Row` per config, sorted by model (natural order) then size; a restart succeeds when
    its metric >= ``success`` (default: ``settings.success``).

    Example: ``for row in summarize_results(load_results("output/lab/pattern")): print(row.model, row.mean)``
    """
    threshold = _success(results, success)
    rows = []
    for name, config in results["configs"].items():
        values = [float(v) for v in config.get("metric", [])]
        if not values:
            raise ValueError(f"config {name!r}: no metric values")
        s = summarize(values)
        k = sum(v >= threshold for v in values)
        low, high = wilson_interval(k, s.n)
        rows.append(
            Row(
                model=str(config.get("model", name.split(":")[0])),
                base=str(config.get("base", "")),
                family=str(config.get("family", "plain")),
                size=config["size"],
                trainable_params=config["trainable_params"],
                deployed_params=config["deployed_params"],
                seed_x=config.get("seed_x", config["trainable_params"]),
                n=s.n,
                mean=s.mean,
                ci=s.ci,
                success_rate=k / s.n,
                success_low=low,
                success_high=high,
                endpoints=_endpoints(config),
            )
        )
    return sorted(rows, key=lambda r: (natural_key(r.model), natural_key(r.size)))


# ------------------------------------------------------------------------------------------- tables
def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _mean_cell(row: Row) -> str:
    if row.ci is None:
        return f"{row.mean:.3f} (n=1: no interval)"
    return f"{row.mean:.3f} ± {row.ci:.3f}"


def markdown_table(rows: Sequence[Row], metric_name: str) -> str:
    """A GitHub markdown table of ``rows``; the endpoints column only when some row is a line.

    >>> row = Row("naive", "naive", "plain", 3, 16, 16, 16, 5, 0.9, 0.05, 0.8, 0.376, 0.964)
    >>> print(markdown_table([row], "accuracy"))  # doctest: +NORMALIZE_WHITESPACE
    | model | size | trainable params | deployed params | restarts | accuracy mean ± 95% CI | success rate [95% CI] |
    |---|---:|---:|---:|---:|---:|---:|
    | naive | 3 | 16 | 16 | 5 | 0.900 ± 0.050 | 80.0% [37.6%, 96.4%] |
    """
    headers = [
        "model",
        "size",
        "trainable params",
        "deployed params",
        "restarts",
        f"{metric_name} mean ± 95% CI",
        "success rate [95% CI]",
    ]
    lines = any(r.endpoints for r in rows)
    if lines:
        headers.append(f"{metric_name} at the endpoints")
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for r in rows:
        cells = [
            r.model,
            str(r.size),
            f"{r.trainable_params:,}",
            f"{r.deployed_params:,}",
            str(r.n),
            _mean_cell(r),
            f"{_pct(r.success_rate)} [{_pct(r.success_low)}, {_pct(r.success_high)}]",
        ]
        if lines:
            cells.append(", ".join(f"a={k}: {v:.3f}" for k, v in r.endpoints.items()))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------- figures
def _check_x(x: str) -> str:
    if x not in X_CHOICES:
        raise ValueError(f"x={x!r}: choose one of {sorted(X_CHOICES)}")
    return X_CHOICES[x]


def _task(results: dict[str, Any]) -> _Task:
    experiment = str(results.get("experiment", ""))
    if experiment in TASKS:
        return TASKS[experiment]
    metric = str(results.get("settings", {}).get("metric", "metric"))
    return _Task(experiment or "lab", "x of the blog's figure", metric.replace("_", " "))


def _x_label(results: dict[str, Any], x: str) -> str:
    if x == "seed":
        return _task(results).seed_label
    if x == "size":
        return str(results.get("settings", {}).get("size_name", "size"))
    return f"{x} parameters"


def plot_results(
    results: dict[str, Any], path: str | os.PathLike, x: str = "seed", success: float | None = None
) -> str:
    """Mean metric (left, 95% t interval) and success rate (right, 95% Wilson interval) against ``x``
    (one of :data:`X_CHOICES`): a line per model, the hypernetwork as a scatter; returns the path.

    Example: ``plot_results(load_results("output/lab/pattern"), "lab.png", x="trainable")``
    """
    key = _check_x(x)
    threshold = _success(results, success)
    rows = summarize_results(results, threshold)
    task = _task(results)
    from matplotlib.figure import Figure  # import cost: only when a figure is drawn

    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    mean_ax, rate_ax = fig.subplots(1, 2)
    models = sorted({r.model for r in rows}, key=natural_key)
    for i, model in enumerate(models):
        mine = sorted((r for r in rows if r.model == model), key=lambda r: (getattr(r, key), r.size))
        xs = [getattr(r, key) for r in mine]
        color = f"C{i % 10}"
        label = f"{model} (midpoint)" if any(r.family == "line" for r in mine) else model
        mean = [r.mean for r in mine]
        ci = [r.ci or 0.0 for r in mine]
        rate = [r.success_rate for r in mine]
        rate_err = [
            [r.success_rate - r.success_low for r in mine],
            [r.success_high - r.success_rate for r in mine],
        ]
        if mine[0].hyper:
            for ax, ys, err in ((mean_ax, mean, ci), (rate_ax, rate, rate_err)):
                ax.errorbar(xs, ys, yerr=err, color=color, ls="none", capsize=3, alpha=0.3)
                ax.scatter(xs, ys, color=color, alpha=0.4, s=28, zorder=3, label=label)
        else:
            mean_ax.errorbar(xs, mean, yerr=ci, color=color, marker="o", ms=4, capsize=3, label=label)
            low = [m - c for m, c in zip(mean, ci, strict=True)]
            high = [m + c for m, c in zip(mean, ci, strict=True)]
            mean_ax.fill_between(xs, low, high, color=color, alpha=0.12)
            rate_ax.errorbar(xs, rate, yerr=rate_err, color=color, marker="o", ms=4, capsize=3, label=label)
            rate_ax.fill_between(
                xs, [r.success_low for r in mine], [r.success_high for r in mine], color=color, alpha=0.12
            )
    values = [float(getattr(r, key)) for r in rows]
    spread = bool(values) and min(values) > 0 and max(values) / min(values) >= 100
    for ax in (mean_ax, rate_ax):
        ax.set_xlabel(_x_label(results, x))
        if spread:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    restarts = max((r.n for r in rows), default=0)
    mean_ax.set_ylabel(f"{task.metric_label} (mean over {restarts} restarts, 95% CI)")
    rate_ax.set_ylabel(f"success rate ({task.metric_label} ≥ {threshold:g}, 95% Wilson)")
    rate_ax.set_ylim(-0.03, 1.03)
    mean_ax.set_ylim(top=1.03)  # the metric is at most 1: a t interval past it is cut at the frame
    mean_ax.legend(fontsize=7)
    fig.suptitle(task.title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return str(path)


# ------------------------------------------------------------------------------------------- report
def _settings_line(results: dict[str, Any], threshold: float) -> str:
    settings = dict(results.get("settings", {}))
    text = ", ".join(f"{k}={v}" for k, v in settings.items())
    line = f"Settings: {text}." if text else "Settings: none recorded."
    if settings.get("success") is not None and float(settings["success"]) != threshold:
        line += f" Success threshold overridden for this report: {threshold:g}."
    return line


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    x: str = "seed",
    success: float | None = None,
    models: Sequence[str] | None = None,
) -> tuple[str, str]:
    """Write ``report.md`` (heading, settings, table, paired comparisons of the variants against their
    base models when the run has both) into ``run_dir`` and the figure to ``out``
    (default ``<run_dir>/lab.png``) of ``models`` (default: all; the report keeps every model);
    returns (report, figure) paths.

    Example: ``report, figure = write_report("output/lab/pattern", x="trainable")``
    """
    _check_x(x)  # a bad x is an error before anything is written
    results = load_results(run_dir)
    threshold = _success(results, success)
    rows = summarize_results(results, threshold)
    folder = _results_path(run_dir).parent
    figure = Path(out) if out is not None else folder / "lab.png"
    shown = results
    if models:
        unknown = sorted(set(models) - {c.get("model") for c in results["configs"].values()})
        if unknown:
            raise ValueError(f"models {unknown} are not in {_results_path(run_dir)}")
        configs = {k: c for k, c in results["configs"].items() if c.get("model") in models}
        shown = {**results, "configs": configs}
    plot_results(shown, figure, x, threshold)
    task = _task(results)
    lines = any(r.endpoints for r in rows)
    link = os.path.relpath(figure.resolve(), folder.resolve())
    pairs = paired_rows(results, threshold)
    paired_section = (
        [
            "## Each variant against its base model at the same size (paired restarts)",
            "",
            "Restart r of every model at one size shares its seed: the same data and, for op variants and "
            "a line's first vertex, the base model's initial function.",
            "",
            paired_table(pairs, task.metric_label),
            "Δ = variant - base. The metric's interval is the paired t interval; the success rate's "
            "Newcombe's for paired proportions; McNemar's exact p from the restarts where only one succeeds.",
            "",
        ]
        if pairs
        else []
    )
    text = "\n".join(
        [
            f"# {results['experiment']}: {task.title}",
            "",
            _settings_line(results, threshold),
            "",
            markdown_table(rows, task.metric_label),
            f"Intervals: 95%; the mean's is Student t's over the restarts, the success rate's Wilson's "
            f"(a restart succeeds when its {task.metric_label} ≥ {threshold:g})."
            + (" Lines: the midpoint's metric; the endpoints' means in the last column." if lines else ""),
            "",
            f"![lab]({Path(link).as_posix()})",
            "",
            *paired_section,
        ]
    )
    report = folder / "report.md"
    write_text_atomic(report, text)
    return str(report), str(figure)
