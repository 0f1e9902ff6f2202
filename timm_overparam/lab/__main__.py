"""``python -m timm_overparam.lab pattern|boolnet|plot|compare``: the exploration lab of seed 003.

Example::

    python -m timm_overparam.lab pattern --models naive,random_conv,hyper --filters 1-7 --restarts 500
    python -m timm_overparam.lab boolnet --models boolnet,hyper --widths 1-22 --restarts 50
    python -m timm_overparam.lab pattern --models naive,naive_op2,naive_op4,naive_line --filters 1-7 \\
        --restarts 500 --out output/lab/pattern_variants
    python -m timm_overparam.lab plot output/lab/pattern_variants --x deployed --out lab.png
    python -m timm_overparam.lab compare output/lab/boolnet_lr0.03 output/lab/boolnet_lr0.3 --sizes 2,4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .compare import compare_runs_table
from .experiment import parse_sizes, run_lab
from .report import X_CHOICES, write_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m timm_overparam.lab",
        description="Seed 003's exploration experiments: many restarts per configuration, trained at once.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for experiment, size_flag, default_models, default_sizes, default_restarts in (
        ("pattern", "--filters", "naive,random_conv,hyper", "1-7", 500),
        ("boolnet", "--widths", "boolnet,hyper", "1-22", 50),
    ):
        p = sub.add_parser(experiment, help=f"the {experiment} experiment")
        p.add_argument("--models", default=default_models, help=f"comma-separated (default {default_models})")
        p.add_argument(
            size_flag,
            dest="sizes",
            default=default_sizes,
            help=f"sizes, e.g. 1-7 or 1,3,5 (default {default_sizes})",
        )
        p.add_argument("--restarts", type=int, default=default_restarts, help="restarts per configuration")
        p.add_argument(
            "--out", default=f"output/lab/{experiment}", help="run folder (an existing one resumes)"
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
        p.add_argument("--device", default="cpu")
        p.add_argument("--steps", type=int, default=None, help="override the seed's number of steps")
        p.add_argument("--lr", type=float, default=None, help="override the seed's learning rate")
        p.add_argument("--momentum", type=float, default=None, help="override the seed's momentum")
        p.add_argument("--beta", type=float, default=1.0, help="weight of a line's subspace regulariser")
        p.add_argument("--op-width", type=float, default=1.0, help="hidden width factor of the op variants")
        p.add_argument("--success", type=float, default=None, help="threshold of a successful restart")
        p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("plot", help="report.md and a figure of a run folder")
    p.add_argument("run", help="a run folder holding results.json")
    p.add_argument("--out", default=None, help="the PNG (default <run>/lab.png)")
    p.add_argument("--x", choices=sorted(X_CHOICES), default="seed", help="x axis (default: the seed's)")
    p.add_argument("--models", default=None, help="the figure's models, comma-separated (default: all)")
    p.add_argument("--success", type=float, default=None, help="threshold of a successful restart")
    p = sub.add_parser("compare", help="several runs side by side (success rate per model and size)")
    p.add_argument("runs", nargs="+", help="run folders of one experiment")
    p.add_argument("--models", default=None, help="comma-separated (default: all)")
    p.add_argument("--sizes", default=None, help="e.g. 1-4,8 (default: all)")
    p.add_argument("--success", type=float, default=None, help="threshold of a successful restart")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "compare":
            models = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
            sizes = None if args.sizes is None else parse_sizes(args.sizes)
            print(compare_runs_table(args.runs, models, sizes, args.success), end="")
            return 0
        if args.command == "plot":
            models = None if args.models is None else [m.strip() for m in args.models.split(",") if m.strip()]
            report, figure = write_report(
                args.run, out=args.out, x=args.x, success=args.success, models=models
            )
        else:
            out = run_lab(
                args.command,
                [m.strip() for m in args.models.split(",") if m.strip()],
                parse_sizes(args.sizes),
                restarts=args.restarts,
                out=args.out,
                seed=args.seed,
                dtype=args.dtype,
                device=args.device,
                steps=args.steps,
                lr=args.lr,
                momentum=args.momentum,
                beta=args.beta,
                op_width=args.op_width,
                success=args.success,
                progress=not args.no_progress,
            )
            report, figure = out / "report.md", out / "lab.png"
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{report}\n{figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
