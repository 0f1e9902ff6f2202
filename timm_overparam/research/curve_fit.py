"""Fit ``Omega(t) = C / (t + T0)^rho`` to a run's Omega series (seed 002's ``curve-fit``).

The series is what ``OmegaRecorder`` (``--store-grad``) writes: ``omega.csv`` in the run folder,
columns ``step`` (t, the updates done before the gradient; 0 at the initial weights) and ``omega``.
Before fitting, as the original:

1. ``filter_period`` = P > 0 drops every P-th point: the points at positions 1..N (in the order of
   the series) divisible by P.
2. ``window_size`` = W > 0 splits what is left into ``n // W`` consecutive windows of nearly equal
   size (``numpy.array_split``: the first ``n % (n // W)`` windows hold one point more) and drops, in
   each window, every point equal to the window's minimum or maximum (ties included).
3. ``scaling_x`` multiplies t.

Then ``scipy.optimize.curve_fit`` (bounded least squares, ``method='trf'``) fits ``C / (t + 1)^rho``
or, with ``infer_shift``, ``C / (t + T0)^rho``. The standard errors are the square roots of the
diagonal of the returned covariance (scaled by the residual variance; they assume additive noise of
one variance, so they understate the error of a series whose noise shrinks with Omega). The original
also printed
them divided by sqrt(N) as "std error"; that division is not a standard error and is left out.
Default bounds: C in [0, inf), rho in [0, 3] (the original's), T0 in [1e-6, 1e6] (the original's
[1, 500] assumed t from 1 and bounded C by 1 or 3; the series here start at t = 0, any scale).

API: ``fit_omega(t, omega, window_size=5, filter_period=0, infer_shift=False) -> Fit``;
``read_omega(path)``; ``clean_series``; ``plot_fit`` (matplotlib, imported when drawing).

CLI::

    python -m timm_overparam.research.curve_fit output/train/<run> --window-size 27 --infer-shift --out fit.png
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from timm_overparam.core.atomic import atomic_path

__all__ = ["Fit", "clean_series", "fit_omega", "main", "plot_fit", "read_omega"]

OMEGA_CSV = "omega.csv"
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "C": (0.0, math.inf),
    "rho": (0.0, 3.0),
    "T0": (1e-6, 1e6),
}


@dataclass(frozen=True)
class Fit:
    """A fitted ``C / (t + T0)^rho`` (T0 = 1 unless ``infer_shift``) and the points it was fitted to.

    ``stderr``: the standard errors of the fitted parameters (``C``, ``rho`` and, inferred, ``T0``).
    ``t``/``omega``: the kept points (t scaled); ``n_total``: the points before cleaning.

    >>> f = Fit(C=2.0, rho=1.0, T0=1.0, stderr={"C": 0.0, "rho": 0.0}, infer_shift=False)
    >>> float(f(3.0))
    0.5
    """

    C: float
    rho: float
    T0: float
    stderr: dict[str, float]
    infer_shift: bool
    t: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    omega: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    n_total: int = 0

    def __call__(self, t: Any) -> np.ndarray:
        return _power(np.asarray(t, dtype=float), self.C, self.rho, self.T0)

    @property
    def n_points(self) -> int:
        """The number of points fitted."""
        return len(self.t)

    def summary(self) -> str:
        """The fit in words, e.g. ``Omega(t) = C / (t + T0)^rho: C = 2 ± 0.01, ...``."""
        parts = [
            f"C = {self.C:.6g} ± {self.stderr['C']:.3g}",
            f"rho = {self.rho:.6g} ± {self.stderr['rho']:.3g}",
        ]
        if self.infer_shift:
            parts.append(f"T0 = {self.T0:.6g} ± {self.stderr['T0']:.3g}")
        else:
            parts.append("T0 = 1 (fixed)")
        form = "C / (t + T0)^rho" if self.infer_shift else "C / (t + 1)^rho"
        return f"Omega(t) = {form}: {', '.join(parts)} ({self.n_points} of {self.n_total} points)"


def _power(t: np.ndarray, C: float, rho: float, T0: float) -> np.ndarray:
    return C / (t + T0) ** rho


def _unshifted(t: np.ndarray, C: float, rho: float) -> np.ndarray:
    return _power(t, C, rho, 1.0)


def clean_series(
    t: Sequence[float] | np.ndarray,
    omega: Sequence[float] | np.ndarray,
    *,
    window_size: int = 5,
    filter_period: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The points kept by the filter and window rules (module docstring), in order.

    ``window_size`` 0 and ``filter_period`` 0 turn a rule off. A window of 1 or 2 points would drop
    all of them (each is its window's minimum or maximum): ``window_size`` must be 0 or >= 3.

    >>> t, y = clean_series(range(6), [5, 1, 3, 9, 4, 6], window_size=3, filter_period=0)
    >>> t.tolist(), y.tolist()
    ([2.0, 5.0], [3.0, 6.0])
    >>> clean_series(range(4), [1, 2, 3, 4], window_size=0, filter_period=2)[0].tolist()  # positions 2, 4
    [0.0, 2.0]
    """
    t = np.asarray(t, dtype=float).reshape(-1)
    y = np.asarray(omega, dtype=float).reshape(-1)
    if t.shape != y.shape:
        raise ValueError(f"t and omega differ in length: {len(t)} and {len(y)}")
    for name, value in (("window_size", window_size), ("filter_period", filter_period)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0: off), got {value!r}")
    if window_size in (1, 2):
        raise ValueError(
            f"window_size = {window_size} drops every point (each is its window's minimum or maximum): "
            f"use 0 (off) or >= 3"
        )
    if filter_period == 1:
        raise ValueError("filter_period = 1 drops every point: use 0 (off) or >= 2")
    if filter_period > 0:
        position = np.arange(1, len(t) + 1)
        keep = position % filter_period != 0
        t, y = t[keep], y[keep]
    if window_size > 0:
        if len(t) < window_size:
            raise ValueError(
                f"{len(t)} points (after filter_period) are fewer than one window (window_size = {window_size})"
            )
        kept = []
        for idx in np.array_split(np.arange(len(t)), len(t) // window_size):
            w = y[idx]
            kept.append(idx[(w != w.max()) & (w != w.min())])
        keep = np.concatenate(kept)
        t, y = t[keep], y[keep]
    return t, y


def _start(t: np.ndarray, y: np.ndarray, T0: float, bounds: dict[str, tuple[float, float]]) -> list[float]:
    """C and rho of a straight line through (log(t + T0), log omega) of the positive points, in bounds."""
    pos = y > 0
    if pos.sum() >= 2 and np.ptp(t[pos]) > 0:
        slope, intercept = np.polyfit(np.log(t[pos] + T0), np.log(y[pos]), 1)
        C, rho = math.exp(intercept), -slope
    else:
        C, rho = float(max(np.mean(y), 1e-12)), 1.0

    def clip(v: float, name: str) -> float:
        lo, hi = bounds[name]
        span = hi - lo if math.isfinite(hi - lo) else abs(lo) + 1.0
        return float(min(max(v, lo + 1e-9 * span), hi - 1e-9 * span))

    return [clip(C, "C"), clip(rho, "rho")]


def fit_omega(
    t: Sequence[float] | np.ndarray,
    omega: Sequence[float] | np.ndarray,
    *,
    window_size: int = 5,
    filter_period: int = 0,
    infer_shift: bool = False,
    scaling_x: float = 1.0,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> Fit:
    """Fit ``C / (t + 1)^rho`` (or ``C / (t + T0)^rho`` with ``infer_shift``) to ``omega(t)`` after the
    filter and window rules (``clean_series``) and scaling t by ``scaling_x``.

    ``bounds`` overrides some of ``DEFAULT_BOUNDS`` (``{"rho": (0, 5)}``).

    >>> t = np.arange(50.0)
    >>> f = fit_omega(t, 3.0 / (t + 1) ** 0.5, window_size=0)
    >>> round(f.C, 6), round(f.rho, 6)
    (3.0, 0.5)
    """
    from scipy.optimize import curve_fit  # imported when fitting

    t = np.asarray(t, dtype=float).reshape(-1)
    y = np.asarray(omega, dtype=float).reshape(-1)
    bad = np.flatnonzero(~(np.isfinite(t) & np.isfinite(y)))
    if len(bad):
        raise ValueError(f"omega is not finite at t = {t[bad[0]]:g} ({len(bad)} points): a diverged run")
    if not (isinstance(scaling_x, (int, float)) and math.isfinite(scaling_x) and scaling_x > 0):
        raise ValueError(f"scaling_x must be a finite number > 0, got {scaling_x!r}")
    n_total = len(t)
    t, y = clean_series(t, y, window_size=window_size, filter_period=filter_period)
    t = t * scaling_x
    b = dict(DEFAULT_BOUNDS)
    for name, pair in (bounds or {}).items():
        if name not in b:
            raise ValueError(f"unknown parameter {name!r} in bounds: one of {sorted(b)}")
        lo, hi = (float(v) for v in pair)
        if not lo < hi:
            raise ValueError(f"bounds of {name}: the lower {lo} must be below the upper {hi}")
        b[name] = (lo, hi)
    names = ["C", "rho", "T0"] if infer_shift else ["C", "rho"]
    if len(t) < len(names) + 1:
        raise ValueError(
            f"{len(t)} points left after the filter and window rules: {len(names) + 1} or more are needed "
            f"to fit {', '.join(names)} (lower window_size or filter_period)"
        )
    if not infer_shift and t.min() + 1 <= 0:
        raise ValueError(f"t + 1 must be > 0, got t = {t.min():g}")
    lower = [b[n][0] for n in names]
    upper = [b[n][1] for n in names]
    if infer_shift:
        T0 = float(min(max(1.0, b["T0"][0]), b["T0"][1]))
        p0 = [*_start(t, y, T0, b), T0]
        func = _power
    else:
        p0 = _start(t, y, 1.0, b)
        func = _unshifted
    try:
        popt, pcov = curve_fit(
            func, t, y, p0=p0, bounds=(lower, upper), method="trf", x_scale="jac", maxfev=20000
        )
    except RuntimeError as e:  # scipy's "optimal parameters not found"
        spread = float(np.ptp(y) / max(abs(float(np.mean(y))), 1e-300))
        raise ValueError(
            f"the fit of C/(t+T0)^rho did not converge ({e}); Omega varies by {spread:.2g} of its mean "
            f"over the {len(t)} points kept: a nearly flat series has no decay to fit (train longer, "
            f"or fit without --infer-shift, or set --bound)"
        ) from None
    with np.errstate(invalid="ignore"):
        err = np.sqrt(np.diag(pcov))
    stderr = {n: float(e) for n, e in zip(names, err, strict=True)}
    return Fit(
        C=float(popt[0]),
        rho=float(popt[1]),
        T0=float(popt[2]) if infer_shift else 1.0,
        stderr=stderr,
        infer_shift=infer_shift,
        t=t,
        omega=y,
        n_total=n_total,
    )


def read_omega(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(t, omega)`` of a run folder's ``omega.csv`` or of a CSV file with ``step`` and ``omega`` columns.

    Example: ``t, omega = read_omega("output/train/<run>")``
    """
    path = Path(path)
    if path.is_dir():
        if not (path / OMEGA_CSV).is_file():
            raise FileNotFoundError(
                f"{str(path)!r} has no {OMEGA_CSV}: train with --store-grad (OmegaRecorder) to record Omega(t)"
            )
        path = path / OMEGA_CSV
    elif not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is neither a run folder nor a CSV file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", "omega"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{str(path)!r} lacks the column(s) {sorted(missing)} (has {reader.fieldnames})")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append((float(r["step"]), float(r["omega"])))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{str(path)!r}, line {line}: step and omega must be numbers, got {r}"
                ) from None
    if not rows:
        raise ValueError(f"{str(path)!r} holds no rows")
    t, y = np.array(rows, dtype=float).T
    return t, y


def plot_fit(
    fit: Fit, path: str | os.PathLike, t: np.ndarray | None = None, omega: np.ndarray | None = None
) -> str:
    """Draw the fitted points, the fit and (grey) the whole series ``t``/``omega`` if given; saved
    atomically as PNG. Returns the path.

    Example: ``plot_fit(fit_omega(t, omega), "fit.png", t, omega)``
    """
    from matplotlib.figure import Figure  # import cost: only when plotting

    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    if t is not None and omega is not None:
        ax.scatter(t, omega, marker=".", s=8, c="lightgrey", label="dropped")
    ax.scatter(fit.t, fit.omega, marker="x", s=14, c="orange", label="data")
    grid = np.linspace(float(fit.t.min()), float(fit.t.max()), 400)
    shift = f"{fit.T0:.3g}" if fit.infer_shift else "1"
    ax.plot(grid, fit(grid), c="royalblue", lw=2, label=f"{fit.C:.3g} / (t + {shift})^{fit.rho:.3g}")
    ax.set_xlabel("t (optimizer updates)")
    ax.set_ylabel(r"$\Omega(t) = \frac{1}{N}\sum_i \|\nabla_{\hat y}\ell_i\|^2$")
    ax.legend(fontsize=8)
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def _bound(text: str) -> tuple[str, tuple[float, float]]:
    try:
        name, pair = text.split("=", 1)
        lo, hi = (float(v) for v in pair.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=LOW,HIGH (e.g. rho=0,5), got {text!r}") from None
    return name.strip(), (lo, hi)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI (module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m timm_overparam.research.curve_fit",
        description="Fit C / (t + T0)^rho to Omega(t) of a run (omega.csv, written by --store-grad).",
    )
    parser.add_argument("path", help="a run folder holding omega.csv, or a CSV with step and omega columns")
    parser.add_argument("--window-size", type=int, default=5, help="drop each window's min and max (0: off)")
    parser.add_argument("--filter-period", type=int, default=0, help="drop every P-th point (0: off)")
    parser.add_argument("--infer-shift", action="store_true", help="fit T0 too (else T0 = 1)")
    parser.add_argument("--scaling-x", type=float, default=1.0, help="multiply t by this before fitting")
    parser.add_argument(
        "--bound", type=_bound, action="append", default=[], metavar="NAME=LOW,HIGH", help="C, rho or T0"
    )
    parser.add_argument("--out", help="draw data and fit into this PNG file")
    args = parser.parse_args(argv)
    try:
        t, omega = read_omega(args.path)
        fit = fit_omega(
            t,
            omega,
            window_size=args.window_size,
            filter_period=args.filter_period,
            infer_shift=args.infer_shift,
            scaling_x=args.scaling_x,
            bounds=dict(args.bound),
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(fit.summary())
    if args.out:
        print(f"plot: {plot_fit(fit, args.out, t * args.scaling_x, omega)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
