#!/usr/bin/env python3
"""Train an over-parameterized (``<arch>_op3``) or subspace (``<arch>_line``) timm model with accelerate.

    python train.py                                    # resnet18_op3 on the embedded digits
    accelerate launch --num_processes 8 train.py --model resnet50_op3 --dataset torch/cifar10 ...

``python train.py --help`` lists every flag; the job itself is ``timm_overparam.trainer``.
"""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import timm_overparam  # noqa: F401  (registers the derived models)
from timm_overparam.cli import parse_args, train_parser
from timm_overparam.trainer import train


def main() -> None:
    try:
        train(parse_args(train_parser()))
    except (ValueError, TypeError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
