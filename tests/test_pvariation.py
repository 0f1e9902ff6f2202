"""p_variation against the plain O(n^2) dynamic programme, hand-checked values, and bad input."""

import importlib.util
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from timm_overparam.research import p_variation
from timm_overparam.research import pvariation as pv

TOL = 1e-12


def oracle(path, p):
    """sup over increasing index subsequences of sum |x_{n_k} - x_{n_{k-1}}|^p, no root: the
    O(n^2) dynamic programme run[j] = max_{m<j} run[m] + |x_j - x_m|^p, written plainly."""
    x = np.asarray(path, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = len(x)
    run = [0.0] * n
    for j in range(1, n):
        dist = np.sqrt(((x[:j] - x[j]) ** 2).sum(axis=1))
        run[j] = max(run[m] + dist[m] ** p for m in range(j))
    return run[-1]


def assert_close(got, want):
    assert isinstance(got, float)
    if want == 0.0 or math.isinf(want):
        assert got == want
    else:
        assert abs(got - want) <= TOL * abs(want), (got, want, abs(got - want) / abs(want))


def walk(rng, n, d, lattice=False):
    steps = rng.choice([-1.0, 1.0], size=(n - 1, d)) if lattice else rng.normal(size=(n - 1, d))
    return np.concatenate([np.zeros((1, d)), np.cumsum(steps, axis=0) / np.sqrt(max(n, 1))])


# ---------------------------------------------------------------------------- values by hand


@pytest.mark.parametrize(
    "path, p, want",
    [
        ([0.0, 1.0, 0.0], 2, 2.0),  # up and down: 1 + 1 beats the jump 0 -> 0
        ([0.0, 3.0], 2, 9.0),
        ([0.0, 1.0, 2.0], 2, 4.0),  # monotone: one jump, 2^2 > 1 + 1
        ([0.0, 1.0, 2.0], 1, 2.0),  # p = 1: the length
        ([0.0, 2.0, 1.0, 3.0], 2, 9.0),  # 0 -> 3 (9) equals 4 + 1 + 4
        ([0.0, 2.0, 1.0, 3.0], 1.5, 2 * 2**1.5 + 1),  # the zig-zag wins for p = 1.5
        ([5.0], 3.7, 0.0),  # 1 point
        ([[1.0, 2.0]] * 6, 2.5, 0.0),  # constant path
        ([[0, 0], [1, 0], [1, 1]], 2, 2.0),  # square corner: 1 + 1 = (sqrt 2)^2
        ([[0, 0], [1, 0], [1, 1]], 3, 2 * math.sqrt(2)),  # the diagonal (sqrt 2)^3 beats 1 + 1
        ([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], 3, 4 * math.sqrt(2)),  # diagonal there and back
        ([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], 1, 4.0),  # the square's perimeter
        ([[0, 0, 0], [3, 4, 0]], 2.5, 5**2.5),  # 2 points
    ],
)
def test_hand_checked_values(path, p, want):
    assert_close(p_variation(path, p), float(want))
    assert_close(oracle(path, p), float(want))


# ------------------------------------------------------------------- against the dynamic programme


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 8, 30, 225])
def test_random_walks_match_the_dynamic_programme(d):
    rng = np.random.default_rng(d)
    for n in (1, 2, 3, 33, 70, 150, 300):
        x = walk(rng, n, d, lattice=n % 2 == 0)
        for p in (1.0, 1.5, 2.0, 2.5, 3.3, 8.0):
            assert_close(p_variation(x, p), oracle(x, p))


def test_many_small_random_paths():
    rng = np.random.default_rng(0)
    for t in range(480):
        n = int(rng.integers(1, 300))
        d = int(rng.choice([1, 1, 2, 3, 6, 17]))
        kind = t % 6
        if kind == 0:
            x = rng.normal(size=(n, d)).cumsum(axis=0)
        elif kind == 1:  # lattice walk: many exactly equal values
            x = rng.integers(-1, 2, size=(n, d)).cumsum(axis=0).astype(float)
        elif kind == 2:  # points drawn from a few values: repeats everywhere
            x = rng.integers(0, 3, size=(n, d)).astype(float)
        elif kind == 3:  # far from the origin: centring matters
            x = 1e4 + rng.choice([-1.0, 1.0], size=(n, d)).cumsum(axis=0) / math.sqrt(n)
        elif kind == 4:  # long monotone stretches with small noise
            x = np.outer(np.arange(n) ** 1.5, rng.normal(size=d)) + 1e-3 * rng.normal(size=(n, d))
        else:  # tiny and large scales mixed
            x = rng.normal(size=(n, d)) * 10.0 ** rng.integers(-6, 6, size=(n, 1))
        p = float(rng.choice([1.0, 1.2, 2.0, 2.5, 3.7, 8.0]))
        assert_close(p_variation(x, p), oracle(x, p))


