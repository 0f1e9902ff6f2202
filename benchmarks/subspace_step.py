"""Subspace (``<arch>_line``) vs stock timm models on the CPU: train step and evaluation of points.

Run (about 5 minutes on 2 quiet cores with the defaults)::

    HF_HUB_OFFLINE=1 python benchmarks/subspace_step.py --threads 2 --repeats 10

    HF_HUB_OFFLINE=1 python benchmarks/subspace_step.py --only eval_points_resnet18 --repeats 5

Timing, quiet-CPU waiting and the table come from ``train_step.py`` (same options, same caveats:
ratios in one process, round-robin, busy rounds dropped; about +-4% run to run on a shared 2-core VM).

Cases (``--only NAME``):

- ``line_resnet18_b32_64``, ``line_resnet18_b16_224``, ``line_vit_tiny_b8_224``: train step ``<arch>_line / <arch>``. The line
  step is ``zero_grad``, ``sample_point`` (a fresh ``a ~ U(0, 1)``), forward, cross-entropy
  ``+ beta * subspace_regularizer`` (beta = 1), backward, ``SGD(momentum=0.9).step()``; the stock
  step is train_step.py's. The line step without the regulariser is timed in the same rounds and
  its ratio given in the detail column (``no reg``).
- ``eval_points_resnet18``: ``evaluate_points`` of resnet18_line at the 5 points 0, .25, .5, .75, 1
  (each: BatchNorm recalibration on ``--bn-batches`` batches, eval on ``--eval-batches`` batches,
  then the metrics) vs 5 x (``recalibrate_bn`` + eval forward) of a stock resnet18, on the same
  synthetic batches of 32 images of 64x64, 10 classes.
- ``compiled_line_resnet18_b32_64``: ``torch.compile`` (``--backend``, default inductor) of forward
  + cross-entropy + the regulariser (the point drawn before, outside the graph) of resnet18_line
  vs forward + cross-entropy of resnet18.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
import train_step
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from train_step import (
    Result,
    Rounds,
    batch,
    build_parser,
    make_model,
    ratio_result,
    rounds,
    sgd,
    times_result,
)

from timm_overparam import evaluate_points, recalibrate_bn, sample_point, subspace_regularizer

POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def line_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    beta: float,
) -> None:
    opt.zero_grad(set_to_none=True)
    sample_point(model, gen)
    loss = F.cross_entropy(model(x), y)
    if beta:
        loss = loss + beta * subspace_regularizer(model, gen)
    loss.backward()
    opt.step()


def line_case(case: str, arch: str, size: int, image: int, limit: float, args) -> list[Result]:
    x, y = batch(size, image)
    fns = []
    for beta in (1.0, 0.0):  # two line models: the regulariser's run never moves the other's weights
        model = make_model(f"{arch}_line").train()
        opt, gen = sgd(model), torch.Generator().manual_seed(2)
        fns.append(lambda m=model, o=opt, g=gen, b=beta: line_step(m, o, x, y, g, b))
    stock = make_model(arch).train()
    stock_opt = sgd(stock)
    fns.append(lambda: train_step.train_step(stock, stock_opt, x, y))
    timer = rounds(args)
    times = timer.run(fns)
    result = times_result(case, timer, [times[0], times[2]], limit)
    no_reg = statistics.median(times[1]) / statistics.median(times[2])
    result.detail = f"no reg {no_reg:.3f}; {result.detail}"
    return [result]


def case_line_resnet18_b32_64(args) -> list[Result]:
    return line_case("line_resnet18_b32_64", "resnet18", 32, 64, 1.10, args)


def case_line_resnet18_b16_224(args) -> list[Result]:
    return line_case("line_resnet18_b16_224", "resnet18", 16, 224, 1.10, args)


def case_line_vit_tiny_b8_224(args) -> list[Result]:
    return line_case("line_vit_tiny_b8_224", "vit_tiny_patch16_224", 8, 224, 1.10, args)


def case_compiled_line_resnet18_b32_64(args) -> list[Result]:
    """torch.compile of forward + cross-entropy (+ the regulariser for the line; the point is drawn
    outside, a buffer value): compiled resnet18_line / compiled resnet18 (<= 1.15)."""
    x, y = batch(32, 64)
    line, stock = make_model("resnet18_line").train(), make_model("resnet18").train()
    gen = torch.Generator().manual_seed(2)
    line_loss = torch.compile(
        lambda x, y: F.cross_entropy(line(x), y) + subspace_regularizer(line), backend=args.backend
    )
    stock_loss = torch.compile(lambda x, y: F.cross_entropy(stock(x), y), backend=args.backend)
    line_opt, stock_opt = sgd(line), sgd(stock)

    def line_fn() -> None:
        sample_point(line, gen)
        train_step.step_with(line_loss, line_opt, x, y)

    timer = rounds(args)
    fns = [line_fn, lambda: train_step.step_with(stock_loss, stock_opt, x, y)]
    return [ratio_result("compiled_line_resnet18_b32_64", timer, fns, 1.15)]


def loaders(args, size: int = 32, image: int = 64) -> tuple[DataLoader, DataLoader]:
    """(bn_loader, eval_loader): synthetic, 10 classes, neither shuffles."""

    def data(n: int, seed: int) -> TensorDataset:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n * size, 3, image, image, generator=gen)
        return TensorDataset(x, torch.randint(0, 10, (n * size,), generator=gen))

    bn = DataLoader(data(args.bn_batches, 3), batch_size=size)
    return bn, DataLoader(data(args.eval_batches, 4), batch_size=size)


def case_eval_points_resnet18(args) -> list[Result]:
    bn_loader, eval_loader = loaders(args)
    line = make_model("resnet18_line", num_classes=10)
    stock = make_model("resnet18", num_classes=10)

    def evaluate_line() -> None:
        evaluate_points(line, eval_loader, POINTS, bn_loader=bn_loader, bn_batches=args.bn_batches)

    @torch.no_grad()
    def evaluate_stock() -> None:
        for _ in POINTS:
            recalibrate_bn(stock, bn_loader, args.bn_batches)
            stock.eval()
            logits = torch.cat([stock(x) for x, _ in eval_loader])
            logits.argmax(1)

    timer = Rounds(1, max(3, args.repeats // 2), args.max_busy, args.quiet_wait)
    result = ratio_result("eval_points_resnet18", timer, [evaluate_line, evaluate_stock], 1.05)
    result.detail = f"{args.bn_batches} bn + {args.eval_batches} eval batches x 5 points; {result.detail}"
    return [result]


CASES: dict[str, Callable[[argparse.Namespace], list[Result]]] = {
    "line_resnet18_b32_64": case_line_resnet18_b32_64,
    "line_resnet18_b16_224": case_line_resnet18_b16_224,
    "line_vit_tiny_b8_224": case_line_vit_tiny_b8_224,
    "eval_points_resnet18": case_eval_points_resnet18,
    "compiled_line_resnet18_b32_64": case_compiled_line_resnet18_b32_64,
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> None:
    parser = build_parser(__doc__, CASES, repeats=10)
    parser.add_argument("--bn-batches", type=_positive, default=4, help="recalibration batches per point (N)")
    parser.add_argument("--eval-batches", type=_positive, default=4, help="eval batches per point (M)")
    train_step.main(parser, CASES)


if __name__ == "__main__":
    main()
