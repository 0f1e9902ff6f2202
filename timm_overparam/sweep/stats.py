"""Group statistics of runs: selection, grouping by config keys, Student-t intervals, paired differences.

``compare_runs(runs, group_by=["model"], metric="top1")`` groups the runs by their config values and
gives each group n, mean, std (ddof=1), the 95% confidence interval of the mean
(``scipy.stats.t.ppf(0.975, n - 1) * std / sqrt(n)``; none for n = 1), min and max, and the paired
difference against a baseline group over the seeds both have (its mean, t interval, paired t-test
p from ``scipy.stats.ttest_rel``, wins/ties/losses), with mean parameter counts, seconds per step
and the effective-rank metrics when the runs have them. Groups sort naturally: numbers by value,
``resnet18 < resnet18_op2 < resnet18_op3 < resnet50``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from timm_overparam.sweep.runs import LOWER_IS_BETTER, Run

__all__ = [
    "Comparison",
    "Group",
    "Paired",
    "Summary",
    "Which",
    "compare_runs",
    "filter_runs",
    "natural_key",
    "paired",
    "run_value",
    "summarize",
    "wilson_interval",
]

CONFIDENCE = 0.95
RANK_METRICS = ("erank", "rank_entropy")  # summarised per group when the runs logged them (--log-rank)
Which = Literal["final", "best"]


@dataclass(frozen=True)
class Summary:
    """n, mean, std (ddof=1), the half-width of the 95% t interval of the mean, min and max.

    ``std`` and ``ci`` are None for n = 1 (no spread to estimate an interval from).
    """

    n: int
    mean: float
    std: float | None
    ci: float | None
    min: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    """The summary of ``values``; the interval is Student t's with n - 1 degrees of freedom.

    >>> s = summarize([0.90, 0.92, 0.94])
    >>> round(s.mean, 6), round(s.std, 6), round(s.ci, 6)
    (0.92, 0.02, 0.049683)
    >>> summarize([0.5]).ci is None
    True
    """
    if not values:
        raise ValueError("summarize needs at least one value")
    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else None
    return Summary(n, mean, std, _half_width(std, n), min(values), max(values))


def _half_width(std: float | None, n: int) -> float | None:
    from scipy import stats  # import cost: only when a comparison is made

    return None if std is None else float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of the proportion ``k / n`` (``scipy.stats.binomtest``'s).

    >>> [round(v, 4) for v in wilson_interval(4, 5)]
    [0.3755, 0.9638]
    """
    from scipy.stats import binomtest  # import cost: only when a comparison is made

    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Paired:
    """A group minus the baseline over the seeds both have: n pairs, mean and std of the differences,
    the half-width of their 95% t interval, the paired t-test's p (None for n < 2 or equal
    differences), and wins/ties/losses (better/equal/worse than the baseline seed by seed)."""

    n: int
    mean: float
    std: float | None
    ci: float | None
    p: float | None
    wins: int
    ties: int
    losses: int


def paired(
    values: dict[Any, float], baseline: dict[Any, float], lower_is_better: bool = False
) -> Paired | None:
    """The paired difference ``values - baseline`` over their common keys (seeds); None if none.

    >>> d = paired({0: 0.91, 1: 0.95, 2: 0.96, 7: 0.5}, {0: 0.90, 1: 0.92, 2: 0.94})
    >>> d.n, round(d.mean, 6), round(d.ci, 6), round(d.p, 4), (d.wins, d.ties, d.losses)
    (3, 0.02, 0.024841, 0.0742, (3, 0, 0))
    """
    from scipy import stats  # import cost: only when a comparison is made

    seeds = sorted(set(values) & set(baseline), key=natural_key)
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    summary = summarize(diffs)
    equal = math.isclose(min(diffs), max(diffs), rel_tol=1e-9, abs_tol=1e-12)
    p = (
        None
        if len(seeds) < 2 or equal
        else float(stats.ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    )
    sign = -1 if lower_is_better else 1
    ties = sum(math.isclose(d, 0.0, abs_tol=1e-12) for d in diffs)
    wins = sum(sign * d > 0 and not math.isclose(d, 0.0, abs_tol=1e-12) for d in diffs)
    return Paired(len(seeds), summary.mean, summary.std, summary.ci, p, wins, ties, len(seeds) - wins - ties)


@dataclass
class Group:
    """The runs of one group (their config values ``key``), their values of the compared metric
    (aligned with ``runs``) and the group's statistics."""

    label: str
    key: dict[str, Any]
    runs: list[Run]
    values: list[float]
    summary: Summary
    paired: Paired | None = None
    param_count: int | None = None
    param_count_stock: int | None = None
    seconds_per_step: float | None = None
    extras: dict[str, Summary] = field(default_factory=dict)  # erank, rank_entropy


@dataclass
class Comparison:
    """What ``compare_runs`` found: the groups in natural order and the notes for the reader."""

    metric: str
    which: Which
    group_by: list[str]
    seed_key: str
    baseline: str | None
    groups: list[Group]
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ values
def natural_key(value: Any) -> tuple:
    """A sort key: numbers by value, text with its digit runs as numbers, None last.

    >>> sorted(["resnet18_op3", "resnet50", "resnet18", "resnet18_op2"], key=natural_key)
    ['resnet18', 'resnet18_op2', 'resnet18_op3', 'resnet50']
    >>> sorted([10, 2, None, 0.5], key=natural_key)
    [0.5, 2, 10, None]
    """
    if value is None:
        return (2,)
    if isinstance(value, (int, float)):
        return (0, value)
    parts = re.split(r"(\d+(?:\.\d+)?)", str(value))
    return (1, tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p))


