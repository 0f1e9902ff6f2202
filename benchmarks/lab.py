"""Seed 003's two lab experiments in full, vectorised (``run_lab``) vs a plain loop of one model at a time.

Run (about 2.5 minutes on 2 quiet cores with the defaults; far longer while other processes are busy)::

    python benchmarks/lab.py                        # both experiments, 2 threads
    python benchmarks/lab.py pattern                # one experiment (pattern, boolnet)
    python benchmarks/lab.py --loop-fraction 1      # time the whole loop (about 10 minutes more)
    python benchmarks/lab.py --quick                # tiny settings, for the tests (a few seconds)

Experiments (the issue's benchmark, the CLI's defaults):

- ``pattern``: models naive, random_conv, hyper x filters 1-7 (21 configurations) x 500 restarts
  x 100 steps.
- ``boolnet``: models boolnet, hyper x widths 1-22 (44 configurations) x 50 restarts x 500 steps.

Vectorised: ``run_lab(...)`` of the whole experiment into a temporary folder, timed with
``time.perf_counter``, everything included (model building, training, evaluation, results.json,
report.md, lab.png). Loop: ``train_restart`` (one model, ``torch.optim.SGD``, evaluation of the
stock model) for every configuration on the first ``k = round(loop_fraction * restarts)`` restarts
(at least 1) with the run's seeds (``restart_seeds(0, size, restarts)[:k]``), timed in the same
process after the vectorised run. Each restart of the loop is its own model, data and evaluation,
so the loop's time is linear in the restarts: it is extrapolated to all restarts as
``measured * restarts / k`` (``--loop-fraction 1`` measures it all). The ratio is loop (all
restarts) / vectorised.

PASS: the vectorised run takes <= 120 s (``--limit``), and every restart the loop ran has the
vectorised run's metric for the same restart (results.json ``configs["<model>:<size>"]["metric"][r]``)
within 1e-6 (float32). Exit status 1 on any FAIL.

Other processes: while another process keeps one of 2 cores busy, 2-thread OpenMP kernels stall
for whole scheduler slices, and this workload's kernels are tiny: a loop restart then takes 20 to
40 times as long (measured: 0.05 s -> 1.5 s). Before the vectorised run and before the loop the
script waits (``--quiet-wait`` seconds at most) until other processes use at most ``--max-busy`` of
the CPUs (read from /proc/stat, as train_step.py), and it reports the share they used during each
timing (``busy`` columns); a share above ``--max-busy`` is flagged BUSY: rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from train_step import others_busy, wait_quiet  # a sibling script (benchmarks/ is on sys.path)

from timm_overparam.lab.experiment import parse_model, restart_seeds, run_lab
from timm_overparam.lab.restarts import train_restart
from timm_overparam.lab.tasks import TASKS

LIMIT_S = 120.0
TOLERANCE = 1e-6  # float32 metrics: accuracy on 2,000 sequences, macro-F1 on 5,000 points

# experiment -> (models, sizes, restarts); steps are the task's (pattern 100, BoolNet 500)
EXPERIMENTS: dict[str, tuple[tuple[str, ...], tuple[int, ...], int]] = {
    "pattern": (("naive", "random_conv", "hyper"), tuple(range(1, 8)), 500),
    "boolnet": (("boolnet", "hyper"), tuple(range(1, 23)), 50),
}
QUICK_SIZES, QUICK_RESTARTS, QUICK_STEPS = (1, 2), 8, 10


def loop_restarts(restarts: int, fraction: float) -> int:
    """Restarts per configuration the loop runs: ``round(fraction * restarts)``, between 1 and all.

    Example: ``loop_restarts(500, 0.1) == 50``
    """
    return min(restarts, max(1, round(fraction * restarts)))


def deployed_metric(metric: dict) -> float:
    """``train_restart``'s metric as results.json holds it: the one value, or a line's midpoint."""
    return metric[None] if None in metric else metric[0.5]


def measure(
    experiment: str,
    models,
    sizes,
    restarts: int,
    steps: int | None,
    fraction: float,
    max_busy: float = 0.05,
    quiet_wait: float = 0.0,
) -> dict:
    """One row of the table: the vectorised run, then the loop on ``fraction`` of its restarts
    (each timed after waiting up to ``quiet_wait`` s for other processes to use <= ``max_busy``).

    Example: ``measure("boolnet", ["boolnet"], [1, 2], 8, 10, 1.0)["matched"]``
    """
    task = TASKS[experiment]() if steps is None else TASKS[experiment](steps=steps)
    with tempfile.TemporaryDirectory(prefix=f"lab_bench_{experiment}_") as tmp:
        wait_quiet(max_busy, quiet_wait, sample=1.0)
        out, vec_s, vec_busy = others_busy(
            lambda: run_lab(
                experiment, list(models), list(sizes), restarts=restarts, out=tmp, steps=steps, progress=False
            )
        )
        configs = json.loads((Path(out) / "results.json").read_text())["configs"]

    k = loop_restarts(restarts, fraction)
    work = [
        (name, size, r, seed)
        for name in models
        for size in sizes
        for r, seed in enumerate(restart_seeds(0, size, restarts)[:k])
    ]

    def loop() -> list[float]:
        metrics = []
        for name, size, _, seed in work:
            model = parse_model(experiment, name)
            metrics.append(deployed_metric(train_restart(model.arch, model.kwargs(size), task, seed)[1]))
        return metrics

    wait_quiet(max_busy, quiet_wait, sample=1.0)
    metrics, loop_s, loop_busy = others_busy(loop)
    held = [configs[f"{name}:{size}"]["metric"][r] for name, size, r, _ in work]
    diffs = [abs(m - h) for m, h in zip(metrics, held, strict=True)]
    loop_all_s = loop_s * restarts / k
    return dict(
        experiment=experiment, configs=len(models) * len(sizes), restarts=restarts, steps=task.steps,
        vec_s=vec_s, vec_busy=vec_busy, loop_k=k, loop_s=loop_s, loop_busy=loop_busy,
        loop_all_s=loop_all_s, ratio=loop_all_s / vec_s, ran=len(diffs),
        matched=sum(d <= TOLERANCE for d in diffs), worst=max(diffs),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "experiments", nargs="*", help=f"experiments to run (default all): {', '.join(EXPERIMENTS)}"
    )
    parser.add_argument(
        "--loop-fraction",
        type=float,
        default=0.1,
        help="share of each configuration's restarts the loop runs, extrapolated linearly (default 0.1)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument(
        "--limit", type=float, default=LIMIT_S, help="vectorised seconds allowed (default 120)"
    )
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.05,
        help="share of the CPUs other processes may use during a timing before it is flagged BUSY",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait before each timing for other processes to go quiet (0: do not wait)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {QUICK_SIZES}, {QUICK_RESTARTS} restarts, {QUICK_STEPS} steps, whole loop (for the tests)",
    )
    args = parser.parse_args(argv)
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    if not 0 < args.loop_fraction <= 1:
        parser.error(f"--loop-fraction must be in (0, 1], got {args.loop_fraction}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    fraction = 1.0 if args.quick else args.loop_fraction
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load:.2f}; loop on {fraction:g} of the restarts, its time linear in the "
        "restarts: extrapolated to all",
        flush=True,
    )

    rows = []
    for experiment in args.experiments or list(EXPERIMENTS):
        models, sizes, restarts = EXPERIMENTS[experiment]
        steps = None
        if args.quick:
            sizes, restarts, steps = QUICK_SIZES, QUICK_RESTARTS, QUICK_STEPS
        rows.append(
            measure(experiment, models, sizes, restarts, steps, fraction, args.max_busy, args.quiet_wait)
        )

    header = (
        f"{'experiment':<10} {'configs':>7} {'restarts':>8} {'steps':>5} {'vectorised s':>12} {'busy':>4}"
        f" {'loop runs':>9} {'loop s':>8} {'busy':>4} {'loop s (all)':>12} {'ratio':>6}  result"
    )
    print(header)
    failed = 0
    for r in rows:
        ok = r["vec_s"] <= args.limit and r["matched"] == r["ran"]
        failed += not ok
        extrapolated = "" if r["loop_k"] == r["restarts"] else " (extrapolated)"
        print(
            f"{r['experiment']:<10} {r['configs']:>7} {r['restarts']:>8} {r['steps']:>5} {r['vec_s']:>12.2f}"
            f" {r['vec_busy']:>4.0%} {r['ran']:>9} {r['loop_s']:>8.2f} {r['loop_busy']:>4.0%}"
            f" {r['loop_all_s']:>12.2f} {r['ratio']:>6.2f}  {'PASS' if ok else 'FAIL'}{extrapolated}"
        )
    for r in rows:
        e = r["experiment"]
        within = r["vec_s"] <= args.limit
        print(f"{'PASS' if within else 'FAIL'} {e}: vectorised {r['vec_s']:.2f} s <= {args.limit:g} s")
        same = r["matched"] == r["ran"]
        print(
            f"{'PASS' if same else 'FAIL'} {e}: matched restarts {r['matched']}/{r['ran']} "
            f"(loop metric == vectorised metric within {TOLERANCE:g}; max |diff| {r['worst']:.1e})"
        )
        if r["loop_k"] < r["restarts"]:
            print(
                f"     {e}: loop measured on {r['loop_k']} of {r['restarts']} restarts per configuration "
                f"({r['loop_s']:.2f} s), x {r['restarts'] / r['loop_k']:g} for all: {r['loop_all_s']:.2f} s"
            )
        for what, share in (("vectorised run", r["vec_busy"]), ("loop", r["loop_busy"])):
            if share > args.max_busy:
                print(
                    f"BUSY {e}: other processes used {share:.0%} of the CPUs during the {what} "
                    f"(> {args.max_busy:g}): its time is not trustworthy, rerun on a quiet machine"
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
