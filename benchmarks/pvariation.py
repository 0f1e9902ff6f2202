"""p_variation against the original's compiled algorithm (``pvar-anchor``), side by side.

Each case is a random walk (n points, d coordinates, steps of +-1/sqrt(n) in every coordinate,
fixed seed) written to a temporary file in the anchor's binary format; the anchor runs as a
subprocess and reports its own computing time, ``timm_overparam.research.p_variation`` runs in this
process and is timed with ``time.perf_counter``. Both sides take the best of ``--repeats`` runs
when one run is short (under 5 s), else one run. PASS: ours/anchor <= 1 and relative difference of
the values <= 1e-12.

    python benchmarks/pvariation.py                        # all cases
    python benchmarks/pvariation.py walk_d225_n2000_p2.5   # chosen cases (names as in the table)
    python benchmarks/pvariation.py --anchor PATH          # default: ../shared/tools/pvar-anchor

The anchor is not part of the project: nothing outside this script calls it.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ANCHOR = ROOT.parent / "shared" / "tools" / "pvar-anchor"
TOLERANCE = 1e-12
SHORT_S = 5.0

# (n points, d coordinates, p)
CASES = {
    f"walk_d{d}_n{n}_p{p:g}": (n, d, p)
    for n, d in ((2_000, 225), (10_000, 225), (100_000, 1))
    for p in (2.5, 2.0)
}


def random_walk(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n points from 0 with independent steps of +-1/sqrt(n) in each of d coordinates, (n, d) float64.

    Example: ``random_walk(2000, 225).shape == (2000, 225)``
    """
    rng = np.random.default_rng(seed)
    steps = rng.choice(np.array([-1.0, 1.0]), size=(n - 1, d)) / np.sqrt(n)
    return np.concatenate([np.zeros((1, d)), np.cumsum(steps, axis=0)])


def write_path(file: str | os.PathLike, x: np.ndarray) -> None:
    """The anchor's input format: little-endian u64 n, u64 d, then n*d float64, point by point.

    Example: ``write_path("walk.bin", random_walk(100, 3))``
    """
    x = np.asarray(x, dtype=np.float64)
    with open(file, "wb") as f:
        f.write(struct.pack("<QQ", *x.shape))
        f.write(np.ascontiguousarray(x, dtype="<f8").tobytes())


def run_anchor(anchor: Path, file: str | os.PathLike, p: float) -> tuple[float, float]:
    """(value, seconds) printed by one run of the anchor.

    Example: ``run_anchor(DEFAULT_ANCHOR, "walk.bin", 2.5)``
    """
    out = subprocess.run([str(anchor), str(file), repr(p)], capture_output=True, text=True, check=True)
    value, seconds = out.stdout.split()[:2]
    return float(value), float(seconds)


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(value, best seconds): one run, then up to ``repeats`` in all while a run takes < 5 s.

    Example: ``best_of(lambda: (1.0, 0.1), 3)``
    """
    value, seconds = fn()
    best = seconds
    for _ in range(repeats - 1):
        if best >= SHORT_S:
            break
        value_k, seconds_k = fn()
        if value_k != value:
            raise RuntimeError(f"runs disagree: {value!r} then {value_k!r}")
        best = min(best, seconds_k)
    return value, best


def measure(name: str, anchor: Path, repeats: int) -> dict:
    """One row of the table for case ``name``.

    Example: ``measure("walk_d225_n2000_p2.5", DEFAULT_ANCHOR, 3)["result"]``
    """
    from timm_overparam.research import p_variation

    n, d, p = CASES[name]
    x = random_walk(n, d)

    def ours():
        t = time.perf_counter()
        v = p_variation(x, p)
        return v, time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / f"{name}.bin"
        write_path(file, x)
        a_value, a_s = best_of(lambda: run_anchor(anchor, file, p), repeats)
    o_value, o_s = best_of(ours, repeats)
    rel = abs(o_value - a_value) / abs(a_value) if a_value else abs(o_value)
    ratio = o_s / a_s
    ok = ratio <= 1.0 and rel <= TOLERANCE
    return dict(
        case=name, n=n, d=d, p=p, anchor_s=a_s, ours_s=o_s, ratio=ratio, rel=rel,
        anchor_value=a_value, ours_value=o_value, result="PASS" if ok else "FAIL",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", help=f"cases to run (default all): {', '.join(CASES)}")
    parser.add_argument("--anchor", type=Path, default=DEFAULT_ANCHOR, help="the pvar-anchor executable")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs for short cases")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if not args.anchor.is_file():
        parser.error(f"anchor not found at {args.anchor}; pass --anchor PATH")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    names = args.cases or list(CASES)
    header = f"{'case':<24} {'n':>7} {'d':>4} {'p':>4} {'anchor s':>9} {'ours s':>9} {'ratio':>6} {'rel diff':>9}  result"
    print(header)
    failed = 0
    for name in names:
        r = measure(name, args.anchor, args.repeats)
        failed += r["result"] != "PASS"
        print(
            f"{r['case']:<24} {r['n']:>7} {r['d']:>4} {r['p']:>4g} {r['anchor_s']:>9.4f} {r['ours_s']:>9.4f}"
            f" {r['ratio']:>6.3f} {r['rel']:>9.1e}  {r['result']}",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
