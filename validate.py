#!/usr/bin/env python3
"""Evaluate a timm, op or subspace model: collapsed, or at chosen subspace points and ensembles.

    python validate.py --model resnet18_op3 --checkpoint output/train/<exp>/best --results-file r.json
    python validate.py --model resnet18 --checkpoint output/train/<exp>/collapsed.safetensors

``python validate.py --help`` lists every flag: the keys of ``timm_overparam.train.ValidateConfig``,
which this script only parses; the job itself is ``timm_overparam.train.validate(config)``.
"""

import json
import sys

import timm_overparam  # noqa: F401  (registers the derived models)
from timm_overparam.train import validate
from timm_overparam.train.cli import parse_args, validate_parser


def main() -> None:
    try:
        record = validate(parse_args(validate_parser()))
    except (ValueError, TypeError, OSError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
