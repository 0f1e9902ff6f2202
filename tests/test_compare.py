"""compare: run records from run folders, wandb folders and the wandb API; group statistics checked
against numbers worked out by hand; the report files; the command line."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from timm_overparam.compare import main
from timm_overparam.sweep.report import compare, pool_reliability
from timm_overparam.sweep.runs import Run, find_runs, read_api_runs, read_runs, split_points
from timm_overparam.sweep.stats import compare_runs

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]

# final top-1 per seed; each run's best epoch (1) is 0.02 above its final epoch (2)
GROUPS = {
    "resnet18": {0: 0.90, 1: 0.92, 2: 0.94},
    "resnet18_op2": {0: 0.91, 1: 0.95, 2: 0.96},
    "resnet18_op3": {0: 0.93, 1: 0.92, 7: 0.80},  # seed 7 has no partner; seed 1 ties
    "resnet50": {0: 0.97},  # one run: no interval
}
DEPTH = {"resnet18": 1, "resnet18_op2": 2, "resnet18_op3": 3, "resnet50": 4}


def write_run(folder: Path, config: dict, rows: list[dict], results: dict | None) -> None:
    """A run folder as train.py writes it: args.yaml, summary.csv, results.json once finished."""
    folder.mkdir(parents=True)
    (folder / "args.yaml").write_text(yaml.safe_dump(config))
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))


def make_sweep(root: Path) -> Path:
    """The four groups above, one folder per run (names out of order), plus an unfinished run."""
    for model, seeds in GROUPS.items():
        for seed, top1 in seeds.items():
            op = model.startswith("resnet18_op")
            rows = [
                {
                    "epoch": e,
                    "train_loss": 1.0 - 0.1 * e,
                    **({"train_step_time": 0.02 * (e + 1)} if op else {}),  # mean 0.04 over 3 epochs
                    "eval_top1": v,
                    "eval_loss": 0.5,
                    "lr": 0.05,
                }
                for e, v in enumerate([0.5, top1 + 0.02, top1])
            ]
            results = {
                "model": model,
                "family": "op" if op else "plain",
                "epochs": 3,
                "eval_metric": "top1",
                "best_metric": top1 + 0.02,
                "best_epoch": 1,
                "final": {
                    "top1": top1,
                    "loss": 0.5,
                    **({"erank": 10.0 + seed} if model == "resnet18" else {}),
                },
                "param_count": 300 if op else 100,
                **({"param_count_collapsed": 100} if op else {"seconds_per_step": 0.01}),
            }
            config = {"model": model, "seed": seed, "lr": 0.05, "depth": DEPTH[model], "eval_metric": "top1"}
            write_run(root / f"{seed}-{model}", config, rows, results)
    unfinished = [{"epoch": 0, "train_loss": 1.0, "eval_top1": 0.5, "eval_loss": 0.7, "lr": 0.05}]
    config = {"model": "resnet18_op2", "seed": 3, "lr": 0.05, "depth": 2, "eval_metric": "top1"}
    write_run(root / "nested" / "3-resnet18_op2", config, unfinished, None)
    return root


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep")


def by_label(comparison):
    return {g.label: g for g in comparison.groups}


def test_groups_statistics_and_paired_differences_match_hand_computed_numbers(sweep):
    c = compare_runs(find_runs(sweep), ["model"], "top1")
    assert [g.label for g in c.groups] == ["resnet18", "resnet18_op2", "resnet18_op3", "resnet50"]
    assert c.baseline == "resnet18"
    g = by_label(c)
    a = g["resnet18"].summary
    assert (a.n, a.min, a.max) == (3, 0.90, 0.94)
    assert a.mean == pytest.approx(0.92, abs=1e-12)
    assert a.std == pytest.approx(0.02, abs=1e-12)
    assert a.ci == pytest.approx(4.302653 * 0.02 / math.sqrt(3), abs=1e-6)
    assert a.ci == pytest.approx(0.049683, abs=1e-5)
    b = g["resnet18_op2"].summary  # 0.91, 0.95, 0.96: squared deviations 9e-4 + 1e-4 + 4e-4
    assert (b.n, b.mean) == (3, pytest.approx(0.94, abs=1e-12))
    assert b.std == pytest.approx(math.sqrt(0.0014 / 2), abs=1e-12)
    # B - A by seed: 0.01, 0.03, 0.02
    d = g["resnet18_op2"].paired
    assert (d.n, d.wins, d.ties, d.losses) == (3, 3, 0, 0)
    assert d.mean == pytest.approx(0.02, abs=1e-12)
    assert d.std == pytest.approx(0.01, abs=1e-12)
    assert d.ci == pytest.approx(0.024841, abs=1e-5)
    # t = 0.02 / (0.01 / sqrt 3) = sqrt 12; with 2 degrees of freedom the t cdf is 1/2 + t / (2 sqrt(2 + t^2))
    t = math.sqrt(12)
    assert d.p == pytest.approx(2 * (1 - (0.5 + t / (2 * math.sqrt(2 + t * t)))), abs=1e-9)
    assert d.p == pytest.approx(2 * stats.t.sf(3.4641016, 2), abs=1e-6)  # scipy as an independent oracle
    assert d.p == pytest.approx(0.0742, abs=1e-4)
    # C - A over seeds 0 and 1 only (7 is unmatched): 0.03 and 0.00 -> t = 1 on 1 degree of freedom
    # (Cauchy: p = 1 - 2 atan(1) / pi = 0.5), interval 12.706205 * 0.0212132 / sqrt 2
    d = g["resnet18_op3"].paired
    assert (d.n, d.wins, d.ties, d.losses) == (2, 1, 1, 0)
    assert d.mean == pytest.approx(0.015, abs=1e-12)
    assert d.ci == pytest.approx(12.706205 * math.sqrt(0.00045) / math.sqrt(2), abs=1e-5)
    assert d.p == pytest.approx(0.5, abs=1e-9)
    assert g["resnet18_op3"].summary.n == 3  # the unmatched seed still counts for the group's own mean
    assert (
        "resnet18_op3 vs resnet18: seed [7] only in resnet18_op3, [2] only in resnet18: left out of the pairs"
        in c.notes
    )
    # one run: no interval, one pair with no test
    one = g["resnet50"]
    assert (one.summary.n, one.summary.std, one.summary.ci, one.summary.mean) == (1, None, None, 0.97)
    assert (one.paired.n, one.paired.ci, one.paired.p, one.paired.wins) == (1, None, None, 1)
    assert one.paired.mean == pytest.approx(0.07, abs=1e-12)
    # the unfinished run (seed 3 of resnet18_op2, no results.json) is left out and counted
    assert any(n.startswith("1 unfinished run(s) left out") and "3-resnet18_op2" in n for n in c.notes)
    # counts, time per step (results.json's, else the mean train_step_time), erank
    assert (g["resnet18"].param_count, g["resnet18"].param_count_stock) == (100, 100)
    assert (g["resnet18_op2"].param_count, g["resnet18_op2"].param_count_stock) == (300, 100)
    assert g["resnet18"].seconds_per_step == pytest.approx(0.01)
    assert g["resnet18_op2"].seconds_per_step == pytest.approx(0.04)
    erank = g["resnet18"].extras["erank"]  # 10, 11, 12
    assert (erank.mean, erank.std) == (pytest.approx(11.0), pytest.approx(1.0))
    assert "erank" not in g["resnet18_op2"].extras


def test_best_epoch_unfinished_runs_filters_and_baseline(sweep):
    runs = find_runs(sweep)
    assert len(read_runs([sweep, sweep / "nested"])) == len(runs) == 11  # each run once
    best = by_label(compare_runs(runs, ["model"], "top1", which="best"))
    assert best["resnet18"].summary.mean == pytest.approx(0.94, abs=1e-12)  # 0.92, 0.94, 0.96
    with_unfinished = by_label(compare_runs(runs, ["model"], "top1", include_unfinished=True))
    op2 = with_unfinished["resnet18_op2"]
    assert sorted(op2.values) == [0.5, 0.91, 0.95, 0.96]  # its last summary row
    assert op2.paired.n == 3  # seed 3 has no resnet18 partner
    c = compare_runs(
        runs, ["model"], "top1", baseline="resnet18_op2", filters=["model=resnet18,resnet18_op2"]
    )
    assert [g.label for g in c.groups] == ["resnet18", "resnet18_op2"]
    assert by_label(c)["resnet18"].paired.mean == pytest.approx(-0.02, abs=1e-12)
    assert (by_label(c)["resnet18"].paired.wins, by_label(c)["resnet18"].paired.losses) == (0, 3)
    loss = by_label(compare_runs(runs, ["model"], "loss", filters=["depth=1,2"]))
    assert (loss["resnet18_op2"].paired.mean, loss["resnet18_op2"].paired.ties) == (0.0, 3)  # lower is better
    two = compare_runs(runs, ["depth", "lr"], "top1")
    assert [g.label for g in two.groups][:2] == ["depth=1,lr=0.05", "depth=2,lr=0.05"]


def test_bad_input_names_the_choices(sweep, tmp_path):
    runs = find_runs(sweep)
    with pytest.raises(
        ValueError,
        match=r"--group-by 'width'.*the keys are \['depth', 'eval_metric', 'lr', 'model', 'seed'\]",
    ):
        compare_runs(runs, ["width"])
    with pytest.raises(ValueError, match=r"--metric 'top2'.*the metrics are \['erank', 'loss', 'top1'\]"):
        compare_runs(runs, ["model"], "top2")
    with pytest.raises(ValueError, match=r"--baseline 'vgg'.*\['resnet18', 'resnet18_op2'"):
        compare_runs(runs, ["model"], baseline="vgg")
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        compare_runs(runs, filters=["model"])
    with pytest.raises(ValueError, match=r"matches no run; the values of 'depth' are \['1', '2', '3', '4'\]"):
        compare_runs(runs, filters=["depth=9"])
    with pytest.raises(ValueError, match=r"--x 'width': no run has this key"):
        compare([sweep], x="width")
    with pytest.raises(
        ValueError, match=r"--x 'depth' varies inside group 0.05 \(\['1', '2', '3', '4'\]\): add it"
    ):
        compare([sweep], group_by=["lr"], x="depth")
    with pytest.raises(ValueError, match="is not a folder"):
        read_runs([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="needs --wandb"):
        read_runs([sweep], sweep="ab12")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no runs under"):
        find_runs(tmp_path / "empty")


def test_runs_with_the_same_seed_in_a_group_are_not_paired(sweep):
    runs = find_runs(sweep)
    twin = next(r for r in runs if r.name == "0-resnet18_op2")
    clone = Run("twin", "folder", "twin", {**twin.config, "lr": 0.1}, twin.final, twin.history)
    c = compare_runs([*runs, clone], ["model"])
    assert by_label(c)["resnet18_op2"].paired is None
    assert any("4 runs" not in n and "seed=0" in n and "differ in ['lr']" in n for n in c.notes)


def test_report_files_csv_markdown_and_figures(sweep, tmp_path):
    line = tmp_path / "sweep" / "line"
    for seed, (p0, p1, ens) in enumerate([(0.8, 0.9, 0.95), (0.82, 0.88, 0.93)]):
        final = {"top1": (p0 + p1) / 2, "point0_top1": p0, "point1_top1": p1, "ens0+1_top1": ens}
        bins = {"count": [10, 30, 0], "confidence": [0.3, 0.8, None], "accuracy": [0.2, 0.9, None]}
        results = {"final": final, "reliability": {"point0": bins, "ens0+1": bins}, "param_count": 200}
        rows = [{"epoch": 0, "train_loss": 1.0, "eval_top1": final["top1"], "lr": 0.1}]
        write_run(line / str(seed), {"model": "resnet18_line", "seed": seed, "depth": 5}, rows, results)
    out = tmp_path / "report"
    text = compare([sweep], group_by=["model"], metric="top1", x="depth", out=out)
    assert text.splitlines()[0] == "top1 at the last epoch, grouped by model"
    assert "0.9200 ± 0.0497" in text and "+0.0200 ± 0.0248" in text and "n=1: no interval" in text
    with open(out / "comparison.csv", newline="") as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["resnet18", "resnet18_line", "resnet18_op2", "resnet18_op3", "resnet50"]
    a, b = rows["resnet18"], rows["resnet18_op2"]
    assert (a["n"], a["model"], a["metric"], a["which"], a["baseline"]) == (
        "3",
        "resnet18",
        "top1",
        "final",
        "resnet18",
    )
    assert float(a["mean"]) == pytest.approx(0.92) and float(a["ci95_half"]) == pytest.approx(
        0.049683, abs=1e-5
    )
    assert float(a["ci95_low"]) == pytest.approx(0.92 - 0.049683, abs=1e-5)
    assert (float(b["diff_mean"]), float(b["diff_ci95_half"])) == (
        pytest.approx(0.02),
        pytest.approx(0.024841, abs=1e-5),
    )
    assert (float(b["p"]), b["wins"], b["ties"], b["losses"], b["diff_n"]) == (
        pytest.approx(0.0742, abs=1e-4),
        "3",
        "0",
        "0",
        "3",
    )
    assert (b["param_count"], b["param_count_stock"], rows["resnet50"]["ci95_half"]) == ("300", "100", "")
    assert float(a["erank_mean"]) == pytest.approx(11.0) and a["runs"] == "0-resnet18;1-resnet18;2-resnet18"
    md = (out / "comparison.md").read_text()
    assert "| group | n | top1 mean ± 95% CI |" in md and "| resnet18_op2 | 3 | 0.9400 ± 0.0657 |" in md
    assert (
        f"python -m timm_overparam.compare {sweep} --group-by model --metric top1 --final --x depth --out {out}"
        in md
    )
    assert "1 unfinished run(s) left out" in md and "![top1_by_group](top1_by_group.png)" in md
    pngs = [
        "top1_by_group.png",
        "top1_curves.png",
        "top1_points.png",
        "reliability.png",
        "erank_by_group.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG, name
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*pngs, "comparison.csv", "comparison.md", "runs.csv"]
    )
    with open(out / "runs.csv", newline="") as f:
        per_run = [r for r in csv.DictReader(f) if r["group"] == "resnet18"]
    assert [(r["seed"], float(r["top1"]), r["erank"]) for r in per_run] == [
        ("0", 0.90, "10.0"),
        ("1", 0.92, "11.0"),
        ("2", 0.94, "12.0"),
    ]
    pooled = pool_reliability(by_label(compare_runs(find_runs(line)))["resnet18_line"].runs, "point0")
    assert pooled == ([0.3, 0.8], [0.2, 0.9])


def test_figures_only_when_their_data_exist(tmp_path):
    rows = [{"epoch": 0, "train_loss": 1.0, "eval_top1": 0.5, "lr": 0.1}]
    write_run(tmp_path / "runs" / "a", {"model": "m", "seed": 0}, rows, {"final": {"top1": 0.5}})
    compare([tmp_path / "runs"], out=tmp_path / "report")
    written = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert written == ["comparison.csv", "comparison.md", "runs.csv", "top1_by_group.png", "top1_curves.png"]


def _offline_run(folder: Path, config: dict, top1: list[float]) -> Path:
    """A real wandb offline run logged as train.py does (step = epoch); returns its run folder."""
    import wandb

    folder.mkdir(parents=True, exist_ok=True)  # wandb < 0.19 logs into the current folder otherwise
    run = wandb.init(
        dir=folder, project="compare-test", config=config, name=f"seed{config['seed']}", mode="offline"
    )
    for epoch, value in enumerate(top1):
        wandb.log(
            {"train_loss": 1.0 / (epoch + 1), "lr": 0.1, "eval_top1": value, "eval_ece": 0.05}, step=epoch
        )
    run.finish()
    wandb.teardown()  # wandb's service writes the log after finish() returns: flushed once it stops
    return next((folder / "wandb").glob("offline-run-*"))


def test_wandb_offline_runs_are_read_from_their_log(tmp_path):
    first = _offline_run(
        tmp_path / "runs" / "a", {"model": "resnet18", "seed": 0, "lr": 0.1}, [0.5, 0.7, 0.6]
    )
    _offline_run(tmp_path / "runs" / "b", {"model": "resnet18", "seed": 1, "lr": 0.1}, [0.4, 0.8, 0.9])
    runs = sorted(find_runs(tmp_path / "runs"), key=lambda r: r.name)
    assert [r.name for r in runs] == ["seed0", "seed1"]
    run = runs[0]
    assert (run.source, run.state, run.config) == (
        "wandb-folder",
        "finished",
        {"model": "resnet18", "seed": 0, "lr": 0.1},
    )
    assert run.final == {"top1": 0.6, "ece": 0.05}
    assert run.history[1] == {"epoch": 1, "train_loss": 0.5, "lr": 0.1, "top1": 0.7, "ece": 0.05}
    assert (len(run.history), run.best_epoch) == (3, 1)
    c = compare_runs(runs, ["model"], "top1", which="best")
    assert c.groups[0].summary.mean == pytest.approx(0.8)  # 0.7 and 0.9
    # a run killed mid-write: the torn tail is dropped, the rest is read, the run is unfinished
    log = next(first.glob("run-*.wandb"))
    data = log.read_bytes()
    log.write_bytes(
        data[: len(data) * 3 // 4]
    )  # the exit record is near the end (after it, wandb < 0.19 writes more)
    torn = next(r for r in find_runs(tmp_path / "runs") if r.name == "seed0")
    assert torn.state == "unfinished" and len(torn.history) <= 3
    # a run folder logged to wandb holds its wandb folder: read once, as the run folder
    inside = tmp_path / "runs" / "a"
    (inside / "args.yaml").write_text("model: resnet18\nseed: 0\n")
    (inside / "summary.csv").write_text("epoch,eval_top1\n0,0.6\n")
    assert sorted((r.source, r.name) for r in find_runs(tmp_path / "runs")) == [
        ("folder", "a"),
        ("wandb-folder", "seed1"),
    ]


class StandInRun:
    """What compare reads of a ``wandb.apis.public.Run``."""

    def __init__(self, run_id: str, seed: int, state: str, top1: list[float]):
        self.id, self.name, self.state = run_id, f"run-{seed}", state
        self.config = {"model": "resnet18_op2", "seed": seed, "_wandb": {"x": 1}}
        self.summary = {"eval_top1": top1[-1], "_step": len(top1) - 1, "param_count": 300, "train_loss": 0.2}
        self.rows = [
            {"_step": e, "_runtime": 1.0, "eval_top1": v, "train_loss": 0.2, "lr": None}
            for e, v in enumerate(top1)
        ]

    def scan_history(self):
        return iter(self.rows)


class StandInApi:
    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return list(self._runs)


def test_wandb_api_runs_through_a_stand_in():
    api = StandInApi([StandInRun("ab", 0, "finished", [0.5, 0.9]), StandInRun("cd", 1, "crashed", [0.4])])
    runs = read_api_runs("me/proj", sweep="sw1", api=api)
    assert api.calls == [("me/proj", {"sweep": "sw1"})]
    first = runs[0]
    assert (first.name, first.location, first.source, first.state) == (
        "run-0",
        "me/proj/ab",
        "wandb-api",
        "finished",
    )
    assert first.config == {"model": "resnet18_op2", "seed": 0}
    assert (first.final, first.param_count, first.param_count_stock) == ({"top1": 0.9}, 300, 300)
    assert first.history == [
        {"epoch": 0, "top1": 0.5, "train_loss": 0.2},
        {"epoch": 1, "top1": 0.9, "train_loss": 0.2},
    ]
    assert not runs[1].finished
    text = compare(wandb="me/proj", api=api)
    assert "resnet18_op2" in text and "1 unfinished run(s) left out (crashed: run-1)" in text


def test_wandb_api_errors_become_clear_messages():
    import wandb

    class Offline:
        def runs(self, path, filters=None):
            raise wandb.errors.CommError("could not reach the server")

    with pytest.raises(
        ValueError, match=r"cannot read the runs of 'me/proj' from wandb \(CommError.*wandb login"
    ):
        read_api_runs("me/proj", api=Offline())
    with pytest.raises(ValueError, match="give ENTITY/PROJECT"):
        read_api_runs("proj", api=Offline())
    with pytest.raises(ValueError, match="wandb has no runs in sweep 'x' of 'me/proj'"):
        read_api_runs("me/proj", sweep="x", api=StandInApi([]))


def test_command_line(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "timm_overparam.compare",
        str(sweep),
        "--group-by",
        "model",
        "--metric",
        "top1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (
        "resnet18_op2" in done.stdout and "0.9200 ± 0.0497" in done.stdout and "comparison.md" in done.stdout
    )
    assert (out / "comparison.csv").exists()
    with pytest.raises(SystemExit) as exit:
        main([str(sweep), "--metric", "top9"])
    assert exit.value.code == 2 and "error: --metric 'top9': no run has it" in capsys.readouterr().err


def test_points_pair_a_line_with_standard_runs(tmp_path):
    """--points: each line run counts once per point and ensemble, paired with standard runs by seed."""
    for seed, (top1, p0, mid, ens) in enumerate([(0.90, 0.89, 0.93, 0.94), (0.92, 0.90, 0.93, 0.95)]):
        standard = {"final": {"top1": top1}, "reliability": {"model": {"count": [1]}}}
        rows = [{"epoch": 0, "train_loss": 1.0, "eval_top1": top1, "lr": 0.1}]
        write_run(tmp_path / "std" / str(seed), {"model": "net", "seed": seed}, rows, standard)
        final = {"top1": (p0 + mid) / 2, "point0_top1": p0, "point0.5_top1": mid, "ens0+0.5_top1": ens}
        line = {"final": final, "reliability": {"point0.5": {"count": [2]}}}
        row = {
            "epoch": 0,
            "train_loss": 2.0,
            "eval_top1": final["top1"],
            "eval_point0.5_top1": mid,
            "lr": 0.1,
        }
        write_run(tmp_path / "line" / str(seed), {"model": "net_line", "seed": seed}, [row], line)
    runs = split_points(find_runs(tmp_path))
    mid_runs = [r for r in runs if r.config["model"] == "net_line@0.5"]
    assert [r.final for r in mid_runs] == [{"top1": 0.93}, {"top1": 0.93}]
    assert mid_runs[0].history == [{"epoch": 0, "train_loss": 2.0, "top1": 0.93}]
    assert mid_runs[0].reliability == {"model": {"count": [2]}}
    assert [r.reliability for r in runs if r.config["model"] == "net_line@0"] == [{}, {}]
    groups = by_label(compare_runs(runs, ["model"], "top1"))
    assert list(groups) == ["net", "net_line@0", "net_line@0.5", "net_line@ens0+0.5"]
    assert groups["net_line@0.5"].paired.mean == pytest.approx(0.02)  # 0.03 and 0.01
    assert groups["net_line@ens0+0.5"].paired.mean == pytest.approx(0.035)  # 0.04 and 0.03
    text = compare([tmp_path], points=True)
    assert "net_line@0.5" in text and "net_line " not in text


def test_wandb_history_keeps_the_epoch_rows_of_a_run_that_also_logs_per_update(tmp_path):
    """train.py logs epoch metrics at the update step with an ``epoch`` key; callbacks log per update."""
    import wandb

    (tmp_path / "r").mkdir()
    run = wandb.init(
        dir=tmp_path / "r", project="compare-test", config={"model": "m", "seed": 0}, mode="offline"
    )
    step = 0
    for epoch, top1 in enumerate([0.5, 0.8]):
        for _ in range(3):  # three updates per epoch, each logging omega
            wandb.log({"omega": 1.0 / (step + 1)}, step=step)
            step += 1
        wandb.log({"train_loss": 1.0, "eval_top1": top1, "epoch": epoch}, step=step)
    run.finish()
    wandb.teardown()
    (read,) = find_runs(tmp_path / "r")
    assert [(r["epoch"], r["top1"]) for r in read.history] == [(0, 0.5), (1, 0.8)]
    assert read.final["top1"] == 0.8
