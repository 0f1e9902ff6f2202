"""lab.report: a results.json built by hand, its statistics checked against numbers computed here
(t intervals with numpy/scipy, Wilson's closed form), the markdown table, the figure for every x,
the errors and the written report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from timm_overparam.lab.paired import newcombe_interval, paired_rows, paired_table
from timm_overparam.lab.report import (
    X_CHOICES,
    load_results,
    markdown_table,
    plot_results,
    summarize_results,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"

# per-restart accuracies (5 restarts); success threshold 0.99
METRIC = {
    ("naive", 3): [1.0, 1.0, 1.0, 1.0, 0.75],  # 4 of 5 succeed
    ("naive", 5): [1.0, 1.0, 1.0, 1.0, 1.0],  # every restart: no spread
    ("naive_op2", 3): [1.0, 0.75, 0.5, 1.0, 0.995],  # 3 of 5 (0.995 >= 0.99)
    ("naive_op2", 5): [1.0, 1.0, 0.985, 1.0, 1.0],  # 4 of 5
    ("naive_line", 3): [0.5, 0.75, 1.0, 1.0, 0.25],
    ("hyper", 3): [1.0, 0.5, 0.5, 0.75, 1.0],
    ("hyper", 5): [1.0, 1.0, 0.5, 1.0, 1.0],
}
LINE_POINTS = {
    "0": [1.0, 1.0, 1.0, 0.5, 1.0],
    "0.5": METRIC[("naive_line", 3)],
    "1": [0.75, 0.75, 1.0, 1.0, 1.0],
}


def _config(model: str, size: int) -> dict:
    base = "hyper" if model == "hyper" else "naive"
    family = "line" if model.endswith("_line") else "op" if "_op" in model else "plain"
    params = 16 if size == 3 else 26
    config = {
        "model": model,
        "base": base,
        "family": family,
        "arch": f"lab_{base}_cnn",
        "size": size,
        "trainable_params": params * (2 if family == "op" else 1),
        "deployed_params": params,
        "seed_x": 5 if model == "hyper" else params,
        "seeds": list(range(5)),
        "metric": METRIC[(model, size)],
        "seconds": 0.5,
    }
    if family == "line":
        config["points"] = LINE_POINTS
    return config


def make_results(experiment: str = "pattern") -> dict:
    # keys out of order: the rows are sorted by model (natural order) then size
    keys = sorted(METRIC, key=lambda k: (-k[1], k[0]))
    return {
        "version": 1,
        "experiment": experiment,
        "settings": {
            "restarts": 5,
            "seed": 0,
            "dtype": "float32",
            "steps": 100,
            "lr": 0.1,
            "momentum": 0.5,
            "beta": 1.0,
            "metric": "accuracy" if experiment == "pattern" else "macro_f1",
            "success": 0.99,
            "size_name": "filters" if experiment == "pattern" else "width",
        },
        "configs": {f"{m}:{s}": _config(m, s) for m, s in keys},
    }


def write_results(folder: Path, results: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results or make_results()))
    return folder


def wilson(k: int, n: int, z: float = stats.norm.ppf(0.975)) -> tuple[float, float]:
    """Wilson's score interval in closed form."""
    p = k / n
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return center - half, center + half


def test_rows_sorted_with_t_intervals_and_wilson_bounds():
    rows = summarize_results(make_results())
    assert [(r.model, r.size) for r in rows] == [
        ("hyper", 3),
        ("hyper", 5),
        ("naive", 3),
        ("naive", 5),
        ("naive_line", 3),
        ("naive_op2", 3),
        ("naive_op2", 5),
    ]
    for r in rows:
        values = np.array(METRIC[(r.model, r.size)])
        assert r.n == 5
        assert r.mean == pytest.approx(values.mean())
        half = stats.t.ppf(0.975, 4) * values.std(ddof=1) / math.sqrt(5)
        assert r.ci == pytest.approx(half, abs=1e-12)
        k = int((values >= 0.99).sum())
        assert r.success_rate == k / 5
        assert (r.success_low, r.success_high) == pytest.approx(wilson(k, 5))
    naive3 = rows[2]
    assert naive3.success_rate == 0.8
    assert naive3.success_low == pytest.approx(0.3755, abs=1e-4)  # 4 of 5, worked out by hand
    assert naive3.success_high == pytest.approx(0.9638, abs=1e-4)
    assert rows[3].ci == 0.0 and rows[3].success_high == 1.0  # no spread: a zero-width t interval
    assert (naive3.family, naive3.base, naive3.trainable_params, naive3.seed_x) == ("plain", "naive", 16, 16)
    assert rows[5].trainable_params == 32 and rows[5].deployed_params == 16
    assert rows[0].hyper and not naive3.hyper and rows[0].seed_x == 5


