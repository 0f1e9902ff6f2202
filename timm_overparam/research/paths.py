"""The weights of trained depth-limit networks as paths in the layers (seed 002's path-norm, path-weights).

    python -m timm_overparam.research.paths norm RUNS_DIR --beta 0.75 [--pvar P] [--pvar-only] [--out path-norm.png]
    python -m timm_overparam.research.paths weights RUN_DIR_OR_FILE --entries 0,0 3,4 --beta 0.75 [--out path-weights.png]

``norm`` reads every ``blocks.safetensors`` under RUNS_DIR (one per run), groups the runs by
their depth L and plots ``k/L -> |L^beta W_k|_F``: the mean over runs with its 95% t interval, one
line per L; ``--pvar P`` also prints each L's p-variation of the path ``t -> L^beta vec(W_t)``,
rooted (``(p-var)^(1/p)``, as the seed logs it); ``--pvar-only`` prints the largest over each L's
runs and draws nothing. ``weights`` plots chosen entries ``L^beta W_k[i, j]`` of one run against
``k/L``. matplotlib and scipy load only when a plot or an interval is made.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from timm_overparam.core.atomic import atomic_path
from timm_overparam.research.blocks import BLOCKS_FILE, load_blocks, weights_path

__all__ = [
    "NormCurve",
    "find_blocks",
    "main",
    "norm_curves",
    "path_pvariations",
    "plot_norm",
    "plot_weights",
    "weight_entries",
]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class NormCurve:
    """``k/L -> |L^beta W_k|_F`` of the runs of one depth L: per run (``norms``, runs x L), mean,
    and the 95% t interval of the mean (``low``/``high``: None for a single run)."""

    L: int
    dim: tuple[int, ...]
    files: tuple[Path, ...]
    x: np.ndarray
    norms: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None


def find_blocks(root: str | os.PathLike, name: str = BLOCKS_FILE) -> list[Path]:
    """Every ``name`` file under the folder ``root`` (sorted), or ``[root]`` for a file; none is an error."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is neither a folder of runs nor a blocks file")
    files = sorted(p for p in root.rglob(name) if p.is_file())
    if not files:
        raise ValueError(
            f"no {name} under {str(root)!r}: a training run of a model with block_weights() "
            "(depth_limit_resnet) writes one into its run folder"
        )
    return files


def _by_depth(files: Sequence[Path]) -> dict[int, list[tuple[Path, Tensor]]]:
    groups: dict[int, list[tuple[Path, Tensor]]] = {}
    for f in files:
        w = load_blocks(f)
        groups.setdefault(int(w.shape[0]), []).append((f, w))
    return dict(sorted(groups.items()))


def _half_width(norms: np.ndarray) -> np.ndarray | None:
    n = norms.shape[0]
    if n < 2:
        return None
    from scipy import stats  # import cost: only when an interval is drawn

    t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
    return t * norms.std(axis=0, ddof=1) / math.sqrt(n)


def norm_curves(files: Sequence[str | os.PathLike], beta: float) -> dict[int, NormCurve]:
    """The ``NormCurve`` of each depth L among the blocks ``files`` (one file per run), by L.

    Runs of one L must share the block shape (the dimension), else a ValueError names them.
    """
    out = {}
    for L, runs in _by_depth([Path(f) for f in files]).items():
        shapes = {tuple(w.shape[1:]) for _, w in runs}
        if len(shapes) > 1:
            raise ValueError(
                f"the runs with L={L} have different block shapes {sorted(shapes)}: "
                f"{[str(f) for f, _ in runs][:4]}; put runs of one configuration under RUNS_DIR"
            )
        norms = np.stack([weights_path(w, beta).double().norm(dim=1).numpy() for _, w in runs])
        half = _half_width(norms)
        mean = norms.mean(axis=0)
        out[L] = NormCurve(
            L=L,
            dim=shapes.pop(),
            files=tuple(f for f, _ in runs),
            x=np.arange(1, L + 1) / L,
            norms=norms,
            mean=mean,
            low=None if half is None else mean - half,
            high=None if half is None else mean + half,
        )
    return out


def path_pvariations(files: Sequence[str | os.PathLike], beta: float, p: float) -> dict[int, list[float]]:
    """Each run's rooted p-variation ``(p-var)^(1/p)`` of ``t -> L^beta vec(W_t)``, grouped by L."""
    from timm_overparam.research.pvariation import p_variation  # numpy only; imported when used

    return {
        L: [p_variation(weights_path(w, beta).double(), p) ** (1.0 / p) for _, w in runs]
        for L, runs in _by_depth([Path(f) for f in files]).items()
    }


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    return path


