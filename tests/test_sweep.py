"""The sweep runner: wandb sweep files checked and run on Optuna (grid on the real train.py; a fake
program, written here, for the mechanics: failures, Hyperband, a runner killed and resumed).

Every sweep mapping here is also checked with wandb's own schema when its ``sweeps`` package is
importable (it pins numpy<2, so it is not a dependency): ``wandb_violations``.
"""

import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from scipy import stats

from timm_overparam.sweep import SweepInterrupted, finished_runs, load_sweep, parse_sweep, run_sweep
from timm_overparam.sweep.runner import sweep_pruner
from timm_overparam.train import TrainConfig
from timm_overparam.train.cli import parse_args, train_parser

ROOT = Path(__file__).resolve().parents[1]
TrialState = optuna.trial.TrialState


def wandb_violations(config: dict) -> list[str] | None:
    """wandb's schema violations of a sweep mapping (``sweeps`` package), or None when not installed."""
    try:
        import sweeps
    except ImportError:
        return None
    return sweeps.schema_violations_from_proposed_config(copy.deepcopy(config))


def checked(config: dict, deprecated: tuple[str, ...] = ()) -> dict:
    """``config`` after both checks: the runner's, and wandb's schema where available (only the
    deprecation notes of wandb's natural-log ``deprecated`` distributions allowed)."""
    parse_sweep(config)
    violations = wandb_violations(config)
    if violations is not None:
        assert [v for v in violations if not any(f"uses {d}," in v for d in deprecated)] == []
    return config


# a stand-in for train.py: --x sets its metric, summary.csv rows with sleeps, `last` after each epoch,
# --resume continues from it; on finishing it appends one line to the ledger
FAKE = """
import argparse, csv, json, os, subprocess, sys, time
p = argparse.ArgumentParser()
p.add_argument("--x", type=float, default=1.0)
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--output"); p.add_argument("--experiment"); p.add_argument("--resume")
a, _ = p.parse_known_args()
folder = os.path.join(a.output, a.experiment)
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "pid"), "w") as f:
    f.write(str(os.getpid()))
with open(os.path.join(folder, "env.json"), "w") as f:
    json.dump({k: v for k, v in os.environ.items() if k.startswith("WANDB_")}, f)
start = int(open(os.path.join(a.resume, "epoch")).read()) if a.resume else 0
if a.x < 0:
    sys.exit(f"boom: x={a.x} is negative")
holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # like accelerate's worker
with open(os.path.join(folder, "holder"), "w") as f:
    f.write(str(holder.pid))
if a.x < 0.5 and os.environ.get("SWEEP_DB"):  # the bad run reports once a good run has finished
    import optuna  # (so the pruner has values of another run at the first band to compare with)
    study = optuna.load_study(study_name=os.environ["SWEEP_NAME"], storage=os.environ["SWEEP_DB"])
    while not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials()):
        time.sleep(0.1)
for epoch in range(start, a.epochs):
    time.sleep(a.sleep if a.x >= 0.5 else 60 * max(0, epoch - 1))  # a bad run: 2 epochs, then slow
    summary = os.path.join(folder, "summary.csv")
    new = not os.path.exists(summary)
    with open(summary, "a", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "train_loss", "score"])
        if new:
            w.writeheader()
        w.writerow({"epoch": epoch, "train_loss": 1.0, "score": a.x * (epoch + 1)})
    os.makedirs(os.path.join(folder, "last"), exist_ok=True)
    with open(os.path.join(folder, "last", "epoch.tmp"), "w") as f:
        f.write(str(epoch + 1))
    os.replace(os.path.join(folder, "last", "epoch.tmp"), os.path.join(folder, "last", "epoch"))
holder.kill()
with open(os.environ["LEDGER"], "a") as f:
    f.write(json.dumps({"x": a.x, "start": start, "folder": folder}) + "\\n")
"""


