"""Fits of Omega(t) = C / (t + T0)^rho: parameters recovered from noisy synthetic series, the
original's filter and window rules on hand-made series, the CLI on a run folder's omega.csv."""

import subprocess
import sys

import numpy as np
import pytest

from timm_overparam.research.curve_fit import Fit, clean_series, fit_omega, main, read_omega


def noisy(t, C, rho, T0, rel, seed=0):
    """C / (t + T0)^rho with relative Gaussian noise (sd ``rel``)."""
    rng = np.random.default_rng(seed)
    clean = C / (t + T0) ** rho
    return clean * (1 + rel * rng.standard_normal(len(t)))


def test_fit_recovers_C_and_rho_from_noisy_data():
    t = np.arange(600.0)
    fit = fit_omega(t, noisy(t, 2.5, 0.6, 1.0, 0.03), window_size=5)
    assert fit.C == pytest.approx(2.5, rel=0.03)
    assert fit.rho == pytest.approx(0.6, rel=0.03)
    assert fit.T0 == 1.0 and set(fit.stderr) == {"C", "rho"} and not fit.infer_shift
    assert fit.n_total == 600 and fit.n_points == 360  # 120 windows of 5 keep 3 each (no ties)
    assert fit(np.array([0.0, 3.0])) == pytest.approx([fit.C, fit.C / 4**fit.rho])


def test_standard_errors_cover_the_truth_under_additive_noise():
    # the least-squares covariance assumes additive noise of one variance: 20 series, the truth
    # within 3 standard errors in nearly all of them
    t = np.arange(300.0)
    covered = 0
    for seed in range(20):
        y = 2.0 / (t + 1) ** 0.5 + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
        fit = fit_omega(t, y, window_size=0)
        covered += abs(fit.C - 2.0) < 3 * fit.stderr["C"] and abs(fit.rho - 0.5) < 3 * fit.stderr["rho"]
    assert covered >= 18


def test_fit_recovers_the_shift():
    t = np.arange(2000.0)
    fit = fit_omega(t, noisy(t, 40.0, 0.8, 20.0, 0.01, seed=1), window_size=0, infer_shift=True)
    assert fit.infer_shift and set(fit.stderr) == {"C", "rho", "T0"}
    assert fit.T0 == pytest.approx(20.0, rel=0.15)
    assert fit.rho == pytest.approx(0.8, rel=0.03)
    assert fit.C == pytest.approx(40.0, rel=0.15)
    assert all(0 < e < 1 for e in fit.stderr.values())
    assert "T0 = " in fit.summary() and "(2000 of 2000 points)" in fit.summary()
    # scaling_x: t in other units gives the same curve in those units
    scaled = fit_omega(
        t, noisy(t, 40.0, 0.8, 20.0, 0.01, seed=1), window_size=0, infer_shift=True, scaling_x=0.5
    )
    assert scaled.T0 == pytest.approx(fit.T0 / 2, rel=1e-3)
    assert scaled.rho == pytest.approx(fit.rho, rel=1e-3)


def test_filter_and_window_rules_on_a_hand_made_series():
    t, y = np.arange(10.0), [4, 7, 1, 9, 3, 3, 8, 2, 5, 6]
    # filter_period 3 drops positions 3, 6, 9 (1-based): 4 7 9 3 8 2 6 at t 0 1 3 4 6 7 9
    kept_t, kept_y = clean_series(t, y, window_size=0, filter_period=3)
    assert kept_t.tolist() == [0, 1, 3, 4, 6, 7, 9] and kept_y.tolist() == [4, 7, 9, 3, 8, 2, 6]
    # window_size 3 on those 7 points: 7 // 3 = 2 windows of 4 and 3 (numpy.array_split);
    # [4 7 9 3] loses 9 and 3, [8 2 6] loses 8 and 2
    kept_t, kept_y = clean_series(t, y, window_size=3, filter_period=3)
    assert kept_t.tolist() == [0, 1, 9] and kept_y.tolist() == [4, 7, 6]
    # ties: every point equal to the window's min or max goes
    kept_t, kept_y = clean_series(range(8), [5, 5, 1, 3, 2, 2, 2, 9], window_size=4)
    assert kept_t.tolist() == [3] and kept_y.tolist() == [3]
    kept_t, _ = clean_series(range(5), [1, 2, 3, 4, 5], window_size=0, filter_period=0)
    assert kept_t.tolist() == [0, 1, 2, 3, 4]