def plot_norm(curves: dict[int, NormCurve], beta: float, path: str | os.PathLike) -> Path:
    """One line per L (mean over runs, 95% band), saved atomically to ``path``; returns it."""
    from matplotlib.figure import Figure  # import cost: only when plotting

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, c in enumerate(curves.values()):
        ax.plot(
            c.x,
            c.mean,
            color=f"C{i}",
            lw=1.2,
            label=f"L={c.L} ({_n_runs(len(c.files))})",
        )
        if c.low is not None:
            ax.fill_between(c.x, c.low, c.high, color=f"C{i}", alpha=0.25, lw=0)
    ax.set_xlabel("k / L")
    ax.set_ylabel(rf"$\|L^{{{beta:g}}} W_k\|_F$")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _parse_entry(text: str) -> tuple[int, int]:
    try:
        i, j = (int(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"an entry is 'i,j' (two integers, e.g. 0,0), got {text!r}") from None
    return i, j


def weight_entries(
    weights: Tensor, entries: Sequence[tuple[int, int]], beta: float
) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """``k/L`` and, for each ``(i, j)``, ``L^beta W_k[i, j]`` (k = 1..L) of one run's (L, d1, d2) weights.

    >>> import torch
    >>> x, ys = weight_entries(torch.ones(4, 2, 2), [(1, 0)], beta=0.5)
    >>> x.tolist(), ys[(1, 0)].tolist()
    ([0.25, 0.5, 0.75, 1.0], [2.0, 2.0, 2.0, 2.0])
    """
    w = weights
    if not isinstance(w, Tensor) or w.dim() != 3:
        raise ValueError(
            f"block weights must be an (L, dim, dim) tensor, got {list(getattr(w, 'shape', [])) or type(w).__name__}"
        )
    L, d1, d2 = w.shape
    if not entries:
        raise ValueError("give at least one entry i,j")
    scaled = weights_path(w, beta).reshape(L, d1, d2).double().numpy()
    out = {}
    for i, j in entries:
        if not (0 <= i < d1 and 0 <= j < d2):
            raise ValueError(
                f"entry {i},{j} is outside the {d1} x {d2} block weights: i must be in 0..{d1 - 1} "
                f"and j in 0..{d2 - 1}"
            )
        out[(i, j)] = scaled[:, i, j]
    return np.arange(1, L + 1) / L, out


def plot_weights(
    x: np.ndarray,
    entries: dict[tuple[int, int], np.ndarray],
    beta: float,
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """One line per entry ``L^beta W_k[i, j]`` against ``k/L``, saved atomically to ``path``; returns it."""
    from matplotlib.figure import Figure  # import cost: only when plotting

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for (i, j), y in entries.items():
        ax.plot(x, y, lw=1.2, label=f"[{i}, {j}]")
    ax.set_xlabel("k / L")
    ax.set_ylabel(rf"$L^{{{beta:g}}} W_k[i, j]$")
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _one_file(target: str | os.PathLike, name: str) -> Path:
    target = Path(target)
    if target.is_file():
        return target
    if target.is_dir() and (target / name).is_file():
        return target / name
    files = find_blocks(target, name)
    if len(files) > 1:
        raise ValueError(
            f"{len(files)} {name} files under {str(target)!r} ({', '.join(str(f) for f in files[:3])}, ...): "
            "give one run folder or one file"
        )
    return files[0]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _n_runs(n: int) -> str:
    return f"{n} run{'s' * (n != 1)}"


def run_norm(args: argparse.Namespace) -> str:
    """The ``norm`` command: returns the text it prints."""
    files = find_blocks(args.runs_dir, args.name)
    if args.pvar_only and args.pvar is None:
        raise ValueError("--pvar-only needs --pvar P (the p of the p-variation)")
    lines = [f"{_n_runs(len(files))} under {args.runs_dir} (beta {args.beta:g})"]
    if args.pvar is not None:
        pvs = path_pvariations(files, args.beta, args.pvar)
        title = f"p-variation (p={args.pvar:g}, rooted: (p-var)^(1/p)) of t -> L^beta vec(W_t)"
        lines.append(title + (": largest over the runs" if args.pvar_only else ""))
        for L, values in pvs.items():
            if args.pvar_only:
                lines.append(f"  L={L}: max {_fmt(max(values))} over {_n_runs(len(values))}")
            else:
                lines.append(
                    f"  L={L}: mean {_fmt(float(np.mean(values)))}, max {_fmt(max(values))} over "
                    f"{_n_runs(len(values))} ({', '.join(_fmt(v) for v in values[:8])}{', ...' if len(values) > 8 else ''})"
                )
        if args.pvar_only:
            return "\n".join(lines) + "\n"
    curves = norm_curves(files, args.beta)
    lines.append("|L^beta W_k|_F, mean over runs:")
    for L, c in curves.items():
        k0, k1 = int(np.argmin(c.mean)), int(np.argmax(c.mean))
        lines.append(
            f"  L={L}: {_n_runs(len(c.files))}, blocks {'x'.join(map(str, c.dim))}; first {_fmt(c.mean[0])}, "
            f"last {_fmt(c.mean[-1])}, min {_fmt(c.mean[k0])} at k/L={c.x[k0]:.3g}, "
            f"max {_fmt(c.mean[k1])} at k/L={c.x[k1]:.3g}"
        )
    lines.append(f"wrote {plot_norm(curves, args.beta, args.out)}")
    return "\n".join(lines) + "\n"


def run_weights(args: argparse.Namespace) -> str:
    """The ``weights`` command: returns the text it prints."""
    file = _one_file(args.run, args.name)
    entries = [_parse_entry(e) for e in args.entries]
    w = load_blocks(file)
    x, ys = weight_entries(w, entries, args.beta)
    lines = [f"{file}: L={w.shape[0]}, blocks {'x'.join(str(s) for s in w.shape[1:])} (beta {args.beta:g})"]
    for (i, j), y in ys.items():
        lines.append(
            f"  [{i}, {j}]: first {_fmt(y[0])}, last {_fmt(y[-1])}, min {_fmt(y.min())}, max {_fmt(y.max())}"
        )
    lines.append(f"wrote {plot_weights(x, ys, args.beta, args.out, title=str(file))}")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """The command line: ``norm`` and ``weights``.

    >>> parser().parse_args(["weights", "run", "--entries", "0,0", "1,2"]).entries
    ['0,0', '1,2']
    """
    p = argparse.ArgumentParser(
        prog="python -m timm_overparam.research.paths",
        description="Block weights of depth-limit networks as paths in the layers (blocks.safetensors files).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    norm = sub.add_parser(
        "norm",
        help="k/L -> |L^beta W_k|_F: mean over runs with a 95%% band, one line per L",
        description="Plot k/L -> |L^beta W_k|_F for every run under RUNS_DIR, grouped by L (mean over the "
        "runs, 95%% t interval of the mean), and optionally print the p-variation of each run's path.",
    )
    norm.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run folders (or one blocks file)")
    norm.add_argument(
        "--pvar", type=float, metavar="P", help="also print the p-variation (p >= 1) of each L's runs"
    )
    norm.add_argument(
        "--pvar-only", action="store_true", help="only print each L's largest p-variation; no plot"
    )
    norm.add_argument("--out", default="path-norm.png", help="the figure (default: path-norm.png)")
    weights = sub.add_parser(
        "weights",
        help="chosen entries L^beta W_k[i, j] against k/L, for one run",
        description="Plot the entries L^beta W_k[i, j] of one run's block weights against k/L.",
    )
    weights.add_argument("run", metavar="RUN_DIR_OR_FILE", help="a run folder or its blocks file")
    weights.add_argument(
        "--entries", nargs="+", default=["0,0"], metavar="I,J", help="entries to plot (default: 0,0)"
    )
    weights.add_argument("--out", default="path-weights.png", help="the figure (default: path-weights.png)")
    for sp in (norm, weights):
        sp.add_argument("--beta", type=float, default=0.75, help="the path's scaling L^beta (default: 0.75)")
        sp.add_argument(
            "--name", default=BLOCKS_FILE, help=f"the blocks files' name (default: {BLOCKS_FILE})"
        )
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run the command; a bad input exits 2 with its message.

    Example: ``main(["norm", "output/depth", "--beta", "0.75", "--pvar", "2"])``
    """
    p = parser()
    args = p.parse_args(argv)
    if not math.isfinite(args.beta):
        p.exit(2, f"{p.prog}: error: --beta must be a finite number, got {args.beta}\n")
    try:
        print(run_norm(args) if args.command == "norm" else run_weights(args), end="")
    except (ValueError, TypeError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
