"""The sweep runner: a wandb sweep file run on Optuna, without a wandb server.

``run_sweep("configs/sweeps/digits_depth.yaml", count=20, jobs=2)`` runs the sweep's ``command``
once per configuration, as wandb's agent would, and keeps its state in a database so that an
interrupted sweep resumes where it stopped:

- the search is Optuna's: ``grid`` -> ``GridSampler``, ``random`` -> ``RandomSampler``, ``bayes`` ->
  ``TPESampler`` (seeded), ``early_terminate: hyperband`` -> ``WandbHyperbandPruner`` (wandb's own
  rule) fed with each epoch's metric, the column of that name in the run folder's ``summary.csv``;
- each run is a subprocess (its own process group, which dies with the runner) writing the usual
  train.py run folder, ``<out>/runs/trial-NNNN`` (the runner adds ``--output <out>/runs
  --experiment trial-NNNN``), and its output to ``<out>/logs/trial-NNNN.log``;
- the database (``sqlite:///<out>/sweep.db`` or ``--storage``) has Optuna's heartbeats: a run left
  RUNNING by a runner that died is failed after the grace period and run again
  (``RetryHeartbeatStaleTrialCallback``), from its folder's ``last`` checkpoint when it has one;
- a run that exits with an error is a FAIL trial with the end of its log, and the sweep goes on;
- ``<out>/trials.csv`` lists every trial at the end (written atomically).
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import (
    RDBStorage,
    RetryFailedTrialCallback,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from timm_overparam.core.atomic import write_text_atomic
from timm_overparam.sweep.spec import Hyperband, SweepSpec, load_sweep

__all__ = [
    "LAUNCHERS",
    "RunFailed",
    "SweepInterrupted",
    "WandbHyperbandPruner",
    "finished_runs",
    "run_sweep",
    "sweep_pruner",
]

LAUNCHERS = ("python", "accelerate")
RUN_MARK = "TIMM_OVERPARAM_SWEEP_RUN"  # in each run's environment: its folder
POLL_S = 0.25  # how often a run's summary.csv is read
KILL_AFTER_S = 10.0  # SIGTERM, then SIGKILL after this long
TAIL_LINES = 5  # lines of a failed run's log kept as its error


class RunFailed(RuntimeError):
    """A run exited with an error, or train.py would refuse its configuration: its trial is FAIL
    (with the error) and the sweep goes on."""


class SweepInterrupted(RuntimeError):
    """The runner was stopped by SIGINT/SIGTERM; the runs in flight are queued to run again."""


class WandbHyperbandPruner(optuna.pruners.BasePruner):
    """wandb's hyperband stopping rule (``hyperband_stop_runs`` of wandb's ``sweeps`` package) as
    an Optuna pruner; Optuna's own pruners keep other counts at other steps.

    A run's history is its finite reported values in step order (negated when maximizing, so lower
    is better). At each band b the threshold is ``sorted(values)[int(n / eta)]`` over the n runs
    whose history has a value at position b (``history[b]``, its (b + 1)-th value; every run of the
    study: running, complete, pruned or failed, this one too; a failed trial whose run was queued
    again counts as its retry). A run is pruned when its best value so far (``min(history)``) is
    worse than the threshold of the last band it has passed (the largest b < len(history)).

    Example: ``optuna.create_study(pruner=WandbHyperbandPruner([1, 3, 9], eta=3))``
    """

    def __init__(self, bands: list[int], eta: float) -> None:
        self.bands = sorted(bands)
        self.r = 1.0 / eta  # wandb's r: the threshold index is int(r * n), as its float product

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        history = _history(trial, sign)
        passed = [b for b in self.bands if b < len(history)]
        if not passed:
            return False
        band = passed[-1]
        states = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        trials = study.get_trials(deepcopy=False, states=states)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            retried = {n for t in trials for n in RetryFailedTrialCallback.retry_history(t)}
        values = [history[band]]
        for other in trials:
            if other.number != trial.number and other.number not in retried:
                h = _history(other, sign)
                if len(h) > band:
                    values.append(h[band])
        threshold = sorted(values)[int(self.r * len(values))]
        return min(history) > threshold


def _history(trial: FrozenTrial, sign: float) -> list[float]:
    """A trial's reported values in step order, finite ones only (wandb's ``filter_invalid``)."""
    return [sign * v for _, v in sorted(trial.intermediate_values.items()) if math.isfinite(v)]


def sweep_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """The study's pruner: wandb's hyperband rule with the sweep's bands, or none.

    Example: ``sweep_pruner(load_sweep("configs/sweeps/digits_depth.yaml"))``
    """
    hb: Hyperband | None = spec.early_terminate
    if hb is None:
        return optuna.pruners.NopPruner()
    return WandbHyperbandPruner(hb.bands(), hb.eta)


def finished_runs(study: optuna.Study) -> int:
    """Runs the sweep counts as done: COMPLETE, PRUNED, or FAIL because the run failed (not a FAIL
    left by a dead or interrupted runner, which is queued to run again).

    >>> finished_runs(optuna.create_study())
    0
    """
    return sum(_counts(t) for t in study.get_trials(deepcopy=False))


def _counts(t: FrozenTrial) -> bool:
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and "error" in t.user_attrs
    )


def run_sweep(
    sweep: str | os.PathLike | SweepSpec,
    *,
    count: int | None = None,
    jobs: int = 1,
    launcher: str = "python",
    accelerate_config: str | None = None,
    storage: str | None = None,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    heartbeat_interval: int = 10,
    heartbeat_grace: int = 60,
) -> optuna.Study:
    """Run a wandb sweep file on Optuna until ``count`` runs are done in all (earlier invocations
    included; default: the whole grid, or the file's ``run_cap``), ``jobs`` at a time; returns the study.

    Example: ``run_sweep("configs/sweeps/digits_depth.yaml", count=20, jobs=2).best_trial.user_attrs["config"]``
    """
    spec = sweep if isinstance(sweep, SweepSpec) else load_sweep(sweep)
    runner = _Runner(spec, out, jobs, launcher, accelerate_config, heartbeat_interval, heartbeat_grace)
    target = _target(spec, count)
    with _quiet_optuna():
        study = runner.open_study(storage, seed)
    try:
        runner.settle(study)
        done = finished_runs(study)
        reached = [t for t in _complete(study) if spec.metric is not None and spec.metric.reached(t.value)]
        if done >= target or reached:
            print(
                f"{spec.name}: {done} of {target} runs done{', target reached' if reached else ''}: nothing to run"
            )
        else:
            with _quiet_optuna(), runner.signals(), _Progress(spec, target, done) as progress:
                study.optimize(
                    runner.objective,
                    n_trials=target - done,
                    n_jobs=jobs,
                    catch=(RunFailed,),
                    callbacks=[progress],
                )
    finally:
        _report(study, spec, runner.out)
    return study


def _target(spec: SweepSpec, count: int | None) -> int:
    """How many finished runs the sweep aims at: ``count``, capped by run_cap and the grid size."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"--count must be an integer >= 1, got {count!r}")
    caps = [c for c in (count, spec.run_cap) if c is not None]
    if spec.method == "grid":
        caps.append(spec.space.grid_size())
    if not caps:
        raise ValueError(
            f"sweep {spec.source!r}: method {spec.method} runs until told: give --count N (or run_cap in the file)"
        )
    return min(caps)


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


class _Runner:
    """One invocation: the options, the children in flight, the objective Optuna calls per trial."""

    def __init__(
        self,
        spec: SweepSpec,
        out: str | os.PathLike | None,
        jobs: int,
        launcher: str,
        accelerate_config: str | None,
        heartbeat_interval: int,
        heartbeat_grace: int,
    ) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"--jobs must be an integer >= 1, got {jobs!r}")
        if launcher not in LAUNCHERS:
            raise ValueError(f"--launcher must be one of {list(LAUNCHERS)}, got {launcher!r}")
        if accelerate_config is not None and launcher != "accelerate":
            raise ValueError("--accelerate-config needs --launcher accelerate")
        if accelerate_config is not None and not Path(accelerate_config).is_file():
            raise ValueError(f"--accelerate-config {accelerate_config!r} is not a file")
        for name, value in (
            ("--heartbeat-interval", heartbeat_interval),
            ("--heartbeat-grace", heartbeat_grace),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of seconds >= 1, got {value!r}")
        if heartbeat_grace <= heartbeat_interval:
            raise ValueError(
                f"--heartbeat-grace ({heartbeat_grace} s) must exceed --heartbeat-interval ({heartbeat_interval} s), "
                "or live runs would be taken for dead ones"
            )
        if spec.uses("program") and not Path(spec.program or "").is_file():
            raise ValueError(
                f"sweep {spec.source!r}: program {spec.program!r} is not a file in {os.getcwd()!r} (the runner, "
                "like wandb's agent, runs the program path from the current folder)"
            )
        self.interpreter = [sys.executable]
        if launcher == "accelerate":
            if not spec.uses("interpreter"):
                raise ValueError(
                    f"sweep {spec.source!r}: --launcher accelerate replaces ${{interpreter}}, which the command lacks"
                )
            self.interpreter += ["-m", "accelerate.commands.launch"]
            self.interpreter += ["--config_file", str(accelerate_config)] if accelerate_config else []
        self.spec = spec
        self.out = (
            Path(out) if out is not None else Path("output/sweeps") / re.sub(r"[^\w.-]", "-", spec.name)
        )
        self.runs, self.logs = self.out / "runs", self.out / "logs"
        self.heartbeat = (heartbeat_interval, heartbeat_grace)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if spec.flag_given("log_wandb"):
            self.env["WANDB_RUN_GROUP"] = spec.name
            self.env |= {
                k: v for k, v in (("WANDB_PROJECT", spec.project), ("WANDB_ENTITY", spec.entity)) if v
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback()  # queues a run again (stale or interrupted)
        self.interrupted = threading.Event()
        self.children: set[subprocess.Popen] = set()
        self.lock = threading.RLock()  # reentrant: the signal handler runs in a thread that may hold it

    # ------------------------------------------------------------------------------ the study
    def open_study(self, url: str | None, seed: int) -> optuna.Study:
        """The sweep's study in the database (created on the first invocation, checked after)."""
        spec = self.spec
        self.runs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        url = url or f"sqlite:///{(self.out / 'sweep.db').resolve()}"
        interval, grace = self.heartbeat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=self.retry,
            )
            if spec.method == "grid":
                sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(
                    spec.space.grid(), seed=seed
                )
            elif spec.method == "random":
                sampler = optuna.samplers.RandomSampler(seed=seed)
            else:  # constant_liar: runs in flight count as bad guesses, so parallel runs spread out
                sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        pruner = sweep_pruner(spec)
        goal = spec.metric.goal if spec.metric is not None else "minimize"
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=spec.name,
            direction=goal,
            load_if_exists=True,
        )
        saved = study.user_attrs.get("sweep")
        if saved is None:
            study.set_user_attr("sweep", spec.fingerprint)
        elif saved != spec.fingerprint:
            raise ValueError(
                f"sweep {spec.source!r}: the study {spec.name!r} in {url} was started from a different sweep "
                f"(method, metric, parameters, early_terminate, program or command changed): "
                f"it had {saved}; restore the file, or give the sweep another name, --out or --storage"
            )
        return study

    def settle(self, study: optuna.Study) -> None:
        """Before starting: wait until every RUNNING trial has proved alive (another runner's) or
        gone stale (a dead runner's: failed and queued again), so no grid point runs twice."""
        interval, grace = self.heartbeat
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not running:
            return
        print(
            f"{len(running)} run(s) RUNNING in the database: waiting up to {grace + interval} s for their heartbeats"
        )
        deadline = time.monotonic() + grace + interval
        while running and time.monotonic() < deadline:
            time.sleep(min(interval, 1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                fail_stale_trials(study)
            running &= {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}

    # ---------------------------------------------------------------------------- one trial
    def objective(self, trial: optuna.Trial) -> float:
        """Run one configuration: launch, follow its summary.csv (report, prune), record the result.
        A failed run is a FAIL trial (``RunFailed``); anything else that ends the trial (the runner
        interrupted, an error of the sweep itself) queues the configuration to run again and stops."""
        try:
            return self._trial(trial)
        except (RunFailed, optuna.TrialPruned):
            raise
        except BaseException:
            (frozen,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
            self.retry(trial.study, frozen)
            trial.study.stop()
            raise

    def _trial(self, trial: optuna.Trial) -> float:
        self._check_interrupted(trial)
        spec = self.spec
        values = spec.space.sample(trial, grid=spec.method == "grid")
        trial.set_user_attr("config", values)
        previous = trial.user_attrs.get("run_folder")  # a re-run of a run whose runner died
        if previous is not None:
            _end_leftovers(Path(previous))
        resume = previous is not None and (Path(previous) / "last").exists()
        folder = Path(previous) if resume else self.runs / f"trial-{trial.number:04d}"
        log = self.logs / f"trial-{trial.number:04d}.log"
        trial.set_user_attr("run_folder", str(folder))
        trial.set_user_attr("log", str(log))
        try:
            spec.check_config(values)
        except ValueError as e:
            _fail(trial, str(e))
        json_file = None
        if spec.uses("args_json_file"):
            json_file = self.logs / f"trial-{trial.number:04d}.json"
            write_text_atomic(json_file, json.dumps(values))
        argv = spec.command_line(values, self.interpreter, str(json_file) if json_file else None)
        argv += ["--output", str(folder.parent), "--experiment", folder.name]
        argv += ["--resume", str(folder / "last")] if resume else []
        return self._run(trial, argv, folder, log)

    def _run(self, trial: optuna.Trial, argv: list[str], folder: Path, log: Path) -> float:
        metric = self.spec.metric
        pruning = self.spec.early_terminate is not None
        reported: set[int] = set()
        with open(log, "ab") as f:
            f.write(f"$ {shlex.join(argv)}\n".encode())
            f.flush()
            start = f.tell()  # the run's own output begins here
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env={**self.env, RUN_MARK: str(folder.resolve())},
                    start_new_session=True,  # its own process group: a prune or a signal ends all of it
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            except OSError as e:
                raise ValueError(
                    f"sweep {self.spec.source!r}: cannot start the command {argv[0]!r}: {e.strerror or e}; "
                    "check its command and program"
                ) from None
        with self.lock:
            self.children.add(proc)
        try:
            while True:
                code = proc.poll()
                for step, value in _metric_rows(folder, metric, reported) if metric else ():
                    trial.report(value, step)
                    reported.add(step)
                    if pruning and trial.should_prune() and code is None:
                        _stop(proc)
                        raise optuna.TrialPruned(f"pruned at step {step}: {metric.name} = {value}")
                if code is not None:
                    break
                if self.interrupted.is_set():
                    _stop(proc)
                    self._check_interrupted(trial)
                time.sleep(POLL_S)
        finally:
            _stop(proc)
            with self.lock:
                self.children.discard(proc)
        if code != 0:
            self._check_interrupted(trial)  # it was ended by the signal
            _fail(trial, f"exit code {code}: {_tail(log, start)}")
        if metric is None:
            return 0.0
        rows = _rows(folder / "summary.csv")
        if not rows:
            _fail(trial, f"the run wrote no summary.csv rows to {str(folder)!r} (metric {metric.name!r})")
        value = _value(rows[-1], metric.name, folder)
        if not math.isfinite(value):
            _fail(trial, f"{metric.name} of the last summary.csv row is {value}")
        return value

    def _check_interrupted(self, trial: optuna.Trial) -> None:
        if self.interrupted.is_set():
            raise SweepInterrupted(f"trial {trial.number} interrupted; it runs again on the next invocation")

    @contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: end the runs in flight (SIGTERM to their groups, SIGKILL on a second
        signal), queue them again, stop. Only in the main thread (where Python delivers signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            again = self.interrupted.is_set()
            self.interrupted.set()
            with self.lock:
                for proc in list(self.children):
                    _signal_group(proc, signal.SIGKILL if again else signal.SIGTERM)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# ------------------------------------------------------------------------------------ processes
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """The child's pre-exec step on Linux: receive SIGTERM when the runner dies, even by kill -9
    (prctl PR_SET_PDEATHSIG), so no orphan keeps a run folder's lock."""
    if _LIBC is None:
        return None
    prctl = _LIBC.prctl  # looked up before the fork: the child only calls it

    def pre_exec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the runner died before prctl
            os._exit(1)

    return pre_exec


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    """End a run's whole process group: SIGTERM, then SIGKILL if it is still there after a while."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _end_leftovers(folder: Path) -> None:
    """Linux: end the processes of an earlier run of ``folder`` that outlived their runner, found by
    the ``RUN_MARK`` in their environment (under ``accelerate launch`` the training processes are
    grandchildren, which the parent-death signal does not reach; one would hold the folder's lock)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    mark = f"{RUN_MARK}={folder.resolve()}".encode()
    pids = []
    for entry in proc.iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or another user's
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for pid in pids if _alive(pid)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_AFTER_S
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (Linux /proc)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _fail(trial: optuna.Trial, error: str) -> None:
    trial.set_user_attr("error", error)
    raise RunFailed(f"trial {trial.number}: {error}")


def _tail(log: Path, start: int) -> str:
    """The last lines a run wrote to its log from byte ``start`` (a progress bar's carriage returns
    resolved to the final text)."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return "\n".join([line for line in lines if line][-TAIL_LINES:])


# ---------------------------------------------------------------------------------- summary.csv
def _rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a summary.csv (a line still being written is left for the next read)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))


def _value(row: dict[str, str], name: str, folder: Path) -> float:
    if name not in row:
        raise ValueError(
            f"the sweep's metric {name!r} is not a column of {str(folder / 'summary.csv')!r} "
            f"(columns: {list(row)}); set metric.name to one of them"
        )
    try:
        return float(row[name])
    except ValueError:
        return math.nan


def _metric_rows(folder: Path, metric: Any, reported: set[int]) -> list[tuple[int, float]]:
    """``(step, value)`` of the rows not reported yet; step = epoch + 1 (only an order: the pruner
    numbers a run's values by their position in its history, as wandb does)."""
    out = []
    for i, row in enumerate(_rows(folder / "summary.csv")):
        step = int(float(row["epoch"])) + 1 if row.get("epoch") else i + 1
        if step not in reported:
            out.append((step, _value(row, metric.name, folder)))
    return out


# ------------------------------------------------------------------------------ progress, report
class _Progress:
    """tqdm over runs (total: the target; initial: runs already done), the best value as postfix;
    stops the study at the target count or the metric's target (Optuna callback)."""

    def __init__(self, spec: SweepSpec, target: int, done: int) -> None:
        self.spec, self.target = spec, target
        self.bar = tqdm(total=target, initial=done, unit="run", desc=spec.name, dynamic_ncols=True)
        self.lock = threading.Lock()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self.lock:
            if trial.state == TrialState.FAIL and "error" in trial.user_attrs:
                self.bar.write(
                    f"trial {trial.number} failed: {trial.user_attrs['error'].splitlines()[-1]} "
                    f"(log: {trial.user_attrs.get('log')})"
                )
            done = finished_runs(study)
            self.bar.update(done - self.bar.n)
            complete = _complete(study)
            metric = self.spec.metric
            if complete and metric is not None:
                best = max(complete, key=lambda t: t.value if metric.goal == "maximize" else -t.value)
                self.bar.set_postfix_str(f"best {metric.name} {best.value:.4g} (trial {best.number})")
            if done >= self.target or (metric is not None and any(metric.reached(t.value) for t in complete)):
                study.stop()


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial log lines off while the progress bar runs (failures are printed above it)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _report(study: optuna.Study, spec: SweepSpec, out: Path) -> None:
    """Print the best trials and write every trial to ``<out>/trials.csv`` (atomically)."""
    trials = study.get_trials(deepcopy=False)
    columns = ["number", "state", "value", "params", "run_folder", "error", "log"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for t in trials:
        a = t.user_attrs
        value = "" if t.value is None or spec.metric is None else t.value
        writer.writerow(
            [
                t.number,
                t.state.name,
                value,
                json.dumps(a.get("config", {})),
                a.get("run_folder", ""),
                a.get("error", ""),
                a.get("log", ""),
            ]
        )
    write_text_atomic(out / "trials.csv", text.getvalue())
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    summary = ", ".join(f"{n} {s.name.lower()}" for s, n in states.items() if n)
    print(f"{spec.name}: {summary or 'no trials'}; all trials: {out / 'trials.csv'}")
    ranked = [
        t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.value is not None
    ]
    if spec.metric is None or not ranked:
        return
    ranked.sort(key=lambda t: t.value, reverse=spec.metric.goal == "maximize")
    print(f"{'trial':>6}  {'state':<8}  {spec.metric.name:>12}  config")
    for t in ranked[:10]:
        config = " ".join(f"{k}={v}" for k, v in t.user_attrs.get("config", {}).items())
        print(f"{t.number:>6}  {t.state.name:<8}  {t.value:>12.6g}  {config}")