def fake_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config) -> dict:
    """A sweep of the fake program in ``tmp_path`` (the current folder), metric ``score``."""
    (tmp_path / "fake.py").write_text(FAKE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEDGER", str(tmp_path / "ledger.jsonl"))
    base = {
        "program": "fake.py",
        "method": "grid",
        "metric": {"name": "score", "goal": "maximize"},
        "parameters": {"x": {"values": [1.0, 2.0]}},
    }
    return checked({**base, **config})


def ledger(tmp_path: Path) -> list[dict]:
    path = tmp_path / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trials_csv(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ the files
def test_shipped_sweeps_pass_the_runner_and_wandb():
    files = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        spec = load_sweep(path)  # the runner's checks, train.py parameters through TrainConfig
        assert spec.name == path.stem and spec.space.grid_size() > 1
        assert wandb_violations(yaml.safe_load(path.read_text())) in (None, [])


def test_train_py_reads_what_wandb_writes():
    """wandb's ${args}: --name=value with Python's str(value), names as written in the sweep file."""
    spec = parse_sweep(
        checked(
            {
                "method": "grid",
                "program": "train.py",
                "parameters": {
                    "batch_size": {"values": [32]},
                    "sched-on-updates": {"values": [False]},
                    "amp": {"values": [True]},
                    "no_aug": {"values": [True]},
                    "lr": {"values": [0.1]},
                },
            }
        )
    )
    values = {"batch_size": 32, "sched-on-updates": False, "amp": True, "no_aug": True, "lr": 0.1}
    argv = spec.command_line(values, interpreter=[])[2:]
    assert argv == ["--batch_size=32", "--sched-on-updates=False", "--amp=True", "--no_aug=True", "--lr=0.1"]
    assert parse_args(train_parser(), argv) == TrainConfig(
        batch_size=32, sched_on_updates=False, amp=True, no_aug=True, lr=0.1
    )
    p = train_parser()
    assert parse_args(p, ["--amp", "--no-sched-on-updates", "--model_ema=yes"]) == TrainConfig(
        amp=True, sched_on_updates=False, model_ema=True
    )
    assert parse_args(p, ["--amp=false", "--sched_on_updates=TRUE"]) == TrainConfig(amp=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--amp=maybe"], "--amp: 'maybe' is not a boolean; use true or false"),
        (["--no-sched-on-updates=1"], "--no-sched-on-updates takes no value"),
    ],
)
def test_bad_boolean_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(train_parser(), argv)
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- distributions
LAWS = {  # name -> (entry, check of one value, scipy law of the value (continuous) or None)
    "constant": ({"value": 7}, lambda v: v == 7, None),
    "categorical": ({"values": ["a", "b", "c"]}, lambda v: v in "abc", None),
    "categorical_w_probabilities": (
        {"values": [1, 2], "probabilities": [0.25, 0.75]},
        lambda v: v in (1, 2),
        None,
    ),
    "int_uniform": ({"min": 2, "max": 5}, lambda v: isinstance(v, int) and 2 <= v <= 5, None),
    "uniform": ({"min": -1.0, "max": 3.0}, lambda v: -1 <= v <= 3, stats.uniform(-1, 4)),
    "q_uniform": (
        {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
        lambda v: isinstance(v, int) and v % 2 == 0 and 0 <= v <= 10,
        None,
    ),
    "log_uniform": (
        {"distribution": "log_uniform", "min": -3, "max": 0},
        lambda v: math.exp(-3) * (1 - 1e-9) <= v <= 1 + 1e-9,
        stats.loguniform(math.exp(-3), 1),
    ),
    "log_uniform_values": (
        {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        lambda v: 1e-4 * (1 - 1e-9) <= v <= 0.1 * (1 + 1e-9),
        stats.loguniform(1e-4, 0.1),
    ),
    "q_log_uniform": (
        {"distribution": "q_log_uniform", "min": 0, "max": 3, "q": 1},
        lambda v: isinstance(v, int) and 1 <= v <= 20,
        None,
    ),
    "q_log_uniform_values": (
        {"distribution": "q_log_uniform_values", "min": 1, "max": 100, "q": 5},
        lambda v: isinstance(v, int) and v % 5 == 0 and 0 <= v <= 100,
        None,
    ),
    "inv_log_uniform": (
        {"distribution": "inv_log_uniform", "min": 0, "max": 3},
        lambda v: math.exp(-3) * (1 - 1e-9) <= v <= 1 + 1e-9,
        stats.loguniform(math.exp(-3), 1),
    ),
    "inv_log_uniform_values": (
        {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 1.0},
        lambda v: 0.01 * (1 - 1e-9) <= v <= 1 + 1e-9,
        stats.loguniform(0.01, 1),
    ),
    "normal": ({"distribution": "normal", "mu": 1.0, "sigma": 2.0}, math.isfinite, stats.norm(1, 2)),
    "q_normal": (
        {"distribution": "q_normal", "mu": 0.0, "sigma": 5.0, "q": 0.5},
        lambda v: isinstance(v, float) and math.isclose(v / 0.5, round(v / 0.5), abs_tol=1e-9),
        None,
    ),
    "log_normal": (
        {"distribution": "log_normal", "mu": 0.0, "sigma": 1.0},
        lambda v: v > 0,
        stats.lognorm(1.0),
    ),
    "q_log_normal": (
        {"distribution": "q_log_normal", "mu": 2.0, "sigma": 0.5, "q": 1},
        lambda v: isinstance(v, int) and v >= 0,
        None,
    ),
    "beta": ({"distribution": "beta", "a": 2.0, "b": 5.0}, lambda v: 0 <= v <= 1, stats.beta(2, 5)),
    "q_beta": (
        {"distribution": "q_beta", "a": 1.0, "b": 1.0, "q": 0.1},
        lambda v: 0 <= v <= 1 and math.isclose(v / 0.1, round(v / 0.1), abs_tol=1e-9),
        None,
    ),
}
DEPRECATED = ("log_uniform", "q_log_uniform", "inv_log_uniform")  # wandb warns: min/max are natural logs


def _draws(sampler: optuna.samplers.BaseSampler, n: int) -> dict[str, list]:
    space = parse_sweep(
        checked(
            {"method": "random", "program": "p.py", "parameters": {k: e for k, (e, _, _) in LAWS.items()}},
            DEPRECATED,
        ),
    ).space
    draws: dict[str, list] = {k: [] for k in LAWS}

    def objective(trial: optuna.Trial) -> float:
        values = space.sample(trial)
        for k, v in values.items():
            draws[k].append(v)
        return float(values["uniform"] + values["normal"])  # something for TPE to model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(sampler=sampler).optimize(objective, n_trials=n)
    return draws


def test_random_draws_follow_wandbs_laws():
    draws = _draws(optuna.samplers.RandomSampler(seed=0), 400)
    for name, (_, ok, law) in LAWS.items():
        bad = [v for v in draws[name] if not ok(v)]
        assert not bad, (name, bad[:5])
        if law is not None:  # the whole law, not only its range (fixed seed: the same draws every time)
            assert stats.kstest(draws[name], law.cdf).pvalue > 1e-3, name
    assert set(draws["int_uniform"]) == {2, 3, 4, 5} and set(draws["categorical"]) == set("abc")
    assert 0.65 < np.mean(np.array(draws["categorical_w_probabilities"]) == 2) < 0.85
    assert len(set(draws["q_uniform"])) == 6  # 0, 2, ..., 10 (the ends half as likely, as in wandb)


def test_bayes_draws_are_valid_for_every_law():
    draws = _draws(optuna.samplers.TPESampler(seed=0, n_startup_trials=5), 40)
    for name, (_, ok, _) in LAWS.items():
        assert all(ok(v) for v in draws[name]), (name, draws[name])


def test_grid_values_are_wandbs():
    space = parse_sweep(
        checked(
            {
                "method": "grid",
                "program": "p.py",
                "parameters": {
                    "a": {"values": [1, 2]},
                    "b": {"min": 0, "max": 2},
                    "c": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
                    "d": {"values": [[0.5, 1.0], [0.8, 1.0]]},
                    "e": {"value": "same"},
                },
            }
        )
    ).space
    assert space.grid() == {"a": [1, 2], "b": [0, 1, 2], "c": [0.0, 0.25, 0.5, 0.75], "d": [0, 1]}
    assert space.grid_size() == 2 * 3 * 4 * 2
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    configs = []
    study.optimize(lambda t: configs.append(space.sample(t, grid=True)) or 0.0)
    assert len(configs) == 48 and len({json.dumps(c, sort_keys=True) for c in configs}) == 48
    assert all(c["d"] in ([0.5, 1.0], [0.8, 1.0]) and c["e"] == "same" for c in configs)


# ----------------------------------------------------------------------------------- errors
BASE = {
    "method": "random",
    "program": "p.py",
    "metric": {"name": "score"},
    "parameters": {"x": {"min": 0.0, "max": 1.0}},
}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"scheduler": {"engine": "optuna"}},
            "unsupported key(s) ['scheduler']; the runner supports ['program',",
        ),
        ({"method": "custom"}, "method must be one of ['grid', 'random', 'bayes']"),
        (
            {"parameters": {"x": {"distribution": "gamma", "min": 0, "max": 1}}},
            "unknown distribution 'gamma'; supported: [",
        ),
        (
            {"parameters": {"x": {"distribution": "uniform", "min": 0.0}}},
            "parameters.x: uniform needs ['max']",
        ),
        ({"parameters": {"x": {"min": 1.0, "max": 1.0}}}, "parameters.x: min 1.0 must be less than max 1.0"),
        ({"parameters": {"x": {"values": [1], "q": 2}}}, "categorical takes no key(s) ['q']"),
        ({"parameters": {"x": {"distribution": "log_uniform_values", "min": 0, "max": 1}}}, "needs min > 0"),
        ({"parameters": {"x": {"distribution": "normal", "sigma": 0}}}, "sigma must be > 0"),
        (
            {"parameters": {"x": {"min": "1e-3", "max": 1.0}}},
            "min must be a number, got '1e-3' (YAML reads 1e-3 as text",
        ),
        ({"parameters": {"x": {"values": [1, 2], "probabilities": [0.5, 0.6]}}}, "summing to 1"),
        ({"parameters": {"x": {"parameters": {"y": {"value": 1}}}}}, "nested parameters are not supported"),
        (
            {"method": "grid"},
            "parameters.x: uniform cannot be a grid dimension; a grid takes ['constant', 'categorical'",
        ),
        ({"method": "grid", "parameters": {"x": {"values": [1, 1]}}}, "the grid values [1, 1] repeat"),
        ({"method": "bayes", "metric": None}, "method bayes needs a metric"),
        ({"metric": {"name": "score", "impute": "worst"}}, "metric key(s) ['impute'] are not supported"),
        (
            {"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2.5}},
            "early_terminate.eta must be an integer >= 2",
        ),
        (
            {"early_terminate": {"type": "hyperband", "min_iter": 1, "strict": False}},
            "early_terminate.strict must be true",
        ),
        ({"early_terminate": {"type": "hyperband", "max_iter": 9}}, "needs min_iter, or max_iter and s"),
        (
            {"command": ["${interpreter}", "${program}", "${argz}"]},
            "command macro ${argz} is not one of ['${env}'",
        ),
        ({"command": ["${interpreter}", "fake.py", "--x=${args}"]}, "a macro must be a whole item"),
    ],
)
def test_bad_sweeps_are_errors_naming_the_key(change, message):
    config = {**BASE, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(ValueError) as e:
        parse_sweep(config)
    assert message in str(e.value)


@pytest.mark.parametrize(
    "parameters, message",
    [
        (
            {"batchsize": {"values": [8]}},
            "parameter 'batchsize' is not a train.py flag (a TrainConfig key, written with - or _); did you mean ['batch_size'",
        ),
        ({"epochs": {"values": [1, 0]}}, "parameter 'epochs' = 0: epochs must be >= 1, got 0"),
        ({"epochs": {"min": 1.0, "max": 3.0}}, "parameter 'epochs' = 1.0: epochs must be an integer"),
        (
            {"warmup-epochs": {"distribution": "q_uniform", "min": 0, "max": 3}},
            "'warmup-epochs' = 0.0: warmup_epochs must be an integer",
        ),
        ({"experiment": {"value": "a"}}, "parameter 'experiment' is set by the runner"),
        ({"scale": {"values": [[0.5, 1.0]]}}, "cannot carry a list"),
    ],
)
def test_train_py_sweeps_are_checked_with_train_config(parameters, message):
    with pytest.raises(ValueError) as e:
        parse_sweep({"method": "random", "program": "train.py", "parameters": parameters})
    assert message in str(e.value)


def test_runner_options_are_checked(tmp_path, monkeypatch):
    config = fake_sweep(tmp_path, monkeypatch, method="random")
    for kwargs, message in (
        ({}, "method random runs until told: give --count N (or run_cap in the file)"),
        ({"count": 2, "jobs": 0}, "--jobs must be an integer >= 1"),
        ({"count": 2, "heartbeat_interval": 5, "heartbeat_grace": 5}, "must exceed --heartbeat-interval"),
        ({"count": 2, "launcher": "slurm"}, "--launcher must be one of ['python', 'accelerate']"),
    ):
        with pytest.raises(ValueError) as e:
            run_sweep(parse_sweep(config), out=tmp_path / "o", **kwargs)
        assert message in str(e.value)
    (tmp_path / "fake.py").unlink()
    with pytest.raises(ValueError, match=r"program 'fake\.py' is not a file in"):
        run_sweep(parse_sweep(config), count=1, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing ran, nothing was written


# --------------------------------------------------------------------------------- the runner
TRAIN = [
    "${env}",
    "${interpreter}",
    "${program}",
    "--model",
    "test_resnet",
    "--img-size",
    "16",
    "--epochs",
    "1",
]
TRAIN += ["-b", "64", "--workers", "0"]


@pytest.mark.slow
def test_grid_of_train_py_runs_once_each(tmp_path, monkeypatch):
    """A grid through the real train.py (wandb's ${args}: an underscore name, a boolean, a constant);
    the enumeration of larger grids is test_grid_values_are_wandbs's."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two runs at once on two cores
    config = checked(
        {
            "program": "train.py",
            "method": "grid",
            "metric": {"name": "eval_top1", "goal": "maximize"},
            "parameters": {"lr": {"value": 0.05}, "sched_on_updates": {"values": [True, False]}},
            "command": [*TRAIN, "${args}"],
        }
    )
    out = tmp_path / "sweep"
    study = run_sweep(parse_sweep(config, name="grid"), jobs=2, out=out)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    configs = set()
    for t in trials:
        folder = Path(t.user_attrs["run_folder"])
        assert folder == out / "runs" / f"trial-{t.number:04d}" and (folder / "results.json").exists()
        with open(folder / "summary.csv", newline="") as f:
            assert t.value == float(list(csv.DictReader(f))[-1]["eval_top1"])
        args = yaml.safe_load((folder / "args.yaml").read_text())
        assert {k: args[k] for k in ("lr", "sched_on_updates")} == t.user_attrs["config"]
        configs.add(json.dumps(t.user_attrs["config"], sort_keys=True))
    assert len(configs) == 2
    assert [r["state"] for r in trials_csv(out)] == ["COMPLETE"] * 2
    again = run_sweep(parse_sweep(config, name="grid"), jobs=2, out=out)  # the grid is done: nothing runs
    assert len(again.get_trials()) == 2 and len(list((out / "runs").iterdir())) == 2


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    config = fake_sweep(
        tmp_path,
        monkeypatch,
        project="proj",
        entity="team",
        parameters={"x": {"values": [1.0, -1.0, 2.0]}},
        command=["${env}", "${interpreter}", "${program}", "--log-wandb", "${args}"],
    )
    out = tmp_path / "o"
    study = run_sweep(parse_sweep(config, name="fails"), out=out)
    by_x = {t.user_attrs["config"]["x"]: t for t in study.get_trials()}
    assert by_x[1.0].state == by_x[2.0].state == TrialState.COMPLETE and (
        by_x[2.0].value,
        by_x[1.0].value,
    ) == (4.0, 2.0)
    failed = by_x[-1.0]
    assert failed.state == TrialState.FAIL and "exit code 1" in failed.user_attrs["error"]
    assert "boom: x=-1.0 is negative" in failed.user_attrs["error"]
    assert "boom" in Path(failed.user_attrs["log"]).read_text()
    row = next(r for r in trials_csv(out) if r["number"] == str(failed.number))
    assert row["state"] == "FAIL" and "boom" in row["error"] and row["log"] == failed.user_attrs["log"]
    env = json.loads((Path(by_x[1.0].user_attrs["run_folder"]) / "env.json").read_text())
    assert {k: env.get(k) for k in ("WANDB_RUN_GROUP", "WANDB_PROJECT", "WANDB_ENTITY")} == {
        "WANDB_RUN_GROUP": "fails",
        "WANDB_PROJECT": "proj",
        "WANDB_ENTITY": "team",
    }
    assert finished_runs(study) == 3
    run_sweep(parse_sweep(config, name="fails"), out=out)  # a failed run counts as done: not run again
    assert (
        len(ledger(tmp_path)) == 2
        and len(optuna.load_study(study_name="fails", storage=f"sqlite:///{out / 'sweep.db'}").trials) == 3
    )


def test_count_is_the_total_across_invocations(tmp_path, monkeypatch):
    config = fake_sweep(
        tmp_path, monkeypatch, method="random", run_cap=4, parameters={"x": {"min": 0.5, "max": 2.0}}
    )
    out = tmp_path / "o"
    assert finished_runs(run_sweep(parse_sweep(config), count=2, out=out)) == 2
    study = run_sweep(parse_sweep(config), count=10, out=out)  # 2 more: run_cap caps the count
    assert finished_runs(study) == 4 and len(study.get_trials()) == 4 and len(ledger(tmp_path)) == 4
    assert all(0.5 <= t.user_attrs["config"]["x"] <= 2.0 and t.value > 0 for t in study.get_trials())


def test_an_error_of_the_sweep_stops_it_and_loses_no_run(tmp_path, monkeypatch):
    config = fake_sweep(tmp_path, monkeypatch, metric={"name": "top1", "goal": "maximize"})
    with pytest.raises(
        ValueError, match=r"metric 'top1' is not a column of .*\['epoch', 'train_loss', 'score'\]"
    ):
        run_sweep(parse_sweep(config), out=tmp_path / "o")
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path / 'o' / 'sweep.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]  # queued again
    assert finished_runs(study) == 0


def wandb_bands(eta: int, min_iter: int | None = None, max_iter: int | None = None, s: int = 0) -> list[int]:
    """The bands of wandb's ``hyperband_stop_runs`` (``sweeps`` package), its two loops."""
    bands: list[int] = []
    if max_iter is not None:
        band: float = max_iter
        for _ in range(s):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)
    assert min_iter is not None
    band = min_iter
    for _ in range(100):
        bands.append(int(band))
        band *= eta
    return bands


def wandb_stop_runs(
    runs: list[tuple[bool, list[float]]], bands: list[int], eta: int, goal: str
) -> list[bool]:
    """The oracle, after wandb's ``hyperband_stop_runs``: ``runs`` as (running, metric history);
    whether it stops each. Every run with a finite value counts at a band ``b`` (``history[b]``);
    the threshold is ``sorted(values)[int((1 / eta) * len(values))]``; a running run is stopped when
    ``min(history)`` (negated when maximizing) is above the threshold of the last band below
    ``len(history)``."""
    r = 1.0 / eta

    def metric_history(h: list[float]) -> list[float]:
        h = [v for v in h if math.isfinite(v)]
        return [-v for v in h] if goal == "maximize" else h

    all_run_histories = [metric_history(h) for _, h in runs if metric_history(h)]
    thresholds = []
    for band in bands:
        band_values = [h[band] for h in all_run_histories if len(h) > band]
        thresholds.append(np.inf if not band_values else sorted(band_values)[int(r * len(band_values))])
    stops = []
    for running, h in runs:
        history, stop = metric_history(h), False
        if running:
            closest_band, closest_threshold = -1, 0.0
            for band, threshold in zip(bands, thresholds, strict=True):
                if band < len(history):
                    closest_band, closest_threshold = band, threshold
                else:
                    break
            stop = closest_band != -1 and min(history) > closest_threshold
        stops.append(stop)
    return stops


def wandb_stops(histories: list[list[float]], bands: list[int], eta: int, goal: str) -> list[int | None]:
    """Where wandb's rule stops each run when the runs come one after another and the rule is
    applied after each value the running run logs (as the runner asks its pruner after each
    report): the number of values it had logged, or None (never stopped). A stopped run keeps the
    values it logged, and counts with them for the runs after it."""
    done: list[list[float]] = []
    stops: list[int | None] = []
    for history in histories:
        stop = None
        for n in range(1, len(history) + 1):
            if wandb_stop_runs([(False, h) for h in done] + [(True, history[:n])], bands, eta, goal)[-1]:
                stop = n
                break
        done.append(history if stop is None else history[:stop])
        stops.append(stop)
    return stops


def pruned_at(pruner: optuna.pruners.BasePruner, histories: list[list[float]], goal: str) -> list[int | None]:
    """Where ``pruner`` stops each run, reported step by step as the runner does (``report``, then
    ``should_prune``), one run after another; None: the run completed."""
    study = optuna.create_study(direction=goal, pruner=pruner)
    stops: list[int | None] = []
    for history in histories:
        trial, stop = study.ask(), None
        for step, value in enumerate(history, 1):
            trial.report(value, step)
            if trial.should_prune():
                stop = step
                break
        if stop is None:
            study.tell(trial, history[-1])
        else:
            study.tell(trial, state=TrialState.PRUNED)
        stops.append(stop)
    return stops


def test_hyperband_prunes_a_clearly_bad_run(tmp_path, monkeypatch):
    config = fake_sweep(
        tmp_path,
        monkeypatch,
        name="hb",
        parameters={"x": {"values": [0.9, 0.8, 0.7, 0.1]}, "epochs": {"value": 3}, "sleep": {"value": 0.3}},
        early_terminate={
            "type": "hyperband",
            "min_iter": 1,
            "eta": 4,
        },  # bands at 1, 4, ...: history[1] (a run's second value) first
    )
    out = tmp_path / "o"
    monkeypatch.setenv("SWEEP_DB", f"sqlite:///{out / 'sweep.db'}")
    monkeypatch.setenv("SWEEP_NAME", "hb")
    start = time.monotonic()
    study = run_sweep(parse_sweep(config), jobs=2, out=out)
    bad = next(t for t in study.get_trials() if t.user_attrs["config"]["x"] == 0.1)
    # judged at band 1 once it has 2 values: the worst of them all there
    assert bad.state == TrialState.PRUNED and bad.intermediate_values == {1: 0.1, 2: 0.2} and bad.value == 0.2
    folder = Path(bad.user_attrs["run_folder"])
    assert (
        len((folder / "summary.csv").read_text().splitlines()) == 3
    )  # header and epochs 0, 1: killed in its sleep
    _dies(folder)
    assert time.monotonic() - start < 50  # the bad run would sleep 60 s before its third epoch
    assert sorted(r["x"] for r in ledger(tmp_path)) == sorted(
        t.user_attrs["config"]["x"] for t in study.get_trials() if t.state == TrialState.COMPLETE
    )
    # the runner's own record: the bad run PRUNED (a good run may be too, when a better one running
    # beside it reached the band first: which depends on timing)
    states = {json.loads(r["params"])["x"]: r["state"] for r in trials_csv(out)}
    assert states[0.1] == "PRUNED" and set(states.values()) <= {"COMPLETE", "PRUNED"} and len(states) == 4
    # the runner's pruner stops these runs (one after another) where wandb's hyperband would (eta 4,
    # bands 1, 4, 16, ...): a run is judged by its best value so far against the threshold at the
    # last band it passed, so a run once the best is never stopped while the others stay worse
    bands = wandb_bands(eta=4, min_iter=1)
    assert bands[:4] == [1, 4, 16, 64]
    histories = [
        [1.0] * 20,  # the first run: alone at every band
        [2.0, 0.0, 0.0, 2.0] + [0.5] * 16,  # its best, 2.0, beats every threshold (Optuna's SHA: 16)
        [0.9] * 20,  # below the threshold at band 1 (1.0 of 3 values, index int(3 / 4) = 0)
        [0.1] * 20,  # below it (0.9 of 4 values, index 1)
        [2.5, 2.5, 2.5, 0.95] + [3.0] * 16,  # 2.5 then 3.0: at or above every threshold
    ]
    expected = [None, None, 2, 2, None]
    assert wandb_stops(histories, bands, eta=4, goal="maximize") == expected
    assert pruned_at(study.pruner, histories, "maximize") == expected


def runner_pruner(goal: str, **early_terminate) -> optuna.pruners.BasePruner:
    """The pruner the runner builds for a sweep file with this ``early_terminate``."""
    config = {
        "program": "fake.py",
        "method": "grid",
        "metric": {"name": "score", "goal": goal},
        "parameters": {"x": {"values": [1.0]}},
        "early_terminate": {"type": "hyperband", **early_terminate},
    }
    return sweep_pruner(parse_sweep(checked(config)))


@pytest.mark.parametrize(
    ("goal", "early_terminate", "bands", "histories", "expected", "sha"),
    [
        # eta 2, two runs: wandb's threshold is the value at index int(2 / 2) = 1, the worse one,
        # so both go on; Optuna's successive halving keeps 2 // 2 = 1 and pruned the second
        ("minimize", {"min_iter": 1, "eta": 2}, [1, 2, 4], [[1.0] * 3, [2.0] * 3], [None, None], [None, 1]),
        ("maximize", {"min_iter": 1, "eta": 2}, [1, 2, 4], [[2.0] * 3, [1.0] * 3], [None, None], [None, 1]),
        # the band's index: band 1 is history[1], the second value (judged once a run has 2);
        # the second run is better at step 1, worse at step 2: stopped at 2 (successive halving
        # judged step 1, then step 3)
        (
            "minimize",
            {"min_iter": 1, "eta": 3},
            [1, 3, 9],
            [[3.0, 1.0, 1.0, 1.0], [2.0, 5.0, 5.0, 5.0]],
            [None, 2],
            [None, 3],
        ),
        # maximize, eta 2, three runs: the threshold at band 1 is the 2nd best of 3 (index
        # int(3 / 2) = 1): the second run (2nd best) goes on, the third is stopped
        (
            "maximize",
            {"min_iter": 1, "eta": 2},
            [1, 2, 4],
            [[3.0] * 3, [2.0] * 3, [1.0] * 3],
            [None, None, 2],
            [None, 1, 1],
        ),
        # the max_iter form has exactly s bands: s = 1 gives [9] only; the second run is better
        # at 9 and worse at 27 (where successive halving has another rung, wandb none)
        (
            "minimize",
            {"max_iter": 27, "s": 1, "eta": 3},
            [9],
            [[3.0] * 10 + [0.0] * 20, [2.0] * 30],
            [None, None],
            [None, 27],
        ),
        # the same runs with bands 9, 27 (min_iter 9): stopped at the band 27, once it has 28 values
        (
            "minimize",
            {"min_iter": 9, "eta": 3},
            [9, 27, 81],
            [[3.0] * 10 + [0.0] * 20, [2.0] * 30],
            [None, 28],
            [None, 27],
        ),
    ],
)
def test_hyperband_follows_wandbs_rule(goal, early_terminate, bands, histories, expected, sha):
    assert wandb_bands(**early_terminate)[: len(bands)] == bands
    assert wandb_stops(histories, wandb_bands(**early_terminate), early_terminate["eta"], goal) == expected
    assert pruned_at(runner_pruner(goal, **early_terminate), histories, goal) == expected
    # what the runner did before (Optuna's successive halving at the first band) differs
    first = bands[0]
    old = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=first, reduction_factor=early_terminate["eta"], min_early_stopping_rate=0
    )
    assert pruned_at(old, histories, goal) == sha != expected


