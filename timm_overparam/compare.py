"""``python -m timm_overparam.compare``: compare groups of runs (seeds) with intervals and paired tests.

    python -m timm_overparam.compare output/sweeps/digits_depth --group-by model --metric top1 --out report/
    python -m timm_overparam.compare --wandb ENTITY/PROJECT --sweep ID --group-by model --out report/

The flags map one to one onto ``timm_overparam.sweep.report.compare``; docs/sweeps.md ("Comparing runs") explains them.
"""

from __future__ import annotations

import argparse
import sys

from timm_overparam.sweep.report import compare


def parser() -> argparse.ArgumentParser:
    """The command line's flags.

    >>> parser().parse_args(["output/x", "--group-by", "model,lr", "--best"]).group_by
    ['model', 'lr']
    """
    p = argparse.ArgumentParser(
        prog="python -m timm_overparam.compare",
        description="Compare groups of runs: mean, std, 95%% t intervals, paired differences against a "
        "baseline over common seeds; a table in the terminal, and comparison.md/.csv and figures in --out.",
    )
    p.add_argument(
        "paths", nargs="*", help="folders holding run folders (args.yaml + summary.csv) or wandb run folders"
    )
    p.add_argument(
        "--wandb", metavar="ENTITY/PROJECT", help="read the runs of this wandb project (wandb.Api)"
    )
    p.add_argument("--sweep", metavar="ID", help="with --wandb: only the runs of this sweep")
    p.add_argument(
        "--group-by",
        default=["model"],
        type=lambda s: [k for k in s.split(",") if k],
        metavar="KEY[,KEY...]",
        help="config key(s) whose values make the groups (default: model)",
    )
    p.add_argument("--metric", default="top1", help="the metric compared, without eval_ (default: top1)")
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--final", dest="which", action="store_const", const="final", help="each run's last epoch (default)"
    )
    when.add_argument(
        "--best", dest="which", action="store_const", const="best", help="each run's best checkpoint's epoch"
    )
    p.set_defaults(which="final")
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose config matches (repeatable; VALUE may be a,b)",
    )
    p.add_argument(
        "--baseline", metavar="GROUP", help="the group the others are paired against (default: the first)"
    )
    p.add_argument(
        "--seed-key",
        default="seed",
        metavar="KEY",
        help="the config key that pairs runs across groups (default: seed)",
    )
    p.add_argument(
        "--include-unfinished",
        action="store_true",
        help="compare runs without results.json at their last epoch",
    )
    p.add_argument(
        "--x", metavar="KEY", help="plot the metric against this config key (numeric: a line per series)"
    )
    p.add_argument(
        "--points",
        action="store_true",
        help="a subspace run counts once per evaluated point and ensemble, as model@point (e.g. "
        "resnet18_line@0.5), to compare and pair points with standard runs",
    )
    p.add_argument("--out", metavar="DIR", help="write comparison.md, comparison.csv and the figures here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run ``compare``, print its table; a bad input exits 2 with its message.

    Example: ``main(["output/sweeps/digits_depth", "--group-by", "model", "--out", "report"])``
    """
    p = parser()
    args = p.parse_args(argv)
    try:
        print(
            compare(
                args.paths,
                wandb=args.wandb,
                sweep=args.sweep,
                group_by=args.group_by,
                metric=args.metric,
                which=args.which,
                filters=args.filters,
                baseline=args.baseline,
                seed_key=args.seed_key,
                include_unfinished=args.include_unfinished,
                x=args.x,
                points=args.points,
                out=args.out,
            ),
            end="",
        )
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
