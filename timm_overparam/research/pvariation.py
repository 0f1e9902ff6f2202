"""p-variation of a discrete path, exact, as seed 002's compiled original computes it.

``p_variation(path, p)`` is the supremum, over increasing index subsequences
``0 <= n_0 < n_1 < ... < n_k <= n - 1``, of ``sum_k |x_{n_k} - x_{n_{k-1}}|^p`` (Euclidean
distance, no ``1/p`` root). Computed in float64; equal, up to rounding, to the plain dynamic
programme ``run[j] = max_{m < j} run[m] + |x_j - x_m|^p`` (``run[0] = 0``, value ``run[n - 1]``).

Two exact algorithms, each faster than that O(n^2 d) programme on the paths of the depth-limit
study (random-walk-like weight paths); every rule that skips work carries its proof below.

- d = 1: the path is reduced to its turning points, small zig-zags that no optimal chain needs
  are dropped, then a sparse dynamic programme runs over the "valid pairs" only (on a random walk
  about 4 pairs per remaining point instead of n / 2).
- d > 1: divide and conquer over the index range; the contribution of each left half to each right
  half is estimated with one matrix product (``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``, in float32
  where its range allows, with a proven rounding bound) and only the entries that can be a
  column's maximum are recomputed from exact float64 coordinate differences.

Notation: ``V* = p_variation(path, p)``; a "chain" is an increasing index subsequence and its value
the sum above. p >= 1 throughout (the original refuses p < 1).
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from numbers import Real

import numpy as np

__all__ = ["p_variation"]

_U = 2.0**-53  # unit roundoff of float64
_LEAF = 16  # index ranges of at most this many points are solved directly (d > 1 and dense d = 1)
_CHUNK = 1 << 20  # entries of one (rows x columns) block of the cross step (4 MiB in float32)
_EXACT_D = 4  # up to this dimension the cross step uses coordinate differences, no matrix product
_ROUNDING = 128  # budget, in units of the working precision, for pow, casts and sums (see _pow)


def p_variation(path, p: float) -> float:
    """The p-variation of a path: the largest ``sum |x_{n_k} - x_{n_{k-1}}|^p`` over increasing
    index subsequences (Euclidean distance, float64, no ``1/p`` root).

    ``path`` is an (n, d) or (n,) numpy array, tensor or nested list (n >= 1 points); ``p >= 1``.

    >>> p_variation([0.0, 1.0, 0.0], 2)  # the subsequence 0, 1, 0: 1 + 1
    2.0
    >>> p_variation([[0.0, 0.0], [3.0, 4.0]], 2.5)  # one jump of length 5
    55.90169943749474
    """
    p = _check_p(p)
    x = _as_path(path)
    n, d = x.shape
    if n == 1:
        return 0.0
    if p == 1.0:
        # p = 1: by the triangle inequality inserting a point never decreases the sum, so the
        # full index sequence attains the supremum: the value is the path's length.
        steps = np.diff(x, axis=0)
        return float(np.sqrt(np.einsum("ij,ij->i", steps, steps)).sum())
    if d == 1:
        return _pvar_1d(x[:, 0], p)
    # Consecutive repeated points are dropped (rule R0 below: x_k = x_{k-1} lies on the segment
    # [x_{k-1}, x_{k+1}]); a constant path becomes one point.
    keep = np.ones(n, dtype=bool)
    keep[1:] = (x[1:] != x[:-1]).any(axis=1)
    x = x[keep]
    if len(x) == 1:
        return 0.0
    return _Dense(x, p).solve()


# ----------------------------------------------------------------------------------------------
# input checks


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, Real):
        try:  # a 0-d array or tensor holding a number
            if getattr(p, "ndim", None) == 0 or getattr(p, "shape", None) == ():
                p = p.item()
        except Exception:
            pass
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"p must be a real number >= 1, got {p!r} of type {type(p).__name__}")
    p = float(p)
    if not math.isfinite(p) or p < 1.0:
        raise ValueError(
            f"p must be a finite number >= 1, got p={p!r}: like the original, p_variation is "
            "defined for exponents p >= 1 only; pass p >= 1 (seed 002 logs p, p/2 and 3p/4 with p >= 2)"
        )
    return p


def _as_path(path) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is loaded already
    if torch is not None and isinstance(path, torch.Tensor):
        if path.is_complex():
            raise TypeError(f"path must be real, got a complex tensor of dtype {path.dtype}")
        path = path.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        arr = np.asarray(path)
    except Exception as e:  # ragged nested lists and the like
        raise TypeError(f"path must be an (n, d) or (n,) array of numbers: {e}") from None
    if arr.dtype.kind == "c":
        raise TypeError(f"path must be real, got a complex array of dtype {arr.dtype}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"path must be an (n, d) or (n,) array of real numbers, got dtype {arr.dtype}; "
            "convert it with np.asarray(path, dtype=float)"
        )
    if arr.ndim == 1:
        arr = arr[:, None]
    elif arr.ndim != 2:
        raise ValueError(
            f"path must be (n,) or (n, d) (n points of dimension d), got shape {arr.shape}; "
            "flatten each point first, e.g. path.reshape(len(path), -1)"
        )
    n, d = arr.shape
    if n == 0:
        raise ValueError(f"path is empty (shape {arr.shape}): the p-variation needs at least 1 point")
    if d == 0:
        raise ValueError(
            f"path has points of dimension 0 (shape {arr.shape}): give each point >= 1 coordinate"
        )
    x = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all():
        k = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(
            f"path has non-finite values (first at point {k}: {x[k].tolist()[:8]}); "
            "drop or fill the NaN/inf points before computing the p-variation"
        )
    return x


# ----------------------------------------------------------------------------------------------
# d = 1
#
# R0 (turning points). If x_k lies on the segment [x_{k-1}, x_{k+1}] (0 < k < n-1; in d = 1: y_k
# between y_{k-1} and y_{k+1}, ends included), some optimal chain avoids k. Proof: take a chain
# through k with neighbours u < k < v in the chain (either may be absent). f(z) = |x_u - z|^p +
# |z - x_v|^p is convex in z (a convex increasing function of a norm; an absent neighbour drops
# its term), so on the segment f(x_k) <= max(f(x_{k-1}), f(x_{k+1})): replacing k by k-1 or k+1
# (if k-1 = u or k+1 = v this just deletes k) keeps the order and does not decrease the sum.
# Applied one point at a time to the current candidate set (neighbours taken in that set), this
# removes repeated values and the inner points of monotone runs (a last point equal to its
# predecessor goes too: a chain may end at the predecessor instead, same value). What is left, S,
# strictly alternates between local minima and maxima, and some optimal chain of the path lies in S.
#
# R1 (valid pairs). Take a chain Q in S that is optimal, has the fewest points among optimal
# chains, and among those the largest sum of indices. Then:
#  (a) Q strictly alternates: a middle point with value between (or equal to one of) its
#      neighbours' can be deleted without decreasing the sum (|a - c|^p >= |a - b|^p + |b - c|^p
#      for b between a and c, p >= 1), contradicting "fewest points".
#  (b) Let q_i < q_{i+1} be consecutive in Q with, say, y_{q_i} < y_{q_{i+1}}. No z in
#      (q_i, q_{i+1}) has y_z > y_{q_{i+1}}: replacing q_{i+1} by z would strictly increase both
#      of its terms (its other neighbour is lower, by (a)), contradicting optimality. No z in
#      (q_i, q_{i+1}] has y_z < y_{q_i} (the same argument on q_i), and none has y_z = y_{q_i}:
#      moving q_i to such a z keeps the value and the point count and raises the index sum.
#  So consecutive chain points (m, j) satisfy, for an "up" pair (y_m < y_j):
#      y_m < y_z for all z in (m, j],   y_j >= y_z for all z in (m, j),
#  and the mirror image for a "down" pair. The dynamic programme over such valid pairs only,
#  R[j] = max(0, max_{(m, j) valid} R[m] + |y_j - y_m|^p), is the best over chains made of valid
#  pairs (each is a chain of the path: value <= V*), and Q is one of them: max_j R[j] = V*.
#  For a peak j the valid m are the backward strict-minimum records m_1 = j-1, m_{k+1} =
#  PS(m_k) (PS: previous strictly smaller value), as long as m_k > PG(j) (previous strictly greater
#  value than y_j); troughs mirror this. A random walk has few such records (about 4 per point).
#  Inputs with many valid pairs (for instance staircases with p near 1) use the dense programme.
#
# R2 (small zig-zags; applied before R1, it halves the valid pairs of a random walk). Let a, b, c,
# e be consecutive in S with U^p >= u1^p + u2^p + u3^p, U = |y_e - y_a|, u1 = |y_b - y_a|, u2 =
# |y_c - y_b|, u3 = |y_e - y_c|. Then some optimal chain avoids b and c. Say y_a < y_b (the other
# case is the mirror image). As S alternates, U^p > u1^p, u3^p forces y_e - y_a = u1 - u2 + u3 >
# u1, u3, i.e. y_a < y_c < y_b < y_e. Take Q as in R1 (optimal, fewest points, then largest index
# sum); its consecutive points are valid pairs. If b is in Q it is a peak of Q (a lower point
# y_a or y_c lies inside any pair making it a trough); its successor w satisfies y_b > y_z on
# (b, w], so w = c as y_e > y_b; and b is not last (replacing it by e would gain). Likewise c in Q
# is a trough whose predecessor is b, and c is not first (replacing it by a would gain). So if Q
# meets {b, c}, it holds u, b, c, v consecutively, where validity gives Y_u <= y_a and Y_v >= y_e
# (u or v may be absent). With A = y_a - Y_u >= 0, C = Y_v - y_e >= 0:
#     g(A, C) = (A + U + C)^p - (A + u1)^p - u2^p - (u3 + C)^p
# has g(0, 0) >= 0 and dg/dA = p((A + U + C)^(p-1) - (A + u1)^(p-1)) >= 0 (U + C >= u1), likewise
# dg/dC >= 0: deleting b and c does not decrease the sum (with u absent compare with a, v, ...:
# (U + C)^p > u2^p + (u3 + C)^p; with v absent, symmetric), contradicting "fewest points". The
# rule is applied in passes at positions k = r (mod 3) (their quadruples share at most an end
# point, so each stays four consecutive points of the current set), while passes remove > 1%.


def _pvar_1d(y: np.ndarray, p: float) -> float:
    v = y[_turning_points(y)]
    m = len(v)
    if m == 1:
        return 0.0
    if m == 2:
        return float(abs(v[1] - v[0]) ** p)
    v = _drop_small_zigzags(v, p)
    m = len(v)
    pairs = _valid_pairs(v, limit=24 * m + 4096)
    if pairs is None:  # many valid pairs: the dense programme is cheaper
        return _Dense(v[:, None], p).solve()
    return _sparse_dp(v, p, *pairs)


def _turning_points(y: np.ndarray) -> np.ndarray:
    """Indices kept by rule R0: first point of each run of equal values, then the direction
    changes and both ends."""
    idx = np.flatnonzero(np.concatenate(([True], y[1:] != y[:-1])))
    if len(idx) <= 2:
        return idx
    up = np.diff(y[idx]) > 0
    keep = np.ones(len(idx), dtype=bool)
    keep[1:-1] = up[:-1] != up[1:]
    return idx[keep]


def _drop_small_zigzags(v: np.ndarray, p: float) -> np.ndarray:
    """Rule R2 in passes over the alternating values v; returns the values kept."""
    removed = [len(v)] * 3  # removals of the last three passes (one per residue class)
    for r in range(3 * 20):
        if len(v) < 4 or sum(removed) <= len(v) // 100:
            break
        inc = np.abs(np.diff(v)) ** p
        ok = np.abs(v[3:] - v[:-3]) ** p >= inc[:-2] + inc[1:-1] + inc[2:]
        k = np.flatnonzero(ok[r % 3 :: 3]) * 3 + r % 3
        removed[r % 3] = 2 * len(k)
        if len(k):
            keep = np.ones(len(v), dtype=bool)
            keep[k + 1] = False
            keep[k + 2] = False
            v = v[keep]
    return v


def _previous_beyond(v: np.ndarray, smaller: bool) -> np.ndarray:
    """prev[i] = largest k < i with v[k] < v[i] (smaller) or v[k] > v[i]; -1 if none.

    Pointer jumping, invariant "every value strictly between prev[i] and i is >= v[i]" (resp.
    <=): if v[prev[i]] >= v[i] too, the values between prev[prev[i]] and prev[i] are >=
    v[prev[i]] >= v[i], so prev[i] may jump to prev[prev[i]].
    """
    prev = np.arange(-1, len(v) - 1)
    act = np.arange(1, len(v))
    while len(act):
        c = prev[act]
        stuck = v[c] >= v[act] if smaller else v[c] <= v[act]
        act, c = act[stuck], c[stuck]
        prev[act] = prev[c]
        act = act[prev[act] >= 0]
    return prev


def _valid_pairs(v: np.ndarray, limit: int):
    """All valid pairs (m, j) of rule R1 as two index arrays sorted by j, or None if more than
    ``limit``."""
    ps = _previous_beyond(v, smaller=True)
    pg = _previous_beyond(v, smaller=False)
    peak = np.zeros(len(v), dtype=bool)
    peak[1:] = v[:-1] < v[1:]
    j = np.arange(1, len(v))
    m = j - 1  # the first record is always the previous turning point
    stop = np.where(peak[j], pg[j], ps[j])
    ms, js, total = [], [], 0
    while len(j):
        ok = m > stop
        j, m, stop = j[ok], m[ok], stop[ok]
        ms.append(m)
        js.append(j)
        total += len(j)
        if total > limit:
            return None
        m = np.where(peak[j], ps[m], pg[m])
    m, j = np.concatenate(ms), np.concatenate(js)
    order = np.argsort(j, kind="stable")
    return m[order], j[order]


def _sparse_dp(v: np.ndarray, p: float, m: np.ndarray, j: np.ndarray) -> float:
    w = np.abs(v[j] - v[m]) ** p
    r = [0.0] * len(v)
    cur, best = 1, 0.0
    # pairs sorted by j; every j >= 1 has the pair (j - 1, j)
    for mm, jj, ww in zip(m.tolist(), j.tolist(), w.tolist(), strict=True):
        if jj != cur:
            r[cur] = best
            cur, best = jj, 0.0
        t = r[mm] + ww
        if t > best:
            best = t
    r[cur] = best
    return float(max(r))


# ----------------------------------------------------------------------------------------------
# dense programme (d > 1, and d = 1 inputs with many valid pairs)
#
# run[j] = max_{m < j} run[m] + w(m, j), w = |x_j - x_m|^p, run[0] = 0: run[j] is the best chain
# ending at j (a chain may as well start at 0: prepending 0 adds a term >= 0), run is
# non-decreasing (run[j] >= run[m] + w(m, j) >= run[m]) and V* = run[n - 1].
#
# Divide and conquer (solve(lo, hi)): solve the left half, add the left half's contribution to
# best[j] for every j of the right half (the cross step), solve the right half. When a range is
# solved, best[j] already holds the maximum over all m < lo; a leaf (<= _LEAF points) finishes
# run[j] from exact distances. Every pair m < j is covered by exactly one cross step or leaf.
#
# Cross step with a matrix product (d > _EXACT_D). Rows m (left half, run[m] known), columns j.
# Centre c = x[mid - 1], a = x_m - c, b = x_j - c (float64), scaled by s = 2^-k so that all
# |a|, |b| <= 1, and rounded to the working precision (float32, machine unit u = 2^-24; float64,
# u = 2^-53, where float32 could overflow or torch may cut float32 products' precision). One
# product (torch, one thread) of [a, |a|^2, 1] and [-2b, 1, |b|^2]
# gives D~2(m, j) ~ D^2 = |x_m - x_j|^2 s^2 with
#     |D~2 - D^2| <= delta = (d + 10) u (max|a| + max|b|)^2 (+ 1e-40 for float32 underflow)
# whatever the summation order: |fl(sum of k terms) - sum| <= gamma_{k-1} sum |terms| bounds the
# product by (d + 1) u (|a| + |b|)^2; rounding the coordinates, |a|^2 and |b|^2 adds < 4 u (|a| +
# |b|)^2. For W~ = max(D~2, 0)^q, q = p/2, and the true scaled W = D^(2q):
#     q >= 1: |W~ - W| <= omega = q (X + delta)^(q - 1) delta,  X = (max|a| + max|b|)^2 >= D~2, D^2
#     q < 1:  |W~ - W| <= omega = delta^q                        (|s^q - t^q| <= |s - t|^q)
# (plus pow's own rounding). Rows carry r(m) = (run[m] - run[lo]) s^(2q) (the float64 shift and
# scaling err by <= E = 4 u64 (|run[mid-1]| + |run[lo]|) s^(2q)), so V~ = r(m) + W~ estimates the
# scaled V = (run[m] + w(m, j) - run[lo]) s^(2q), a per-column increasing map of run[m] + w(m, j),
# with |V~ - V| <= e_j = omega + 2E + 128 u |top_j| + tiny (the last terms take the roundings of
# pow (see _pow), of the cast of r(m) and of the sum), where top_j = max_m V~.
# Only a maximiser m* of V that beats best[j] matters, and it satisfies both
#     V~(m*) >= V(m*) - e_j >= V(m) - e_j >= V~(m) - 2 e_j for every m, i.e. V~(m*) >= top_j - 2 e_j,
#     V~(m*) >= V(m*) - e_j > best'_j - e_j (best' = best[j] scaled the same way, error <= E),
# so the entries with V~ >= max(top_j, best'_j) - 2 e_j contain it. Those candidates (on a random
# walk about one per column, many columns none) are recomputed from exact coordinate differences
# in float64, which keeps the result exact; nothing else is skipped.


@contextlib.contextmanager
def _torch_one_thread():
    """torch, with its intra-op threads set to 1 for the block (restored after). The products
    are small and many: on a 2-core machine with one core busy elsewhere, multi-threaded BLAS
    (numpy's or torch's) made them 5-15x slower, one thread never."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield torch
    finally:
        torch.set_num_threads(threads)


