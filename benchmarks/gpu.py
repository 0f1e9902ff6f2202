"""Over-parameterized vs stock timm models on one GPU: train step (eager, compiled; fp32, bf16), memory, eval.

Run (the defaults: resnet50 at batch 128 and vit_base_patch16_224 at batch 64, 224x224, fp32 and
bf16 eager, bf16 also compiled with inductor, 3 warm-up and 20 timed rounds; NOT run yet on a GPU:
estimated 4.5 to 7.5 minutes on one H200, of which 3 to 5 are the 6 compilations)::

    bash benchmarks/gpu.sh        # the table teed to benchmarks/results/gpu-<gpu name>.txt

    HF_HUB_OFFLINE=1 python benchmarks/gpu.py --archs resnet50 --dtypes bf16 --only train

    HF_HUB_OFFLINE=1 python benchmarks/gpu.py --device cpu --archs test_resnet,test_vit --batch 4 \\
        --image 32 --warmup 1 --repeats 2 --no-compile      # tiny, on the CPU (the tests)

For each architecture and precision, one section of rows. Timings are RATIOS measured in one
process, as train_step.py measures them: the models are built with the same seed, warmed up, then
timed round-robin, one call of each per round with the order reversed every other round; every
call ends with ``torch.cuda.synchronize()`` inside its timing (train_step.py's ``Rounds`` with
``sync``), so the GPU is idle when the next call's clock starts. ``value`` is median(numerator) /
median(denominator); the detail column gives the median of the per-round ratios (``paired``) and
the two medians in ms (``op`` = numerator, ``stock`` = denominator) as context. The CPU-load
rules of the CPU scripts are off by default here (``--max-busy inf --quiet-wait 0``).

Variants (the train rows are all timed in the same rounds):

- ``stock``: ``<arch>``; ``op3``: ``<arch>_op3`` (expanded); ``line``: ``<arch>_line``.
- A train step is train_step.py's (``zero_grad(set_to_none=True)``, forward, cross-entropy,
  backward, ``SGD(momentum=0.9).step()``); the line's is subspace_step.py's ``line_step`` with the
  regulariser (``sample_point``, forward, cross-entropy ``+ 1.0 * subspace_regularizer``), as the
  trainer computes its loss.
- ``c_``: ``torch.compile(model, backend=--backend)``, as ``train.py --torchcompile`` compiles the
  model (accelerate's plugin); cross-entropy, the regulariser and the SGD step stay eager. Only in
  the ``--compile-dtypes`` sections (default bf16: each compilation costs far more than the timing;
  ``--compile-dtypes fp32,bf16`` adds an estimated 3 to 5 minutes).
- ``bf16``: the model's forward under ``torch.autocast(device, torch.bfloat16)`` with float32
  outputs, as accelerate's ``mixed_precision='bf16'`` wraps it (float32 master weights; the loss and
  the regulariser in float32, the backward outside autocast).
- ``mem``: peak training memory of one step (CUDA only): the state kept across steps (parameters,
  buffers, SGD momentum) plus ``torch.cuda.max_memory_allocated()`` above what was allocated before
  the step (after ``reset_peak_memory_stats()``, gradients set to None): the same sum as
  train_step.py's CPU memory case. Target: the stock peak plus three float32 copies (parameter,
  gradient, momentum) of the parameters the variant adds, plus 5% of the stock peak. On the CPU the
  rows are replaced by a note (``train_step.py --only memory`` measures CPU memory with the profiler).
- ``eval``: ``no_grad`` forward in eval mode of ``timm_overparam.collapse(<arch>_op3)`` (collapsed)
  and of the expanded ``<arch>_op3`` against ``<arch>``, timed in their own rounds.

Targets (PASS/MISS): train_step.py's and subspace_step.py's (op3 and line <= 1.10, eval 0.97..1.03)
and issue 16's compiled ones (compiled op3 and line / compiled stock <= 1.15, compiled / eager <= 1).
Each section also prints the seconds of each variant's first call (for ``c_``: the compilation).
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
import train_step  # sibling scripts (benchmarks/ is on sys.path)
from subspace_step import line_step
from torch import nn
from train_step import (
    TABLE_HEADER,
    Result,
    Rounds,
    batch,
    build_parser,
    make_model,
    persistent_bytes,
    sgd,
    table_row,
    times_result,
)

import timm_overparam

BATCH = {"resnet50": 128, "vit_base_patch16_224": 64}  # per architecture; others: --batch or 32
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
TRAIN_LIMIT, COMPILED_LIMIT, EVAL_RANGE, MEMORY_MARGIN = 1.10, 1.15, (0.97, 1.03), 0.05


def autocast_forward(model: nn.Module, device_type: str, dtype: torch.dtype | None) -> nn.Module:
    """Wrap ``model.forward`` in ``torch.autocast(device_type, dtype)`` with float32 outputs, as
    accelerate's mixed precision does (nothing for ``dtype=None``); returns the model."""
    if dtype is not None:
        forward = model.forward

        @functools.wraps(forward)
        def amp_forward(*args, **kwargs):
            with torch.autocast(device_type, dtype):
                out = forward(*args, **kwargs)
            return out.float()

        model.forward = amp_forward
    return model