def test_line_endpoints_leave_the_midpoint_out():
    rows = summarize_results(make_results())
    line = next(r for r in rows if r.family == "line")
    assert line.endpoints == pytest.approx({"0": 0.9, "1": 0.9})
    assert list(line.endpoints) == ["0", "1"]
    assert line.mean == pytest.approx(np.mean(LINE_POINTS["0.5"]))
    assert all(not r.endpoints for r in rows if r.family != "line")


def test_success_override():
    rows = {(r.model, r.size): r for r in summarize_results(make_results(), success=0.5)}
    assert rows[("naive", 3)].success_rate == 1.0
    assert rows[("naive_op2", 3)].success_rate == 1.0  # 0.5 >= 0.5
    assert rows[("naive_line", 3)].success_rate == 0.8
    assert (rows[("naive_line", 3)].success_low, rows[("naive_line", 3)].success_high) == pytest.approx(
        wilson(4, 5)
    )
    results = make_results()
    del results["settings"]["success"]
    with pytest.raises(ValueError, match="success"):
        summarize_results(results)
    assert summarize_results(results, success=0.99)[2].success_rate == 0.8


def test_markdown_table():
    rows = summarize_results(make_results())
    text = markdown_table(rows, "accuracy")
    lines = text.splitlines()
    assert lines[0] == (
        "| model | size | trainable params | deployed params | restarts | accuracy mean ± 95% CI "
        "| success rate [95% CI] | accuracy at the endpoints |"
    )
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert len(lines) == 2 + len(rows)
    ci = stats.t.ppf(0.975, 4) * np.std(METRIC[("naive", 3)], ddof=1) / math.sqrt(5)
    assert f"| naive | 3 | 16 | 16 | 5 | 0.950 ± {ci:.3f} | 80.0% [37.6%, 96.4%] |  |" in lines
    assert "| naive | 5 | 26 | 26 | 5 | 1.000 ± 0.000 | 100.0% [56.6%, 100.0%] |  |" in lines
    assert any(line.startswith("| naive_op2 | 3 | 32 | 16 | 5 | 0.849 ± ") for line in lines)
    line = next(line for line in lines if line.startswith("| naive_line |"))
    assert line.endswith("| 40.0% [11.8%, 76.9%] | a=0: 0.900, a=1: 0.900 |")
    plain = markdown_table([r for r in rows if r.family != "line"], "macro F1")
    assert "endpoints" not in plain and "macro F1 mean ± 95% CI" in plain


@pytest.mark.parametrize("experiment", ["pattern", "boolnet"])
def test_plot_every_x(tmp_path, experiment):
    results = make_results(experiment)
    for x in X_CHOICES:
        path = plot_results(results, tmp_path / f"{x}.png", x=x)
        assert path == str(tmp_path / f"{x}.png")
        assert Path(path).read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{x}.png" for x in X_CHOICES)