def _float32_matmul_is_ieee(torch) -> bool:
    """False if torch may run float32 products in reduced precision (TF32/bf16 settings): the
    rounding bound of the cross step assumes IEEE float32, so those products then use float64."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")


@functools.cache
def _pairs_below(s: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, j) index arrays of all pairs m < j < s."""
    j, m = np.tril_indices(s, -1)
    return m, j


class _Dense:
    def __init__(self, x: np.ndarray, p: float):
        self.x = x
        self.q = p / 2.0
        n, d = x.shape
        self.d = d
        self.run = np.zeros(n)
        self.best = np.zeros(n)  # best[j]: max over the m < j handled so far of run[m] + w(m, j)

    def solve(self) -> float:
        with np.errstate(over="ignore", under="ignore"):  # |x|^p beyond float64 gives inf, as it should
            if self.d <= _EXACT_D:
                self._solve(0, len(self.x))
            else:
                with _torch_one_thread() as torch:
                    self.torch = torch
                    self.float32 = _float32_matmul_is_ieee(torch)
                    self._solve(0, len(self.x))
        return float(self.run[-1])

    def _solve(self, lo: int, hi: int) -> None:
        if hi - lo <= _LEAF:
            self._leaf(lo, hi)
            return
        mid = (lo + hi) // 2
        self._solve(lo, mid)
        if self.d <= _EXACT_D:
            self._cross_coords(lo, mid, hi)
        else:
            self._cross_product(lo, mid, hi)
        self._solve(mid, hi)

    def _pow(self, d2: np.ndarray) -> np.ndarray:
        """d2 ** (p/2) (d2 >= 0), in place where it can. For p a multiple of 1/2 up to 8 from
        square roots and products (each correctly rounded: <= 8 u relative), else numpy's pow
        (measured <= 17 ulp in float32, <= 2 in float64): both well inside the 128 u budget."""
        quarters = 4.0 * self.q
        if quarters != int(quarters) or quarters > 16:
            return np.power(d2, d2.dtype.type(self.q), out=d2)
        whole, frac = divmod(int(quarters), 4)
        f = None
        if frac:
            f = np.sqrt(d2)  # d2^(1/2)
            if frac != 2:
                r4 = np.sqrt(f)  # d2^(1/4)
                f = r4 if frac == 1 else np.multiply(f, r4, out=f)
        if whole == 0:
            return f
        base = d2 if whole == 1 else d2.copy()
        for _ in range(whole - 1):
            d2 *= base
        if f is not None:
            d2 *= f
        return d2

    def _leaf(self, lo: int, hi: int) -> None:
        x = self.x[lo:hi]
        s = hi - lo
        r = self.best[lo:hi].tolist()
        if lo == 0:
            r[0] = 0.0
        if s > 1:
            m, j = _pairs_below(s)
            diff = x[j] - x[m]
            w = np.zeros((s, s))
            w[j, m] = self._pow(np.einsum("ij,ij->i", diff, diff))
            cols = w.tolist()  # cols[j][m] = w(m, j), m < j
            for j in range(1, s):
                cj = cols[j]
                bj = r[j]
                for mm in range(j):
                    t = r[mm] + cj[mm]
                    if t > bj:
                        bj = t
                r[j] = bj
        self.run[lo:hi] = r

    def _cross_coords(self, lo: int, mid: int, hi: int) -> None:
        """Cross step from coordinate differences (small d): exact, no candidates."""
        x, best = self.x, self.best
        xl = x[lo:mid]
        rl = self.run[lo:mid, None]
        step = max(1, _CHUNK // (mid - lo))
        for j0 in range(mid, hi, step):
            j1 = min(hi, j0 + step)
            d2 = None
            for k in range(self.d):
                t = xl[:, k, None] - x[None, j0:j1, k]
                t *= t
                d2 = t if d2 is None else np.add(d2, t, out=d2)
            v = self._pow(d2)
            v += rl
            np.maximum(best[j0:j1], v.max(axis=0), out=best[j0:j1])

    def _cross_product(self, lo: int, mid: int, hi: int) -> None:
        """Cross step from one matrix product per column block, then exact candidates."""
        x, run, best, q, d = self.x, self.run, self.best, self.q, self.d
        c = x[mid - 1]
        a = x[lo:mid] - c
        b = x[mid:hi] - c
        na = np.einsum("ij,ij->i", a, a)
        nb = np.einsum("ij,ij->i", b, b)
        amax = math.sqrt(float(na.max()))
        bmax = math.sqrt(float(nb.max()))
        k = math.frexp(max(amax, bmax))[1]  # > 0: x[mid] != x[mid - 1]
        rl = run[lo:mid]
        rbase, rtop = float(rl[0]), float(rl[-1])
        wscale = self._value_scale(k, rtop - rbase) if self.float32 else 0.0
        if wscale:
            dt, u, tiny, scale = np.float32, 2.0**-24, 1e-40, math.ldexp(1.0, -k)
        else:  # scaled values would leave float32's range: float64, unscaled
            dt, u, tiny, scale, wscale, rbase = np.float64, _U, 1e-300, 1.0, 1.0, 0.0
        lhs = np.empty((mid - lo, d + 2), dtype=dt)
        np.multiply(a, scale, out=lhs[:, :d], casting="same_kind")
        lhs[:, d] = na * scale**2
        lhs[:, d + 1] = 1.0
        torch_lhs = self.torch.from_numpy(lhs)
        rv = ((rl - rbase) * wscale).astype(dt)
        shift_err = 4 * _U * (abs(rtop) + abs(rbase)) * wscale
        # the bounds of the comment above, taken at the block's largest |a| + |b|
        span = np.float64((amax + bmax) * scale * (1 + 8 * u))  # numpy scalars: inf, not OverflowError
        delta = (d + 10) * u * 1.01 * span**2 + tiny
        omega = q * (span**2 + delta) ** (q - 1.0) * delta if q >= 1.0 else delta**q
        err0 = omega + 2 * shift_err + tiny
        step = max(1, _CHUNK // (mid - lo))
        for j0 in range(mid, hi, step):
            j1 = min(hi, j0 + step)
            rhs = np.empty((j1 - j0, d + 2), dtype=dt)
            np.multiply(b[j0 - mid : j1 - mid], -2.0 * scale, out=rhs[:, :d], casting="same_kind")
            rhs[:, d] = 1.0
            rhs[:, d + 1] = nb[j0 - mid : j1 - mid] * scale**2
            v = self.torch.mm(torch_lhs, self.torch.from_numpy(rhs).T).numpy()  # D~2(m, j)
            np.maximum(v, 0, out=v)
            v = self._pow(v)
            v += rv[:, None]
            top = v.max(axis=0).astype(np.float64)
            if not np.isfinite(top).all():  # |x|^p overflows float64: no usable bound
                self._cross_exact_block(lo, mid, j0, j1)
                continue
            err = np.abs(top)
            err *= _ROUNDING * u
            err += err0
            floor = np.maximum(top, (best[j0:j1] - rbase) * wscale)
            floor -= 2 * err
            floor -= 2 * u * np.abs(floor)  # the cast below rounds by <= u |floor|
            idx = np.flatnonzero(v >= floor.astype(dt))
            if len(idx):
                mi = idx // (j1 - j0)
                self._exact_max(lo + mi, j0 + idx - mi * (j1 - j0), j0, j1)

    def _value_scale(self, k: int, spread: float) -> float:
        """s^(2q) for s = 2^-k if the scaled values fit float32 with room (rows' run spread and
        the largest W~ = 4^q below 2^100), else 0.0 (the cross step then works in float64)."""
        if self.q >= 50:
            return 0.0
        try:
            wscale = 2.0 ** (-2.0 * self.q * k)
        except OverflowError:
            return 0.0
        return wscale if 0.0 < wscale and spread * wscale < 2.0**100 else 0.0

    def _exact_max(self, m: np.ndarray, j: np.ndarray, j0: int, j1: int) -> None:
        """best[j] = max(best[j], run[m] + w(m, j)) over the given pairs, w from coordinate
        differences (in slices, to bound memory)."""
        x, run = self.x, self.run
        out = np.full(j1 - j0, -np.inf)
        per = max(1, _CHUNK // (4 * self.d))
        for s in range(0, len(m), per):
            mm, jj = m[s : s + per], j[s : s + per]
            diff = x[mm] - x[jj]
            w = self._pow(np.einsum("ij,ij->i", diff, diff))
            w += run[mm]
            np.maximum.at(out, jj - j0, w)
        np.maximum(self.best[j0:j1], out, out=self.best[j0:j1])

    def _cross_exact_block(self, lo: int, mid: int, j0: int, j1: int) -> None:
        rows = np.arange(lo, mid)
        for j in range(j0, j1):
            self._exact_max(rows, np.full(len(rows), j), j0, j1)