@pytest.mark.parametrize("d", [1, 2, 40])
def test_adversarial_paths(d):
    rng = np.random.default_rng(1)
    n = 260
    k = np.arange(n)
    direction = rng.normal(size=d)
    paths = {
        "zigzag": np.outer((k % 2).astype(float), direction),
        "growing zigzag": np.outer((-1.0) ** k * k, direction),
        "shrinking zigzag": np.outer((-1.0) ** k * (n - k), direction),
        "staircase": np.outer(k // 2 + 2.0 * (k % 2), direction),  # 0 2 1 3 2 4 ...
        "repeated points": np.repeat(rng.normal(size=(n // 4, d)), 4, axis=0),
        "monotone": np.outer(np.sqrt(k), direction),
        "plateaus": np.outer(np.repeat(rng.normal(size=n // 10), 10), direction),
        "two points back and forth": rng.normal(size=(2, d))[k % 2],
    }
    for name, x in paths.items():
        for p in (1.0, 1.5, 2.0, 2.5, 6.0):
            got, want = p_variation(x, p), oracle(x, p)
            assert want == 0.0 or abs(got - want) <= TOL * abs(want), (name, p, got, want)


def test_one_dimensional_fallback_to_the_dense_programme(monkeypatch):
    # a staircase with p near 1 has about n^2 / 4 valid pairs: the dense programme takes over
    k = np.arange(400)
    y = k // 2 + 2.0 * (k % 2)
    calls = []
    dense = pv._Dense

    def spy(*a):
        calls.append(1)
        return dense(*a)

    monkeypatch.setattr(pv, "_Dense", spy)
    assert_close(p_variation(y, 1.1), oracle(y, 1.1))
    assert calls


def test_p_equal_1_is_the_length():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 3))
    length = np.linalg.norm(np.diff(x, axis=0), axis=1).sum()
    assert_close(p_variation(x, 1), float(length))
    assert_close(p_variation(x, 1), oracle(x, 1))


def test_monotone_one_dimensional_path_is_one_jump():
    y = np.cumsum(np.random.default_rng(3).random(1000))
    assert_close(p_variation(y, 2.5), float((y[-1] - y[0]) ** 2.5))


def spy_on(monkeypatch, name):
    calls = []
    method = getattr(pv._Dense, name)

    def spy(self, *a):
        calls.append(a)
        return method(self, *a)

    monkeypatch.setattr(pv._Dense, name, spy)
    return calls


def test_overflow_gives_inf_like_the_dynamic_programme(monkeypatch):
    exact_blocks = spy_on(monkeypatch, "_cross_exact_block")
    x = np.random.default_rng(4).normal(size=(80, 6)) * 1e60  # |x|^8 overflows float64
    with np.errstate(over="ignore"):
        assert p_variation(x, 8) == oracle(x, 8) == math.inf
    assert exact_blocks  # no bound is usable there: those blocks are done from coordinates


def test_float64_cross_step_when_float32_would_overflow(monkeypatch):
    # a far first point makes run[] vary by ~1e40 inside a cluster of extent 1e-3: the scaled
    # values would leave float32's range and those cross steps work in float64
    rng = np.random.default_rng(7)
    x = np.concatenate([np.full((1, 6), 1e6), walk(rng, 120, 6) * 1e-3])
    scales = []
    value_scale = pv._Dense._value_scale
    monkeypatch.setattr(pv._Dense, "_value_scale", lambda *a: scales.append(value_scale(*a)) or scales[-1])
    assert_close(p_variation(x, 8), oracle(x, 8))
    assert 0.0 in scales and any(scales)  # both precisions ran
    assert_close(p_variation(x, 2.5), oracle(x, 2.5))


def test_torch_threads_are_restored_and_reduced_precision_products_are_not_trusted(monkeypatch):
    rng = np.random.default_rng(8)
    x = walk(rng, 150, 12)
    want = oracle(x, 2.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    precision = torch.get_float32_matmul_precision()
    scales = []
    value_scale = pv._Dense._value_scale
    monkeypatch.setattr(pv._Dense, "_value_scale", lambda *a: scales.append(value_scale(*a)) or scales[-1])
    try:
        assert_close(p_variation(x, 2.5), want)
        assert torch.get_num_threads() == 2  # one thread inside the call only
        assert scales
        torch.set_float32_matmul_precision("medium")  # float32 products may be bf16: use float64
        scales.clear()
        assert_close(p_variation(x, 2.5), want)
        assert not scales
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.set_num_threads(threads)


def test_translation_and_point_order_reversal_do_not_change_the_value():
    rng = np.random.default_rng(5)
    x = walk(rng, 200, 9)
    v = p_variation(x, 2.5)
    assert_close(p_variation(x + 123.0, 2.5), v)
    assert_close(p_variation(x[::-1], 2.5), v)


# ---------------------------------------------------------------------------------- input forms


def test_numpy_torch_and_list_inputs_agree():
    rng = np.random.default_rng(6)
    x = walk(rng, 90, 7)
    want = oracle(x, 2.5)
    assert_close(p_variation(x, 2.5), want)
    assert_close(p_variation(torch.tensor(x), 2.5), want)
    assert_close(p_variation(torch.tensor(x, requires_grad=True), 2.5), want)
    assert_close(p_variation(x.tolist(), 2.5), want)
    assert_close(p_variation(x, np.float64(2.5)), want)
    assert_close(p_variation(x, torch.tensor(2.5)), want)
    x32 = torch.tensor(x, dtype=torch.float32)  # computed in float64 from the float32 values
    assert_close(p_variation(x32, 2), oracle(x32.double().numpy(), 2))
    y = x[:, 0]
    assert_close(p_variation(torch.tensor(y), 3), oracle(y, 3))
    assert_close(p_variation(y[:, None], 3), oracle(y, 3))
    assert_close(p_variation(np.arange(10), 2), 81.0)  # integers are taken as floats


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("p", [0.5, 0.0, -2.0, float("nan"), float("inf")])
def test_p_below_one_or_not_finite_is_refused(p):
    with pytest.raises(ValueError, match=r"p must be a finite number >= 1, got p=") as e:
        p_variation([0.0, 1.0], p)
    assert repr(float(p)) in str(e.value)


@pytest.mark.parametrize("p", ["2", None, True, 2 + 1j, [2.0]])
def test_p_of_the_wrong_type_is_refused(p):
    with pytest.raises(TypeError, match="p must be a real number >= 1"):
        p_variation([0.0, 1.0], p)


@pytest.mark.parametrize("path", [[], np.zeros((0, 3)), torch.zeros(0)])
def test_empty_path_is_refused(path):
    with pytest.raises(ValueError, match=r"path is empty .* at least 1 point"):
        p_variation(path, 2)


def test_points_without_coordinates_are_refused():
    with pytest.raises(ValueError, match="dimension 0"):
        p_variation(np.zeros((4, 0)), 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_refused_with_the_point(bad):
    x = np.zeros((5, 2))
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"non-finite values \(first at point 3.*drop or fill"):
        p_variation(x, 2)
    with pytest.raises(ValueError, match="first at point 3"):
        p_variation(torch.tensor(x), 2)


@pytest.mark.parametrize("shape", [(), (4, 3, 2), (2, 2, 2, 2)])
def test_wrong_number_of_dimensions_is_refused(shape):
    with pytest.raises(ValueError, match=r"path must be \(n,\) or \(n, d\).*reshape"):
        p_variation(np.zeros(shape), 2)


@pytest.mark.parametrize(
    "path", [np.array([1 + 1j, 2]), torch.tensor([1 + 1j, 2]), ["a", "b"], [[0.0, 1.0], [2.0]]]
)
def test_non_real_paths_are_refused(path):
    with pytest.raises(TypeError, match="path must be"):
        p_variation(path, 2)


# --------------------------------------------------------------------------- the benchmark's files


def test_benchmark_writes_the_anchor_format(tmp_path, monkeypatch):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pvariation.py"
    spec = importlib.util.spec_from_file_location("pvariation_bench", script)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    x = bench.random_walk(50, 3)
    steps = np.abs(np.diff(x, axis=0))
    assert x.shape == (50, 3) and (x[0] == 0).all() and np.allclose(steps, 1 / math.sqrt(50))
    bench.write_path(tmp_path / "w.bin", x)
    raw = (tmp_path / "w.bin").read_bytes()
    assert struct.unpack("<QQ", raw[:16]) == (50, 3)
    assert (np.frombuffer(raw[16:], dtype="<f8").reshape(50, 3) == x).all()
    assert set(bench.CASES) >= {"walk_d225_n2000_p2.5", "walk_d225_n10000_p2", "walk_d1_n100000_p2.5"}
