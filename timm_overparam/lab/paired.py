"""Paired comparisons in a lab run: each variant (op, line) against its base model at the same size.

At one size every model's restart ``r`` has the same seed, hence the same data and, for an op
variant (``init='preserve'``) or a line's first vertex, the base model's initial function: the
variant and the base differ only by their parametrization. Over the seeds both hold:

- the metric: mean paired difference, its 95% t interval and the paired t-test's p
  (``sweep.stats.paired``), wins/ties/losses;
- success: the difference of success rates with Newcombe's hybrid score interval for paired
  proportions (Newcombe 1998, method 10, built on Wilson intervals) and McNemar's exact p (a
  binomial test on the discordant restarts: the variant alone succeeds ``b`` times, the base
  alone ``c`` times).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from timm_overparam.sweep.stats import Paired, natural_key, paired, wilson_interval

__all__ = ["PairedRow", "newcombe_interval", "paired_rows", "paired_table"]


@dataclass(frozen=True)
class PairedRow:
    """A variant minus its base at one size over ``n`` shared restarts: ``metric`` (``Paired``), the
    success-rate difference ``success`` with its 95% interval, the discordant counts ``b`` (variant
    alone succeeds) and ``c`` (base alone succeeds), McNemar's exact ``p``."""

    model: str
    base: str
    size: int
    n: int
    metric: Paired
    success: float
    success_low: float
    success_high: float
    b: int
    c: int
    p: float


def newcombe_interval(both: int, b: int, c: int, neither: int) -> tuple[float, float]:
    """95% interval of ``p1 - p2`` for paired successes (Newcombe 1998, method 10).

    ``both``: both succeed; ``b``: only the first; ``c``: only the second; ``neither``.

    The correlation of the pairs is Newcombe's ``phi``, continuity-corrected when positive.

    >>> [round(v, 4) for v in newcombe_interval(59, 6, 16, 80)]
    [-0.1186, -0.0046]
    """
    n = both + b + c + neither
    if n == 0:
        raise ValueError("newcombe_interval needs at least one pair")
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = wilson_interval(both + b, n)
    l2, u2 = wilson_interval(both + c, n)
    denominator = (both + b) * (c + neither) * (both + c) * (b + neither)
    cross = both * neither - b * c
    if cross > 0:  # Newcombe's continuity-corrected correlation
        cross = max(cross - n / 2, 0.0)
    phi = 0.0 if denominator == 0 else cross / math.sqrt(denominator)
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def paired_rows(results: dict[str, Any], success: float | None = None) -> list[PairedRow]:
    """One row per op/line config whose plain base model ran at the same size (sorted).

    Example: ``rows = paired_rows(load_results("output/lab/pattern"))``
    """
    from scipy.stats import binomtest

    threshold = float(results["settings"]["success"] if success is None else success)
    configs = results["configs"]
    rows = []
    for config in configs.values():
        base = configs.get(f"{config.get('base')}:{config['size']}")
        if config.get("family", "plain") == "plain" or base is None:
            continue
        ours = dict(zip(config["seeds"], config["metric"], strict=True))
        theirs = dict(zip(base["seeds"], base["metric"], strict=True))
        shared = [s for s in ours if s in theirs]
        if not shared:
            continue
        diff = paired({s: ours[s] for s in shared}, {s: theirs[s] for s in shared})
        wins = [(ours[s] >= threshold, theirs[s] >= threshold) for s in shared]
        both = sum(a and t for a, t in wins)
        b = sum(a and not t for a, t in wins)
        c = sum(t and not a for a, t in wins)
        low, high = newcombe_interval(both, b, c, len(shared) - both - b - c)
        p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
        rows.append(
            PairedRow(
                config["model"],
                base["model"],
                config["size"],
                len(shared),
                diff,
                (b - c) / len(shared),
                low,
                high,
                b,
                c,
                p,
            )
        )
    return sorted(rows, key=lambda r: (natural_key(r.model), r.size))


def _signed_pct(value: float) -> str:
    return f"{100 * value:+.1f}%"


def paired_table(rows: Sequence[PairedRow], metric_name: str) -> str:
    """A markdown table of ``paired_rows``: differences variant - base with 95% intervals and p."""
    headers = [
        "model",
        "against",
        "size",
        "pairs",
        f"Δ {metric_name} [95% CI]",
        "paired t p",
        "wins/ties/losses",
        "Δ success rate [95% CI]",
        "only variant / only base succeed",
        "McNemar p",
    ]
    out = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|",
    ]
    for r in rows:
        m = r.metric
        ci = "" if m.ci is None else f" [{m.mean - m.ci:+.3f}, {m.mean + m.ci:+.3f}]"
        cells = [
            r.model,
            r.base,
            str(r.size),
            str(r.n),
            f"{m.mean:+.3f}{ci}",
            "" if m.p is None else f"{m.p:.2g}",
            f"{m.wins}/{m.ties}/{m.losses}",
            f"{_signed_pct(r.success)} [{_signed_pct(r.success_low)}, {_signed_pct(r.success_high)}]",
            f"{r.b} / {r.c}",
            f"{r.p:.2g}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
