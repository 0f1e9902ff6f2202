"""``python -m timm_overparam.sweep SWEEP.yaml``: run a wandb sweep file without a wandb server.

    python -m timm_overparam.sweep configs/sweeps/digits_depth.yaml --count 20 --jobs 2
    python -m timm_overparam.sweep configs/sweeps/digits_depth.yaml --storage postgresql://host/db

Only parses flags; the work is ``timm_overparam.sweep.runner.run_sweep`` (see docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import sys

from timm_overparam.sweep.runner import LAUNCHERS, SweepInterrupted, run_sweep


def parser() -> argparse.ArgumentParser:
    """The runner's command line.

    >>> parser().parse_args(["s.yaml", "--count", "4"]).count
    4
    """
    p = argparse.ArgumentParser(
        prog="python -m timm_overparam.sweep",
        description="Run a wandb sweep file (the format `wandb sweep` takes) on Optuna, without a wandb "
        "server; its state lives in a database, so a second invocation resumes it (docs/sweeps.md).",
    )
    p.add_argument("sweep", help="the sweep YAML file")
    p.add_argument(
        "--count",
        type=int,
        help="finished runs the sweep should reach, earlier invocations included (default: the whole "
        "grid, or the file's run_cap; random and bayes need one of them)",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel on this machine (default: 1)")
    p.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="python",
        help="python (default): ${interpreter} is this Python; accelerate: each run under `accelerate launch`",
    )
    p.add_argument(
        "--accelerate-config", metavar="FILE", help="accelerate config file (default: your default config)"
    )
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///<out>/sweep.db)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default: output/sweeps/<sweep name>)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampler: grid order, random and TPE draws (default: 0)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=10,
        metavar="S",
        help="seconds between heartbeats of a run in the database (default: 10)",
    )
    p.add_argument(
        "--heartbeat-grace",
        type=int,
        default=60,
        metavar="S",
        help="seconds without a heartbeat after which a run counts as dead and is run again (default: 60)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit status (130 when interrupted).

    Example: ``main(["configs/sweeps/digits_depth.yaml", "--count", "4"])``
    """
    args = parser().parse_args(argv)
    try:
        run_sweep(
            args.sweep,
            count=args.count,
            jobs=args.jobs,
            launcher=args.launcher,
            accelerate_config=args.accelerate_config,
            storage=args.storage,
            out=args.out,
            seed=args.seed,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_grace=args.heartbeat_grace,
        )
    except SweepInterrupted as e:
        print(f"interrupted: {e}; run the same command to resume", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