def test_fit_refuses_what_it_cannot_fit():
    t = np.arange(20.0)
    y = 1 / (t + 1)
    with pytest.raises(ValueError, match="window_size = 2 drops every point"):
        fit_omega(t, y, window_size=2)
    with pytest.raises(ValueError, match="filter_period = 1 drops every point"):
        fit_omega(t, y, filter_period=1)
    with pytest.raises(ValueError, match="window_size must be an integer >= 0"):
        clean_series(t, y, window_size=-1)
    with pytest.raises(ValueError, match="fewer than one window"):
        clean_series(t[:3], y[:3], window_size=5)
    with pytest.raises(ValueError, match=r"3 points left.*4 or more"):
        fit_omega(t[:5], y[:5], window_size=0, filter_period=2, infer_shift=True)
    with pytest.raises(ValueError, match="not finite at t = 3"):
        fit_omega(t, np.where(t == 3, np.inf, y))
    with pytest.raises(ValueError, match="unknown parameter 'c'"):
        fit_omega(t, y, bounds={"c": (0, 1)})
    with pytest.raises(ValueError, match="differ in length"):
        clean_series(t, y[:-1])
    assert fit_omega(t, y, window_size=0, bounds={"rho": (0, 0.5)}).rho == pytest.approx(0.5)


def write_omega_csv(path, t, y):
    path.write_text("step,omega\n" + "".join(f"{int(s)},{float(o)!r}\n" for s, o in zip(t, y, strict=True)))


def test_cli_on_a_run_folder_and_a_csv(tmp_path, capsys):
    t = np.arange(300.0)
    y = noisy(t, 3.0, 0.5, 1.0, 0.02, seed=2)
    run = tmp_path / "run"
    run.mkdir()
    write_omega_csv(run / "omega.csv", t, y)
    read_t, read_y = read_omega(run)
    assert read_t.tolist() == t.tolist() and read_y.tolist() == y.tolist()
    png = tmp_path / "fit.png"
    assert main([str(run), "--window-size", "5", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    expected = fit_omega(t, y, window_size=5)
    assert f"C = {expected.C:.6g}" in out and f"rho = {expected.rho:.6g}" in out and "T0 = 1 (fixed)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic save left no temporary file
    assert main([str(run / "omega.csv"), "--infer-shift", "--window-size", "0", "--bound", "T0=0.5,5"]) == 0
    assert "T0 = " in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "neither a run folder nor a CSV" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "has no omega.csv: train with --store-grad" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("step,value\n0,1\n")
    assert main([str(tmp_path / "bad.csv")]) == 2
    assert "lacks the column(s) ['omega']" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("step,omega\n0,1\n1,nan?\n")
    assert main([str(tmp_path / "bad.csv")]) == 2
    assert "line 3: step and omega must be numbers" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    write_omega_csv(tmp_path / "omega.csv", range(40), 2.0 / (np.arange(40.0) + 1) ** 0.7)
    out = subprocess.run(
        [sys.executable, "-m", "timm_overparam.research.curve_fit", str(tmp_path), "--window-size", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "C = 2 ±" in out and "rho = 0.7 ±" in out


def test_fit_is_a_plain_record():
    fit = Fit(C=1.0, rho=2.0, T0=3.0, stderr={"C": 0.1, "rho": 0.2, "T0": 0.3}, infer_shift=True)
    assert float(fit(1.0)) == pytest.approx(1 / 16) and fit.n_points == 0


def test_a_fit_that_does_not_converge_is_a_clear_error(monkeypatch):
    """scipy's RuntimeError (no convergence, e.g. on a nearly flat Omega) becomes a ValueError saying why."""

    def fails(*args, **kwargs):
        raise RuntimeError(
            "Optimal parameters not found: The maximum number of function evaluations is exceeded."
        )

    monkeypatch.setattr("scipy.optimize.curve_fit", fails)  # imported by fit_omega when it fits
    t = np.arange(200.0)
    with pytest.raises(ValueError, match=r"did not converge .* a nearly flat series"):
        fit_omega(t, 1.9946 - 4e-6 * t, infer_shift=True)