def run_value(run: Run, metric: str, which: Which = "final") -> float | None:
    """The run's ``metric`` at its last evaluation (``final``) or at its best epoch (``best``: the
    epoch of its best checkpoint); None if the run lacks it.

    >>> run_value(Run("a", "folder", "a", {}, {"top1": 0.9}), "top1")
    0.9
    """
    if which == "final":
        return run.final.get(metric)
    row = next((r for r in run.history if r.get("epoch") == run.best_epoch), {})
    return row.get(metric)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _label(key: dict[str, Any]) -> str:
    if len(key) == 1:
        return str(next(iter(key.values())))
    return ",".join(f"{k}={v}" for k, v in key.items())


def _keys(runs: Sequence[Run]) -> list[str]:
    return sorted({k for r in runs for k in r.config})


def _matches(value: Any, wanted: str) -> bool:
    """Whether a config value equals the text of a ``--filter`` (numbers compared as numbers)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() == wanted.lower() or (value is None and wanted.lower() == "null")
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == value
        except ValueError:
            return False
    return str(value) == wanted


# -------------------------------------------------------------------------------------- selection
def filter_runs(runs: Sequence[Run], filters: Sequence[str]) -> list[Run]:
    """The runs whose config matches every ``key=value`` filter (``key=a,b``: either value).

    >>> runs = [Run(m, "folder", m, {"model": m}, {}) for m in ("resnet18", "resnet50")]
    >>> [r.name for r in filter_runs(runs, ["model=resnet50"])]
    ['resnet50']
    """
    keys = _keys(runs)
    for text in filters:
        key, sep, wanted = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter {text!r}: write KEY=VALUE, e.g. --filter model=resnet18")
        if key not in keys:
            raise ValueError(f"--filter {text!r}: no run has the key {key!r}; the keys are {keys}")
        kept = [r for r in runs if any(_matches(r.config.get(key), w) for w in wanted.split(","))]
        if not kept:
            values = sorted({str(r.config.get(key)) for r in runs}, key=natural_key)
            raise ValueError(f"--filter {text!r} matches no run; the values of {key!r} are {values}")
        runs = kept
    return list(runs)


# -------------------------------------------------------------------------------------- comparison
def compare_runs(
    runs: Sequence[Run],
    group_by: Sequence[str] = ("model",),
    metric: str = "top1",
    which: Which = "final",
    baseline: str | None = None,
    seed_key: str = "seed",
    filters: Sequence[str] = (),
    include_unfinished: bool = False,
) -> Comparison:
    """Group ``runs`` by the config keys ``group_by`` and compare ``metric`` across the groups (see
    the module docstring); unfinished runs are left out (counted in the notes) unless
    ``include_unfinished``, which takes them at their last evaluation.

    Example: ``compare_runs(read_runs(["output/sweeps/digits_depth"]), ["model"], "top1")``
    """
    if which not in ("final", "best"):
        raise ValueError(
            f"which={which!r}: choose 'final' (the last epoch) or 'best' (the best checkpoint's)"
        )
    if not runs:
        raise ValueError("no runs to compare")
    group_by = list(group_by)
    keys = _keys(runs)
    missing = [k for k in group_by if k not in keys]
    if not group_by:
        raise ValueError(f"--group-by needs at least one key; the keys are {keys}")
    if missing:
        raise ValueError(
            f"--group-by {','.join(group_by)!r}: no run has the key(s) {missing}; the keys are {keys}"
        )
    notes: list[str] = []
    runs = filter_runs(runs, filters)
    if filters:
        notes.append(f"filters {' '.join(filters)}: {len(runs)} runs kept")
    unfinished = [r for r in runs if not r.finished]
    if unfinished and not include_unfinished:
        states = sorted({r.state for r in unfinished})
        notes.append(
            f"{len(unfinished)} unfinished run(s) left out ({', '.join(states)}: "
            f"{', '.join(r.name for r in unfinished[:5])}{' ...' if len(unfinished) > 5 else ''}); "
            f"--include-unfinished compares them at their last evaluation"
        )
        runs = [r for r in runs if r.finished]
    elif unfinished:
        notes.append(f"{len(unfinished)} unfinished run(s) compared at their last evaluation")
    if not runs:
        raise ValueError(
            "every run is unfinished: pass --include-unfinished to compare them at their last epoch"
        )
    valued = [(r, run_value(r, metric, which)) for r in runs]
    if all(v is None for _, v in valued):
        names = sorted(
            {k for r in runs for k in (r.final if which == "final" else _row_keys(r))}, key=natural_key
        )
        raise ValueError(f"--metric {metric!r}: no run has it ({which}); the metrics are {names}")
    lacking = [r.name for r, v in valued if v is None]
    if lacking:
        notes.append(f"{len(lacking)} run(s) without {metric} left out: {', '.join(lacking[:5])}")
    grouped: dict[tuple, list[tuple[Run, float]]] = {}
    for run, value in valued:
        if value is not None:
            grouped.setdefault(tuple(_hashable(run.config.get(k)) for k in group_by), []).append((run, value))
    groups = [
        _group(dict(zip(group_by, key, strict=True)), members, which)
        for key, members in sorted(grouped.items(), key=lambda kv: tuple(natural_key(v) for v in kv[0]))
    ]
    labels = [g.label for g in groups]
    if baseline is not None and baseline not in labels:
        raise ValueError(f"--baseline {baseline!r} is not a group; the groups are {labels}")
    base = next(g for g in groups if g.label == (baseline if baseline is not None else labels[0]))
    if len(groups) > 1:
        notes += _pair(groups, base, metric, seed_key, keys)
    single = [g.label for g in groups if g.summary.n == 1]
    if single:
        notes.append(f"one run only, so no interval: {', '.join(single)}")
    return Comparison(
        metric, which, group_by, seed_key, base.label if len(groups) > 1 else None, groups, notes
    )


def _row_keys(run: Run) -> list[str]:
    return [k for row in run.history for k in row]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _count(values: list[int | None]) -> int | None:
    """The (rounded) mean parameter count of the runs that recorded one."""
    mean = _mean(values)
    return None if mean is None else round(mean)


def _group(key: dict[str, Any], members: list[tuple[Run, float]], which: Which) -> Group:
    runs = [r for r, _ in members]
    extras = {}
    for name in RANK_METRICS:
        values = [v for v in (run_value(r, name, which) for r in runs) if v is not None]
        if values:
            extras[name] = summarize(values)
    return Group(
        _label(key),
        key,
        runs,
        [v for _, v in members],
        summarize([v for _, v in members]),
        param_count=_count([r.param_count for r in runs]),
        param_count_stock=_count([r.param_count_stock for r in runs]),
        seconds_per_step=_mean([r.seconds_per_step for r in runs]),
        extras=extras,
    )


def _by_seed(group: Group, seed_key: str, keys: list[str]) -> tuple[dict[Any, float] | None, str | None]:
    """The group's values by seed, or a note saying why they cannot be paired."""
    seen: dict[Any, list[tuple[Run, float]]] = {}
    for run, value in zip(group.runs, group.values, strict=True):
        seed = _hashable(run.config.get(seed_key))
        if seed is not None:  # a run without a seed pairs with nothing
            seen.setdefault(seed, []).append((run, value))
    twice = {s: [r for r, _ in m] for s, m in seen.items() if len(m) > 1}
    if twice:
        seed, rs = next(iter(twice.items()))
        differ = [k for k in keys if len({_hashable(r.config.get(k)) for r in rs}) > 1]
        return None, (
            f"group {group.label}: {len(rs)} runs with {seed_key}={seed} ({', '.join(r.name for r in rs[:3])}); "
            f"add the key that tells them apart to --group-by (they differ in {differ[:6]}) or --filter it"
        )
    return {seed: m[0][1] for seed, m in seen.items()}, None


def _pair(groups: list[Group], base: Group, metric: str, seed_key: str, keys: list[str]) -> list[str]:
    """Set each group's paired difference against ``base``; returns the notes on what was left out."""
    if seed_key not in keys:
        return [
            f"no paired differences: no run has the key {seed_key!r} (name the pairing key with --seed-key; the keys are {keys})"
        ]
    base_values, note = _by_seed(base, seed_key, keys)
    if base_values is None:
        return [f"no paired differences: {note}"]
    notes = []
    lower = metric.split("_")[-1] in LOWER_IS_BETTER
    for group in groups:
        if group is base:
            continue
        values, note = _by_seed(group, seed_key, keys)
        if values is None:
            notes.append(f"no paired difference for {note}")
            continue
        group.paired = paired(values, base_values, lower)
        only = [
            sorted(set(a) - set(b), key=natural_key)
            for a, b in ((values, base_values), (base_values, values))
        ]
        if any(only):
            where = [
                f"{seeds} only in {g.label}" for seeds, g in zip(only, (group, base), strict=True) if seeds
            ]
            notes.append(
                f"{group.label} vs {base.label}: {seed_key} {', '.join(where)}: left out of the pairs"
            )
    return notes