def test_hyperband_counts_running_and_failed_runs():
    """wandb counts every run with values at a band, running or ended (failed too): the threshold
    comes from all of them, read through Optuna's public trials (runs interleaved, as in parallel)."""
    bands = wandb_bands(eta=2, min_iter=1)
    study = optuna.create_study(direction="minimize", pruner=runner_pruner("minimize", min_iter=1, eta=2))
    logs: dict[int, list[float]] = {}
    running: set[int] = set()

    def start() -> optuna.Trial:
        trial = study.ask()
        logs[trial.number] = []
        running.add(trial.number)
        return trial

    def report(trial: optuna.Trial, value: float) -> bool:
        """Report as the runner does; the pruner's verdict, checked against the oracle's."""
        logs[trial.number].append(value)
        trial.report(value, len(logs[trial.number]))
        oracle = wandb_stop_runs([(n in running, h) for n, h in logs.items()], bands, 2, "minimize")
        assert trial.should_prune() == oracle[list(logs).index(trial.number)]
        return trial.should_prune()

    def end(trial: optuna.Trial, state: TrialState) -> None:
        study.tell(trial, logs[trial.number][-1] if state == TrialState.COMPLETE else None, state=state)
        running.discard(trial.number)

    a, d, b = start(), start(), start()
    assert [report(a, 1.0), report(a, 1.0)] == [False, False]  # alone at band 1
    end(a, TrialState.FAIL)
    assert [report(d, 1.5), report(d, 1.5)] == [False, False]  # [1, 1.5]: index 1
    end(d, TrialState.COMPLETE)
    assert [report(b, 3.0), report(b, 3.0)] == [False, True]  # [1, 1.5, 3]: index 1, 1.5
    c = start()  # b still RUNNING (its process not ended yet): its value counts
    assert [report(c, 2.0), report(c, 2.0)] == [False, False]  # [1, 1.5, 2, 3]: index 2, 2.0
    end(b, TrialState.PRUNED)
    end(c, TrialState.COMPLETE)
    e = start()  # the failed a counts: without it [1.5, 2, 2.2, 3] index 2 would keep e
    assert [report(e, 2.2), report(e, 2.2)] == [False, True]  # [1, 1.5, 2, 2.2, 3]: index 2, 2.0


