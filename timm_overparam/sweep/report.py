"""The comparison report: the terminal table, ``comparison.md``, ``comparison.csv`` and the figures.

``compare(paths, group_by=["model"], metric="top1", out="report")`` reads the runs
(``sweep/runs.py``), compares the groups (``sweep/stats.py``) and writes, into ``out``:

- ``comparison.md``: the table, the command that makes it again, the notes (runs left out...);
- ``comparison.csv``: one row per group with every statistic, for other tools;
- figures, each only when the runs have its data: ``<metric>_by_group.png`` (means with 95%
  intervals and every run as a dot; against a numeric ``x`` key: a line per series),
  ``<metric>_curves.png`` (per epoch, mean and 95% band), ``<metric>_points.png`` (subspace
  accuracy along the points, ensembles dashed), ``reliability.png`` (bins pooled over seeds) and
  ``erank_by_group.png``.

Every file is written atomically; matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from timm_overparam.core.atomic import atomic_path, write_text_atomic
from timm_overparam.sweep.runs import Run, read_runs, split_points
from timm_overparam.sweep.stats import (
    RANK_METRICS,
    Comparison,
    Group,
    Summary,
    Which,
    compare_runs,
    natural_key,
    run_value,
    summarize,
)

__all__ = [
    "compare",
    "plot_by_group",
    "plot_curves",
    "plot_points",
    "plot_reliability",
    "pool_reliability",
    "table",
    "to_csv",
    "to_markdown",
    "write_report",
]

DPI = 120


def compare(
    paths: Sequence[str | os.PathLike] = (),
    *,
    wandb: str | None = None,
    sweep: str | None = None,
    api: Any = None,
    group_by: Sequence[str] = ("model",),
    metric: str = "top1",
    which: Which = "final",
    filters: Sequence[str] = (),
    baseline: str | None = None,
    seed_key: str = "seed",
    include_unfinished: bool = False,
    x: str | None = None,
    points: bool = False,
    out: str | os.PathLike | None = None,
) -> str:
    """Compare the runs under ``paths`` and/or of the wandb project ``wandb``; write the report into
    ``out`` if given; returns the text for the terminal (the table, the notes, the files written).
    ``points``: each subspace run counts once per evaluated point and ensemble (``split_points``).

    Example: ``print(compare(["output/sweeps/digits_depth"], group_by=["model"], out="report"))``
    """
    runs = read_runs(paths, wandb=wandb, sweep=sweep, api=api)
    if points:
        runs = split_points(runs)
    comparison = compare_runs(runs, group_by, metric, which, baseline, seed_key, filters, include_unfinished)
    if x is not None:
        _x_positions(comparison, x)  # a bad --x is an error before anything is written
    text = table(comparison)
    if out is not None:
        command = _command(
            paths,
            wandb,
            sweep,
            group_by,
            metric,
            which,
            filters,
            baseline,
            seed_key,
            include_unfinished,
            x,
            points,
            out,
        )
        files = write_report(comparison, out, command, x)
        text += "\nwritten: " + ", ".join(str(f) for f in files) + "\n"
    return text


def _command(
    paths: Sequence[Any],
    wandb: str | None,
    sweep: str | None,
    group_by: Sequence[str],
    metric: str,
    which: str,
    filters: Sequence[str],
    baseline: str | None,
    seed_key: str,
    include_unfinished: bool,
    x: str | None,
    points: bool,
    out: Any,
) -> str:
    """The command line that makes this report again."""
    args = ["python", "-m", "timm_overparam.compare", *map(str, paths)]
    for flag, value in (("--wandb", wandb), ("--sweep", sweep)):
        if value is not None:
            args += [flag, value]
    args += ["--group-by", ",".join(group_by), "--metric", metric, f"--{which}"]
    for text in filters:
        args += ["--filter", text]
    for flag, value in (("--baseline", baseline), ("--x", x)):
        if value is not None:
            args += [flag, value]
    if seed_key != "seed":
        args += ["--seed-key", seed_key]
    if include_unfinished:
        args.append("--include-unfinished")
    if points:
        args.append("--points")
    return shlex.join([*args, "--out", str(out)])


# -------------------------------------------------------------------------------------------- tables
def _f(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _pm(summary: Summary | None, fmt: Callable[[float | None], str] = _f) -> str:
    if summary is None:
        return ""
    if summary.ci is None:
        return f"{fmt(summary.mean)} (n=1: no interval)"
    return f"{fmt(summary.mean)} ± {fmt(summary.ci)}"


def _count(count: int | None) -> str:
    if count is None:
        return ""
    return f"{count / 1e6:.3g}M" if count >= 1e6 else f"{count / 1e3:.3g}k" if count >= 1e3 else str(count)


def _diff(group: Group, comparison: Comparison) -> list[str]:
    """The paired-difference cells: difference ± CI, pairs, p, wins/ties/losses."""
    if group.label == comparison.baseline:
        return ["baseline", "", "", ""]
    d = group.paired
    if d is None:
        return ["no pairs", "", "", ""]
    diff = f"{d.mean:+.4f}" + (f" ± {d.ci:.4f}" if d.ci is not None else " (1 pair: no interval)")
    return [diff, str(d.n), "" if d.p is None else f"{d.p:.3g}", f"{d.wins}/{d.ties}/{d.losses}"]


def _columns(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The table's headers and cells; optional columns only when some group has their data."""
    groups = comparison.groups
    headers = ["group", "n", f"{comparison.metric} mean ± 95% CI", "std", "min", "max"]
    rows = [
        [g.label, str(g.summary.n), _pm(g.summary), _f(g.summary.std), _f(g.summary.min), _f(g.summary.max)]
        for g in groups
    ]
    if comparison.baseline is not None:
        headers += [f"Δ vs {comparison.baseline} ± 95% CI", "pairs", "p (paired t)", "W/T/L"]
        for row, g in zip(rows, groups, strict=True):
            row += _diff(g, comparison)
    optional: list[tuple[str, Callable[[Group], str]]] = [
        ("params trained", lambda g: _count(g.param_count)),
        ("params stock", lambda g: _count(g.param_count_stock)),
        ("s/step", lambda g: _g(g.seconds_per_step)),
        *[(name, lambda g, name=name: _pm(g.extras.get(name), _g)) for name in RANK_METRICS],
    ]
    for header, cell in optional:
        cells = [cell(g) for g in groups]
        if any(cells):
            headers.append(header)
            for row, c in zip(rows, cells, strict=True):
                row.append(c)
    return headers, rows