@functools.cache
def _built(name: str) -> nn.Module:
    return make_model(name)


def fresh_model(name: str) -> nn.Module:
    """A copy of ``make_model(name)`` (seed 0) on the CPU: each model is expanded once per process
    (``vit_base_patch16_224_op3`` takes about 17 s on one slow CPU thread), copied for every use."""
    return copy.deepcopy(_built(name))


def timer(args: argparse.Namespace) -> Rounds:
    """train_step.py's round-robin timer, ending each call with the device's synchronize."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    return Rounds(args.warmup, args.repeats, args.max_busy, args.quiet_wait, sync=sync)


def first_calls(fns: dict[str, Callable[[], None]], sync: Callable[[], None] | None) -> str:
    """Call each fn once (compilation, cuDNN and allocator warm-up happen here): 'name seconds, ...'."""
    seconds = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        seconds[name] = time.perf_counter() - start
    return ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())


def step_memory(step: Callable[[], None], model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Peak bytes of one CUDA train step: the state kept across steps plus the most the step
    allocated above what was allocated before it (gradients set to None first)."""
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return persistent_bytes(model, opt) + torch.cuda.max_memory_allocated() - before


def memory_result(case: str, peak: int, base_peak: int, extra_params: int) -> Result:
    """Peak ratio against the floor (stock peak + 3 float32 copies of the added parameters) + 5%."""
    floor = base_peak + 3 * 4 * extra_params
    limit = (floor + MEMORY_MARGIN * base_peak) / base_peak
    detail = f"{peak / 2**20:.0f} / {base_peak / 2**20:.0f} MiB, floor x{floor / base_peak:.3f}"
    return Result(case, peak / base_peak, f"<= {limit:.2f}", peak / base_peak <= limit, detail)


def section_batch(args: argparse.Namespace, arch: str) -> int:
    """The batch size of ``arch``: --batch, else its default in BATCH, else 32."""
    return args.batch or BATCH.get(arch, 32)


def case_train(args: argparse.Namespace, arch: str, dtype: str) -> list[Result]:
    """Train steps of stock, op3 and line (eager, and compiled for the --compile-dtypes) in one
    round-robin; then one step of each for the memory rows (CUDA only)."""
    device, amp = torch.device(args.device), DTYPES[dtype]
    x, y = (t.to(device) for t in batch(section_batch(args, arch), args.image))
    steps: dict[str, Callable[[], None]] = {}
    held: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    compile_it = args.compile and dtype in args.compile_dtypes
    for compiled in (False, True) if compile_it else (False,):
        for kind, name in (("stock", arch), ("op3", f"{arch}_op3"), ("line", f"{arch}_line")):
            model = autocast_forward(fresh_model(name).to(device).train(), device.type, amp)
            opt = sgd(model)
            run = torch.compile(model, backend=args.backend) if compiled else model
            label = f"c_{kind}" if compiled else kind
            if kind == "line":
                gen = torch.Generator().manual_seed(2)
                steps[label] = functools.partial(line_step, run, opt, x, y, gen, 1.0)
            else:
                steps[label] = functools.partial(train_step.train_step, run, opt, x, y)
            held[label] = (model, opt)
    rounds = timer(args)
    print(f"first calls: {first_calls(steps, rounds.sync)}", flush=True)
    times = dict(zip(steps, rounds.run(list(steps.values())), strict=True))
    pairs = [("op3/stock", "op3", "stock", TRAIN_LIMIT), ("line/stock", "line", "stock", TRAIN_LIMIT)]
    if compile_it:
        pairs += [
            ("c_op3/c_stock", "c_op3", "c_stock", COMPILED_LIMIT),
            ("c_op3/op3", "c_op3", "op3", 1.0),
            ("c_stock/stock", "c_stock", "stock", 1.0),
            ("c_line/c_stock", "c_line", "c_stock", COMPILED_LIMIT),
        ]
    results = [times_result(case, rounds, [times[a], times[b]], limit) for case, a, b, limit in pairs]
    if device.type != "cuda":
        print("mem rows: n/a on cpu (train_step.py --only memory measures CPU memory with the profiler)")
        return results
    peaks = {label: step_memory(steps[label], *held[label]) for label in steps}
    params = {label: sum(p.numel() for p in model.parameters()) for label, (model, _) in held.items()}
    for a, b in (("op3", "stock"), ("line", "stock"), ("c_op3", "c_stock"), ("c_line", "c_stock")):
        if a in peaks:
            results.append(memory_result(f"mem {a}/{b}", peaks[a], peaks[b], params[a] - params[b]))
    return results


