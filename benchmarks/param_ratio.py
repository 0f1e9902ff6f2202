"""Parameters of ``<arch>_op{k}`` relative to ``<arch>`` for both factor placements.

python benchmarks/param_ratio.py --models resnet50 vit_base_patch16_224 convnext_tiny --depth 3
"""

import argparse

import timm
import torch

import timm_overparam  # noqa: F401  (registers the _op models)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224", "convnext_tiny"])
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':28s} {'params':>10s} {'hidden=out':>11s} {'hidden=min':>11s}")
    for name in args.models:
        with torch.device("meta"):
            base = count(timm.create_model(name))
            ratios = [
                count(timm.create_model(f"{name}_op{args.depth}", op_hidden=h, op_init="original")) / base
                for h in ("out", "min")
            ]
        print(f"{name:28s} {base / 1e6:9.1f}M {ratios[0]:10.2f}x {ratios[1]:10.2f}x")


if __name__ == "__main__":
    main()