def _title(comparison: Comparison) -> str:
    at = "the last epoch" if comparison.which == "final" else "each run's best epoch"
    return f"{comparison.metric} at {at}, grouped by {', '.join(comparison.group_by)}"


def table(comparison: Comparison) -> str:
    """The comparison as an aligned text table with its title and notes, for the terminal.

    Example: ``print(table(compare_runs(runs)))``
    """
    headers, rows = _columns(comparison)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [_title(comparison), ""]
    for row in [headers, *rows]:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    lines.insert(3, "  ".join("-" * w for w in widths))
    lines += [""] + [f"note: {n}" for n in comparison.notes]
    return "\n".join(lines) + "\n"


def to_markdown(comparison: Comparison, command: str, figures: Sequence[str] = ()) -> str:
    """``comparison.md``: the table, the command that made it, the notes and the figures.

    Example: ``to_markdown(compare_runs(runs), "python -m timm_overparam.compare output/x")``
    """
    headers, rows = _columns(comparison)
    out = [f"# {_title(comparison)}", ""]
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += [
        "",
        "Intervals: 95%, Student t over the runs of a group; Δ: paired over the seeds both groups have "
        f"({comparison.seed_key}), p from the paired t-test; W/T/L: seeds where the group is better/equal/worse.",
        "",
        "Made by:",
        "",
        "```bash",
        command,
        "```",
    ]
    if comparison.notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in comparison.notes]
    if figures:
        out += ["", "Figures:", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    return "\n".join(out) + "\n"


def to_csv(comparison: Comparison) -> str:
    """``comparison.csv``: one row per group with every statistic (empty where there is none).

    Example: ``to_csv(compare_runs(runs))``
    """

    def stats(prefix: str, s: Any) -> dict[str, Any]:
        ci = getattr(s, "ci", None)
        mean = getattr(s, "mean", None)
        return {
            f"{prefix}n": getattr(s, "n", None),
            f"{prefix}mean": mean,
            f"{prefix}std": getattr(s, "std", None),
            f"{prefix}ci95_half": ci,
            f"{prefix}ci95_low": None if ci is None else mean - ci,
            f"{prefix}ci95_high": None if ci is None else mean + ci,
        }

    records = []
    for g in comparison.groups:
        d = g.paired
        record: dict[str, Any] = {
            "group": g.label,
            **g.key,
            "metric": comparison.metric,
            "which": comparison.which,
        }
        record |= stats("", g.summary) | {"min": g.summary.min, "max": g.summary.max}
        record |= {"baseline": comparison.baseline} | stats("diff_", d)
        record |= {k: getattr(d, k, None) for k in ("p", "wins", "ties", "losses")}
        record |= {
            "param_count": g.param_count,
            "param_count_stock": g.param_count_stock,
            "seconds_per_step": g.seconds_per_step,
        }
        for name in RANK_METRICS:
            record |= stats(f"{name}_", g.extras.get(name))
        records.append(record | {"runs": ";".join(r.name for r in g.runs)})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return text.getvalue()


def runs_csv(comparison: Comparison) -> str:
    """``runs.csv``: one row per compared run: its group, seed, the metric's value (as compared),
    the rank metrics and ECE when it has them, its name and where it was read.

    Example: ``runs_csv(compare_runs(runs))``
    """
    records = []
    for g in comparison.groups:
        for run, value in zip(g.runs, g.values, strict=True):
            extra = {k: run_value(run, k, comparison.which) for k in ("ece", *RANK_METRICS)}
            records.append(
                {"group": g.label, **g.key, comparison.seed_key: run.config.get(comparison.seed_key)}
                | {comparison.metric: value}
                | {k: v for k, v in extra.items() if k != comparison.metric}
                | {"name": run.name, "location": run.location}
            )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return text.getvalue()


def write_report(
    comparison: Comparison, out: str | os.PathLike, command: str, x: str | None = None
) -> list[Path]:
    """Write the figures that have data, ``comparison.md``, ``comparison.csv`` and ``runs.csv`` into
    ``out`` (created); returns the paths written.

    Example: ``write_report(compare_runs(runs), "report", "python -m timm_overparam.compare output/x")``
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {str(folder)!r} is a file: name a folder for the report")
    folder.mkdir(parents=True, exist_ok=True)
    metric = comparison.metric
    figures = [
        plot_by_group(comparison, metric, folder / f"{metric}_by_group.png", x),
        plot_curves(comparison, folder / f"{metric}_curves.png"),
        plot_points(comparison, folder / f"{metric}_points.png"),
        plot_reliability(comparison, folder / "reliability.png"),
        plot_by_group(comparison, "erank", folder / "erank_by_group.png", x),
    ]
    figures = [f for f in figures if f is not None]
    write_text_atomic(folder / "comparison.md", to_markdown(comparison, command, [str(f) for f in figures]))
    write_text_atomic(folder / "comparison.csv", to_csv(comparison))
    write_text_atomic(folder / "runs.csv", runs_csv(comparison))
    return [*figures, folder / "comparison.md", folder / "comparison.csv", folder / "runs.csv"]


# ------------------------------------------------------------------------------------------- figures
def _save(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _figure(width: float = 6.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure  # import cost: only when a figure is drawn

    return Figure(figsize=(width, height), layout="constrained")


def _x_positions(comparison: Comparison, x: str) -> tuple[list[Any], bool]:
    """Each group's value of the key ``x`` (one per group) and whether they are all numbers."""
    keys = sorted({k for g in comparison.groups for r in g.runs for k in r.config})
    if x not in keys:
        raise ValueError(f"--x {x!r}: no run has this key; the keys are {keys}")
    values = []
    for g in comparison.groups:
        seen = sorted({str(r.config.get(x)) for r in g.runs}, key=natural_key)
        if len(seen) > 1:
            raise ValueError(
                f"--x {x!r} varies inside group {g.label} ({seen}): add it to --group-by (e.g. --group-by "
                f"{','.join([*comparison.group_by, x])}) or --filter it"
            )
        values.append(g.runs[0].config.get(x))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return values, numeric


def plot_by_group(
    comparison: Comparison, metric: str, path: str | os.PathLike, x: str | None = None
) -> Path | None:
    """``metric`` by group: the mean with its 95% interval and every run as a dot; with ``x`` (a config
    key, numeric) against x with a line per series (the other group-by keys). None without data.

    Example: ``plot_by_group(compare_runs(runs, ["model", "depth"]), "top1", "top1.png", x="depth")``
    """
    data = []
    for g in comparison.groups:
        values = [v for v in (run_value(r, metric, comparison.which) for r in g.runs) if v is not None]
        data.append((g, values, summarize(values) if values else None))
    if not any(values for _, values, _ in data):
        return None
    xs, numeric = _x_positions(comparison, x) if x is not None else ([None] * len(data), False)
    fig = _figure()
    ax = fig.add_subplot()
    if numeric:
        others = [k for k in comparison.group_by if k != x]
        series: dict[str, list[tuple[float, list[float], Summary]]] = {}
        for (g, values, s), xv in zip(data, xs, strict=True):
            if s is not None:
                name = ",".join(f"{k}={g.key[k]}" for k in others) or metric
                series.setdefault(name, []).append((xv, values, s))
        for i, (name, points) in enumerate(series.items()):
            points.sort(key=lambda p: p[0])
            color = f"C{i % 10}"
            ax.errorbar(
                [p[0] for p in points],
                [p[2].mean for p in points],
                yerr=[p[2].ci or 0 for p in points],
                color=color,
                marker="o",
                capsize=4,
                label=name,
            )
            for xv, values, _ in points:
                ax.scatter([xv] * len(values), values, color=color, alpha=0.4, s=14, zorder=3)
        ax.set_xlabel(x)
        ax.legend(fontsize=7)
    else:
        for i, (_, values, s) in enumerate(data):
            if s is None:
                continue
            ax.errorbar([i], [s.mean], yerr=[s.ci or 0], color="C0", marker="o", capsize=5)
            jitter = [0.12 * (j / max(len(values) - 1, 1) - 0.5) for j in range(len(values))]
            ax.scatter([i + j for j in jitter], values, color="C1", alpha=0.6, s=14, zorder=3)
        labels = [g.label for g, _, _ in data]
        ax.set_xticks(range(len(data)), labels, rotation=30 if max(map(len, labels)) > 8 else 0, fontsize=8)
        ax.set_xlabel(", ".join(comparison.group_by))
    ax.set_ylabel(f"{metric} ({comparison.which}; mean, 95% CI, runs as dots)")
    return _save(fig, path)


def plot_curves(comparison: Comparison, path: str | os.PathLike) -> Path | None:
    """The compared metric per epoch: each group's mean with a 95% band. None without history.

    Example: ``plot_curves(compare_runs(runs), "top1_curves.png")``
    """
    metric = comparison.metric
    curves = []
    for g in comparison.groups:
        by_epoch: dict[int, list[float]] = {}
        for run in g.runs:
            for row in run.history:
                if metric in row:
                    by_epoch.setdefault(int(row["epoch"]), []).append(row[metric])
        if by_epoch:
            epochs = sorted(by_epoch)
            curves.append((g.label, epochs, [summarize(by_epoch[e]) for e in epochs]))
    if not curves:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, epochs, sums) in enumerate(curves):
        color = f"C{i % 10}"
        mean = [s.mean for s in sums]
        ax.plot(epochs, mean, color=color, label=label)
        ax.fill_between(
            epochs,
            [s.mean - (s.ci or 0) for s in sums],
            [s.mean + (s.ci or 0) for s in sums],
            color=color,
            alpha=0.2,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (mean, 95% band)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_points(comparison: Comparison, path: str | os.PathLike) -> Path | None:
    """Subspace groups: the metric at each evaluated point (x = point a, mean with 95% band) and each
    ensemble as a dashed line with its band. None when no run evaluated points.

    Example: ``plot_points(compare_runs(runs, metric="top1"), "top1_points.png")``
    """
    base = (
        comparison.metric.split("_")[-1] if re.match(r"(point|ens)", comparison.metric) else comparison.metric
    )
    pattern = re.compile(rf"(point|ens)(.+)_{re.escape(base)}$")
    drawn = []
    for g in comparison.groups:
        names = sorted({k for r in g.runs for k in r.final if pattern.match(k)}, key=natural_key)
        stats = {}
        for key in names:
            values = [v for v in (run_value(r, key, comparison.which) for r in g.runs) if v is not None]
            if values:
                stats[key] = summarize(values)
        if stats:
            drawn.append((g.label, stats))
    if not drawn:
        return None
    points = sorted(
        {pattern.match(k)[2] for _, st in drawn for k in st if k.startswith("point")}, key=natural_key
    )
    numeric = all(re.fullmatch(r"-?\d+(\.\d+)?", p) for p in points)
    where = {p: float(p) if numeric else i for i, p in enumerate(points)}
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, st) in enumerate(drawn):
        color = f"C{i % 10}"
        at = sorted((where[pattern.match(k)[2]], s) for k, s in st.items() if k.startswith("point"))
        if at:
            ax.plot([a for a, _ in at], [s.mean for _, s in at], color=color, marker="o", label=label)
            ax.fill_between(
                [a for a, _ in at],
                [s.mean - (s.ci or 0) for _, s in at],
                [s.mean + (s.ci or 0) for _, s in at],
                color=color,
                alpha=0.2,
            )
        for k, s in st.items():
            if k.startswith("ens"):
                ax.axhline(s.mean, color=color, ls="--", label=f"{label} ensemble {pattern.match(k)[2]}")
                ax.axhspan(s.mean - (s.ci or 0), s.mean + (s.ci or 0), color=color, alpha=0.08)
    if not numeric:
        ax.set_xticks(range(len(points)), points, rotation=30, fontsize=6)
    ax.set_xlabel("point a" if numeric else "point")
    ax.set_ylabel(f"{base} (mean, 95% band)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def pool_reliability(runs: Sequence[Run], name: str) -> tuple[list[float], list[float]]:
    """Mean confidence and accuracy per non-empty bin of the reliability diagram ``name``, pooled
    over the ``runs`` that have it (each run's bin weighted by its sample count).

    >>> d = {"count": [10, 0], "confidence": [0.25, None], "accuracy": [0.2, None]}
    >>> e = {"count": [30, 0], "confidence": [0.35, None], "accuracy": [0.4, None]}
    >>> runs = [Run(n, "folder", n, {}, {}, reliability={"model": x}) for n, x in (("a", d), ("b", e))]
    >>> [round(v, 6) for v in pool_reliability(runs, "model")[0]]
    [0.325]
    """
    diagrams = [r.reliability[name] for r in runs if name in r.reliability]
    confidence: list[float] = []
    accuracy: list[float] = []
    for b in range(len(diagrams[0]["count"])):
        weighted = [
            (d["count"][b], d["confidence"][b], d["accuracy"][b])
            for d in diagrams
            if d["count"][b] and d["confidence"][b] is not None
        ]
        total = sum(c for c, _, _ in weighted)
        if total:
            confidence.append(sum(c * conf for c, conf, _ in weighted) / total)
            accuracy.append(sum(c * acc for c, _, acc in weighted) / total)
    return confidence, accuracy


def plot_reliability(comparison: Comparison, path: str | os.PathLike) -> Path | None:
    """A reliability diagram per group (accuracy against confidence, bins pooled over its runs, the
    diagonal for reference), ECE in the legend as mean ± 95% CI over runs. None without bins.

    Example: ``plot_reliability(compare_runs(runs), "reliability.png")``
    """
    panels = [
        (g, sorted({n for r in g.runs for n in r.reliability}, key=natural_key)) for g in comparison.groups
    ]
    panels = [(g, names) for g, names in panels if names]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(3.2 * cols, 3.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (g, names) in zip(axes, panels, strict=False):
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        for i, name in enumerate(names):
            confidence, accuracy = pool_reliability(g.runs, name)
            eces = [
                r.final[k] for r in g.runs if (k := "ece" if name == "model" else f"{name}_ece") in r.final
            ]
            ece = f", ECE {_pm(summarize(eces), lambda v: f'{v:.3f}')}" if eces else ""
            ax.plot(confidence, accuracy, marker="o", ms=3, color=f"C{i % 10}", label=f"{name}{ece}")
        ax.set(title=g.label, xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _save(fig, path)