def case_eval(args: argparse.Namespace, arch: str, dtype: str) -> list[Result]:
    """``no_grad`` eval forward of collapsed and expanded ``<arch>_op3`` against ``<arch>``."""
    device, amp = torch.device(args.device), DTYPES[dtype]
    x, _ = batch(section_batch(args, arch), args.image)
    x = x.to(device)
    expanded = fresh_model(f"{arch}_op3").to(device).eval()
    models = {
        "collapsed": timm_overparam.collapse(expanded),  # before autocast_forward: a plain copy
        "op3": expanded,
        "stock": fresh_model(arch).to(device).eval(),
    }

    @torch.no_grad()
    def forward(model: nn.Module) -> None:
        model(x)

    fns = [functools.partial(forward, autocast_forward(m, device.type, amp)) for m in models.values()]
    rounds = timer(args)
    times = dict(zip(models, rounds.run(fns), strict=True))
    return [
        times_result(f"eval {a}/stock", rounds, [times[a], times["stock"]], EVAL_RANGE[1], EVAL_RANGE[0])
        for a in ("collapsed", "op3")
    ]


CASES: dict[str, Callable[[argparse.Namespace, str, str], list[Result]]] = {
    "train": case_train,
    "eval": case_eval,
}


def _names(choices: tuple[str, ...] | None = None) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list (each name among ``choices`` when given)."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if choices is not None and n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {choices or 'names'}")
        return names

    return parse


def build_gpu_parser() -> argparse.ArgumentParser:
    """train_step.py's command line, with this script's defaults and options."""
    parser = build_parser(__doc__, CASES, repeats=20)
    parser.set_defaults(warmup=3, max_busy=math.inf, quiet_wait=0.0, threads=None)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument(
        "--archs", type=_names(), default=list(BATCH), help="comma-separated timm architectures"
    )
    parser.add_argument(
        "--batch", type=int, help=f"batch size of every architecture (default {BATCH}, else 32)"
    )
    parser.add_argument("--image", type=int, default=224, help="image side")
    parser.add_argument("--dtypes", type=_names(tuple(DTYPES)), default=list(DTYPES), help="fp32,bf16")
    parser.add_argument(
        "--compile-dtypes",
        type=_names(tuple(DTYPES)),
        default=["bf16"],
        help="the dtypes whose sections also time compiled variants (default bf16; fp32,bf16: an "
        "estimated 3-5 minutes more on an H200)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager variants only")
    return parser


def header(args: argparse.Namespace) -> str:
    """The device, versions and settings the table was measured with."""
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        where = f"{name} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        flags = (
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN "
            f"{torch.backends.cudnn.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}"
        )
    else:
        where = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        flags = f"float32 matmul precision {torch.get_float32_matmul_precision()}"
    dtypes = ",".join(d for d in args.dtypes if d in args.compile_dtypes) if args.compile else ""
    compiled = f"compiled ({args.backend}): {dtypes}" if dtypes else "no compile"
    return (
        f"device: {where}\ntorch {torch.__version__}, timm {timm.__version__}\n"
        f"image {args.image}x{args.image}, warmup {args.warmup}, {args.repeats} repeats, {compiled}; {flags}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, print the header, then one table section per architecture and dtype."""
    parser = build_gpu_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        parser.error("--repeats and --batch must be >= 1, --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --device cpu (with tiny settings) or run on a GPU machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"{header(args)}\n\n{TABLE_HEADER}", flush=True)
    for arch in args.archs:
        for dtype in args.dtypes:
            torch._dynamo.reset()  # a fresh compile cache: the sections never share recompile limits
            t0 = time.perf_counter()
            print(f"== {arch}, batch {section_batch(args, arch)}, {dtype} ==", flush=True)
            for name in args.only or list(CASES):
                for r in CASES[name](args, arch, dtype):
                    print(table_row(r), flush=True)
            print(f"section: {time.perf_counter() - t0:.0f} s", flush=True)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"\nelapsed: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
