#!/usr/bin/env python3
"""Train an over-parameterized (``<arch>_op3``) or subspace (``<arch>_line``) timm model with accelerate.

    python train.py                                    # resnet18_op3 on the embedded digits
    accelerate launch --num_processes 8 train.py --model resnet50_op3 --dataset torch/cifar10 ...

``python train.py --help`` lists every flag; the job itself is ``timm_overparam.trainer``.
"""

import sys

import yaml


def _wandb_requested(argv: list[str]) -> bool:
    """--log-wandb on the command line or ``log_wandb: true`` in the -c/--config file."""
    if "--log-wandb" in argv:
        return True
    for flag in ("-c", "--config"):
        if flag in argv[:-1]:
            with open(argv[argv.index(flag) + 1]) as f:
                return bool((yaml.safe_load(f) or {}).get("log_wandb"))
    return False


if not _wandb_requested(sys.argv[1:]):
    sys.modules.setdefault("wandb", None)  # timm try-imports wandb: keep it out of runs that do not log

import timm_overparam  # noqa: E402, F401  (registers the derived models)
from timm_overparam.cli import parse_args, train_parser  # noqa: E402
from timm_overparam.trainer import train  # noqa: E402


def main() -> None:
    try:
        train(parse_args(train_parser()))
    except (ValueError, TypeError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