def test_errors(tmp_path):
    results = make_results()
    with pytest.raises(ValueError, match=r"x='params'.*'deployed', 'seed', 'size', 'trainable'"):
        plot_results(results, tmp_path / "a.png", x="params")
    with pytest.raises(ValueError, match="x='params'"):
        write_report(write_results(tmp_path / "run"), x="params")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.json"]  # nothing written
    missing = tmp_path / "empty"
    missing.mkdir()
    with pytest.raises(ValueError, match=rf"{missing / 'results.json'}: no results file"):
        load_results(missing)
    results["version"] = 2
    old = write_results(tmp_path / "v2", results)
    with pytest.raises(ValueError, match=rf"{old / 'results.json'}: results version 2"):
        load_results(old)
    (old / "results.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(old)


def test_write_report(tmp_path):
    run = write_results(tmp_path / "run")
    assert load_results(run) == make_results()
    report, figure = write_report(run)
    assert (report, figure) == (str(run / "report.md"), str(run / "lab.png"))
    assert Path(figure).read_bytes()[:8] == PNG
    text = Path(report).read_text()
    assert text.startswith("# pattern: pattern 1101 (max-pooled Conv1d)\n")
    assert "Settings: restarts=5, seed=0, dtype=float32, steps=100, lr=0.1" in text
    assert markdown_table(summarize_results(make_results()), "accuracy") in text
    assert "![lab](lab.png)" in text
    assert sorted(p.name for p in run.iterdir()) == ["lab.png", "report.md", "results.json"]  # no temp files

    out = tmp_path / "figures" / "boolnet.png"
    write_results(tmp_path / "bool", make_results("boolnet"))
    report, figure = write_report(tmp_path / "bool", out=out, x="size", success=0.5)
    assert figure == str(out) and out.read_bytes()[:8] == PNG
    text = Path(report).read_text()
    assert "overridden for this report: 0.5" in text and "macro F1 mean ± 95% CI" in text
    assert "| naive | 3 | 16 | 16 | 5 | 0.950 ± " in text and "| 100.0% [56.6%, 100.0%] |" in text
    assert "![lab](../figures/boolnet.png)" in text
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["boolnet.png"]
    assert sorted(p.name for p in (tmp_path / "bool").iterdir()) == ["report.md", "results.json"]


# ------------------------------------------------------------------------------ paired comparisons
def test_newcombe_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), chapter 8: the
    # paired table [[59, 6], [16, 80]], Newcombe's square-and-add interval -0.1186 to -0.0046
    low, high = newcombe_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    # no discordant pairs and every pair a success: the interval still holds 0 and stays in [-1, 1]
    low, high = newcombe_interval(20, 0, 0, 0)
    assert -1.0 <= low <= 0.0 <= high <= 1.0
    with pytest.raises(ValueError, match="at least one pair"):
        newcombe_interval(0, 0, 0, 0)


def test_paired_rows_pair_restarts_by_seed(tmp_path):
    def config(model, family, seeds, metric):
        return {"model": model, "base": "naive", "family": family, "size": 2, "trainable_params": 11,
                "deployed_params": 11, "seed_x": 11, "seeds": seeds, "metric": metric}  # fmt: skip

    results = {
        "version": 1,
        "experiment": "pattern",
        "settings": {"restarts": 5, "metric": "accuracy", "success": 0.99},
        "configs": {
            "naive:2": config("naive", "plain", [1, 2, 3, 4, 5], [0.5, 1.0, 1.0, 0.5, 1.0]),
            # seed 9 has no partner: left out
            "naive_op2:2": config("naive_op2", "op", [1, 2, 3, 4, 5, 9], [1.0, 1.0, 0.5, 1.0, 1.0, 0.2]),
        },
    }
    (row,) = paired_rows(results)
    assert (row.model, row.base, row.size, row.n) == ("naive_op2", "naive", 2, 5)
    # differences 0.5, 0, -0.5, 0.5, 0
    assert row.metric.mean == pytest.approx(0.1) and (
        row.metric.wins,
        row.metric.ties,
        row.metric.losses,
    ) == (2, 2, 1)
    assert row.metric.std == pytest.approx(np.std([0.5, 0, -0.5, 0.5, 0], ddof=1))
    assert (row.b, row.c) == (2, 1) and row.success == pytest.approx(0.2)
    assert row.p == pytest.approx(1.0)  # 2 of 3 discordant: McNemar's exact p is 1
    assert (row.success_low, row.success_high) == pytest.approx(newcombe_interval(2, 2, 1, 0))
    table = paired_table([row], "accuracy")
    assert "| naive_op2 | naive | 2 | 5 | +0.100 [" in table and "| 2 / 1 | 1 |" in table
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(results))
    report, _ = write_report(folder)
    assert "paired restarts" in Path(report).read_text()
    del results["configs"]["naive:2"]  # no base model: no paired section
    (folder / "results.json").write_text(json.dumps(results))
    assert "paired restarts" not in Path(write_report(folder)[0]).read_text()
    assert paired_rows(results) == []
