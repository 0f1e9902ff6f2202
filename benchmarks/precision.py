"""How far an expanded model's logits under mixed precision are from its collapsed float32 logits.

Run (about a minute on 2 CPU cores)::

    HF_HUB_OFFLINE=1 python benchmarks/precision.py --models resnet18_op3 vit_tiny_patch16_224_op3

For each model (random init, random BatchNorm statistics, eval mode, a batch of 8 at the model's
input size) it prints the relative error ``max |a - b| / max |b|`` (``core.numerics.rel_err``, the
measure of train.py's collapse check) of the expanded model's logits against the collapsed model's
in float32: in float32 (the exactness of the collapse), and under ``torch.autocast`` in bfloat16
and float16 (what ``--amp`` evaluates: the factors stay float32 master weights, autocast runs the
composed convolutions and matmuls in low precision). The check allows 1e-4 in float32 and 5e-2
under ``--amp``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from torch import nn

import timm_overparam
from timm_overparam.core.numerics import rel_err


def randomize_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random running statistics and affine parameters (as the tests do)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


@torch.no_grad()
def measure(name: str, device: str) -> dict[str, float]:
    """Relative errors of ``name``'s expanded logits (float32, bf16 and fp16 autocast) against its collapsed float32 logits."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = timm.create_model(name).to(device).eval()
    randomize_bn(model, g)
    plain = timm_overparam.collapse(model).eval()
    size = model.pretrained_cfg["input_size"]
    x = torch.randn(8, *size, generator=g).to(device)
    reference = plain(x)
    errors = {"float32": rel_err(model(x).float(), reference)}
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast(device, dtype=dtype):
            errors[str(dtype).removeprefix("torch.")] = rel_err(model(x).float(), reference)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18_op3", "vit_tiny_patch16_224_op3"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"device {args.device}, torch {torch.__version__}, timm {timm.__version__}")
    print(f"{'model':<28} {'float32':>10} {'bfloat16':>10} {'float16':>10}")
    for name in args.models:
        e = measure(name, args.device)
        print(f"{name:<28} {e['float32']:>10.2e} {e['bfloat16']:>10.2e} {e['float16']:>10.2e}")


if __name__ == "__main__":
    main()
