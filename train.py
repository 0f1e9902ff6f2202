#!/usr/bin/env python3
"""Train an over-parameterized (``<arch>_op3``) or subspace (``<arch>_line``) timm model with accelerate.

    python train.py                                    # resnet18_op3 on the embedded digits
    accelerate launch --num_processes 8 train.py --model resnet50_op3 --dataset torch/cifar10 ...

``python train.py --help`` lists every flag: the keys of ``timm_overparam.train.TrainConfig``, which
this script only parses; the job itself is ``timm_overparam.train.train(config)``.
"""

import argparse
import sys

import yaml


def _wandb_requested(argv: list[str]) -> bool:
    """--log-wandb on the command line or ``log_wandb: true`` in the -c/--config file (any flag form).

    An unreadable config counts as a request: the full parse then reports what is wrong with it.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config", default="")
    parser.add_argument("--log-wandb", "--log_wandb", nargs="?", const="true", default="false")  # =True too
    known, _ = parser.parse_known_args(argv)
    requested = known.log_wandb.lower() not in ("false", "no", "0", "off")  # a bad value: the parse says so
    if requested or not known.config:
        return requested
    try:
        with open(known.config) as f:
            values = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return True
    return not isinstance(values, dict) or values.get("log_wandb") not in (None, False)


if not _wandb_requested(sys.argv[1:]):
    sys.modules.setdefault("wandb", None)  # timm try-imports wandb: keep it out of runs that do not log

import timm_overparam  # noqa: E402, F401  (registers the derived models)
from timm_overparam.train import train  # noqa: E402
from timm_overparam.train.cli import parse_args, train_parser  # noqa: E402


def main() -> None:
    try:
        train(parse_args(train_parser()))
    except (ValueError, TypeError, FloatingPointError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