def test_accelerate_launcher(tmp_path, monkeypatch):
    config = fake_sweep(tmp_path, monkeypatch, parameters={"x": {"value": 1.0}})
    (tmp_path / "acc.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\nmixed_precision: 'no'\n"
        "use_cpu: true\nnum_machines: 1\nmachine_rank: 0\ndynamo_config: {}\n"
    )
    study = run_sweep(
        parse_sweep(config), launcher="accelerate", accelerate_config="acc.yaml", out=tmp_path / "o"
    )
    (t,) = study.get_trials()
    assert t.state == TrialState.COMPLETE and t.value == 2.0
    command = Path(t.user_attrs["log"]).read_text().splitlines()[0]
    assert "-m accelerate.commands.launch --config_file acc.yaml fake.py --x=1.0" in command


def _runner(tmp_path: Path, out: Path) -> subprocess.Popen:
    """The runner's command line in its own process group (as a user's terminal would start it)."""
    argv = [sys.executable, "-m", "timm_overparam.sweep", "s.yaml", "--out", str(out)]
    argv += ["--heartbeat-interval", "1", "--heartbeat-grace", "3"]
    log = open(tmp_path / "runner.log", "ab")
    return subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True)


def _in_flight(tmp_path: Path, out: Path, finished: int) -> Path:
    """Wait until ``finished`` runs are in the ledger and another has a checkpoint; its folder."""
    for _ in range(600):
        done = {r["folder"] for r in ledger(tmp_path)}
        busy = [f for f in (out / "runs").glob("trial-*") if (f / "last").exists() and str(f) not in done]
        if len(done) >= finished and busy:
            return busy[0]
        time.sleep(0.05)
    raise AssertionError(f"no run in flight after 30 s; {tmp_path / 'runner.log'} may say why")


def _alive(folder: Path, process: str = "pid") -> bool:
    """Whether the run (or its ``holder`` child) whose pid the folder has lives (a zombie left for
    init does not)."""
    stat = Path("/proc") / (folder / process).read_text() / "stat"
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _dies(folder: Path, process: str = "pid") -> None:
    for _ in range(200):
        if not _alive(folder, process):
            return
        time.sleep(0.05)
    raise AssertionError(f"{process} of {folder} outlived its runner")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_an_interrupted_or_killed_runner_resumes_without_losing_or_repeating_runs(tmp_path, monkeypatch):
    config = fake_sweep(
        tmp_path,
        monkeypatch,
        name="s",
        parameters={"x": {"values": [1.0, 2.0, 3.0, 4.0]}, "epochs": {"value": 3}, "sleep": {"value": 0.4}},
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "o"
    options = dict(out=out, heartbeat_interval=1, heartbeat_grace=3)
    # 1. SIGTERM (Ctrl-C's SIGINT is handled the same) while a run is in flight: it ends and is queued again
    seen: dict[str, Path] = {}

    def interrupt() -> None:
        seen["first"] = _in_flight(tmp_path, out, finished=0)
        os.kill(os.getpid(), signal.SIGTERM)  # to this process: the runner below handles it

    thread = threading.Thread(target=interrupt)
    thread.start()
    with pytest.raises(SweepInterrupted):
        run_sweep(parse_sweep(config), **options)
    thread.join()
    first = seen["first"]
    _dies(first)
    _dies(first, "holder")  # the run's whole process group was ended
    # 2. the command line, killed with kill -9 of its process group: its run dies with it (the
    #    parent-death signal; the run has its own process group) and stays RUNNING in the database
    runner = _runner(tmp_path, out)
    second = _in_flight(tmp_path, out, finished=1)
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    _dies(second)
    assert _alive(second, "holder")  # its child got no parent-death signal
    # 3. started again: the dead runner's run goes stale after the grace period and resumes from its
    #    checkpoint, after what it left behind (a child, like accelerate launch's worker) was ended
    study = run_sweep(parse_sweep(config), **options)
    _dies(second, "holder")
    finished = ledger(tmp_path)
    assert sorted(r["x"] for r in finished) == [1.0, 2.0, 3.0, 4.0]  # each configuration finished once
    resumed = {r["folder"]: r["start"] for r in finished}
    assert resumed[str(out / "runs" / first.name)] >= 1 and resumed[str(out / "runs" / second.name)] >= 1
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and finished_runs(study) == 4
    assert states.count(TrialState.FAIL) == 2 and not any("error" in t.user_attrs for t in study.get_trials())
    assert [r["state"] for r in trials_csv(out)].count("COMPLETE") == 4
