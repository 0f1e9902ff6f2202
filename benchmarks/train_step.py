"""Over-parameterized vs stock timm models on the CPU: train step, peak memory, eval, collapse.

Run (5 to 10 minutes on 2 quiet cores with the defaults; longer while other processes are busy)::

    HF_HUB_OFFLINE=1 python benchmarks/train_step.py --threads 2 --repeats 15

    HF_HUB_OFFLINE=1 python benchmarks/train_step.py --only resnet18_b32_64 --repeats 20

Every timing is a RATIO measured in one process: the expanded model and its stock model are built
with the same seed (``init='preserve'``: they compute the same function), warmed up, then timed
round-robin, one step of each per round with the order alternating between rounds, so that load
from other processes falls on both alike. Before each round the script waits (``--quiet-wait``
seconds at most) until other processes use at most ``--max-busy`` of the CPUs (read from
/proc/stat), and a round during which they used more is dropped and run again, at most
``--repeats`` times (rounds kept busy after that are flagged BUSY in the detail column): when
another process wakes up, 2-thread OpenMP kernels stall for whole scheduler slices and small kernels
suffer far more than big ones, which biases the ratio either way by far more than the effects
measured here. ``ratio`` is median(expanded) / median(stock); the detail column also gives the
median of the per-round ratios (``paired``). Absolute times are shown only as context. On a
shared 2-core VM, quiet runs of unchanged code still differ by about +-4% in the train-step
ratios, so a value within a few percent of its target is not a decided PASS or MISS: run twice.

A train step is ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward and
``SGD(momentum=0.9).step()``.

Peak training memory is counted exactly, not sampled: the profiler's memory events
(``profile_memory=True``) report every allocation and release of PyTorch's CPU allocator, so the
running sum over one step, started with the gradients set to None, is the step's transient peak
(activations, composed weights, gradients, optimizer temporaries). Added to it is the state that
lives across steps (parameters, buffers, SGD momentum), summed from the tensors. Each model is
measured in a fresh ``spawn`` subprocess: the allocator's table of tracked blocks then starts
empty, so no release inside the profiled step is matched to a stale entry of an earlier session. Allocations made outside PyTorch's allocator (oneDNN scratch
memory) are not counted, for either model. The floor of an expanded model is the stock peak plus
three copies (parameter, gradient, momentum) of the parameters it adds; what it uses above that
floor is its activation overhead, reported as a fraction of the stock peak.

Cases (``--only NAME``):

- ``resnet18_b32_64``, ``resnet18_b16_224``, ``vit_tiny_b8_224``: train step ``<arch>_op3 / <arch>``.
- ``memory``: resnet18_op3 with ``op_hidden`` 'min' and 'out' at both resnet18 shapes.
- ``eval_resnet50``: ``no_grad`` eval forward of resnet50_op3 / resnet50, batch 8, 224x224.
- ``collapse_resnet50``: seconds for ``timm_overparam.collapse(resnet50_op4)`` (a copy).
- ``compiled_resnet18_b32_64``: ``torch.compile`` (``--backend``, default inductor) of forward +
  cross-entropy: compiled resnet18_op3 / compiled resnet18, compiled / eager resnet18_op3 and
  compiled / eager resnet18.
- ``per_layer_resnet18_b32_64``, ``per_layer_resnet18_b16_224``, ``per_layer_vit_tiny_b8_224``:
  every chain-capable layer of ``<arch>_op3`` at its input shape in that model, forward + backward
  timed composed and as a chain; the cost model's choices against the faster form of each layer.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's log lines off stderr

import timm
import torch
import torch.nn.functional as F
from torch import nn

import timm_overparam
from timm_overparam.expand.convert import is_expanded


@dataclass
class Result:
    """One table line."""

    case: str
    value: float
    target: str
    ok: bool
    detail: str = ""


def make_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def batch(size: int, image: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, image, image, generator=gen), torch.randint(0, 1000, (size,), generator=gen)


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds every process has used, CPU seconds this process has used); Linux only."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return math.nan, math.nan
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait (steal counts as busy)
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_busy(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run fn: (its value, wall seconds, share of all CPUs other processes used meanwhile; nan off Linux).

    Example: ``others_busy(lambda: time.sleep(0.5))[2]``
    """
    all0, own0 = cpu_seconds()
    start = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - start
    all1, own1 = cpu_seconds()
    return value, wall, ((all1 - all0) - (own1 - own0)) / (wall * (os.cpu_count() or 1))


def wait_quiet(max_busy: float, seconds: float, sample: float = 0.2) -> float:
    """Wait (``seconds`` at most, in ``sample``-second looks) until other processes use at most
    ``max_busy`` of the CPUs; returns the last share seen (nan off Linux, or seconds <= 0: no wait).

    Example: ``wait_quiet(0.05, 30.0)``
    """
    if seconds <= 0:
        return math.nan
    deadline = time.perf_counter() + seconds
    share = others_busy(lambda: time.sleep(sample))[2]
    while share > max_busy and time.perf_counter() < deadline:
        share = others_busy(lambda: time.sleep(sample))[2]
    return share


class Rounds:
    """Round-robin timing that waits for, and keeps, rounds in which the machine was quiet.

    On a shared machine another process that wakes up mid-call stalls our OpenMP threads for
    whole scheduler slices, which is far from proportional to the work. So before each round this
    waits (up to ``quiet_wait`` seconds) until other processes use at most ``max_busy`` of the
    CPUs, and a round during which they used more is dropped and run again, up to ``repeats``
    times; after that busy rounds are kept and counted in ``kept_busy``. With ``sync`` (a device's
    synchronize, e.g. ``torch.cuda.synchronize``) every call, warm-up included, ends with it inside
    its timing, so the device is idle when the next call's clock starts.
    """

    def __init__(
        self,
        warmup: int,
        repeats: int,
        max_busy: float,
        quiet_wait: float = 30.0,
        sync: Callable[[], None] | None = None,
    ) -> None:
        self.warmup, self.repeats, self.max_busy, self.quiet_wait = warmup, repeats, max_busy, quiet_wait
        self.sync = sync  # e.g. torch.cuda.synchronize: the device's queued work is part of each call
        self.dropped = self.kept_busy = 0

    def _call(self, fn: Callable[[], None]) -> None:
        """fn(), then ``sync()`` (if given) so that the clock stops when the device is done."""
        fn()
        if self.sync is not None:
            self.sync()

    def run(self, fns: list[Callable[[], None]]) -> list[list[float]]:
        """Seconds per call of each fn, the fns called in turn (order alternating each round)."""
        for r in range(self.warmup):
            for fn in fns if r % 2 else fns[::-1]:
                self._call(fn)
        times: list[list[float]] = [[] for _ in fns]
        r = 0
        while len(times[0]) < self.repeats:
            order = list(range(len(fns)))
            if r % 2:
                order.reverse()
            r += 1
            wait_quiet(self.max_busy, self.quiet_wait)
            got, busy = {}, 0.0
            for i in order:
                _, got[i], share = others_busy(functools.partial(self._call, fns[i]))
                busy = max(busy, share)
            if busy > self.max_busy:  # nan (no /proc/stat) compares False: kept
                if self.dropped < self.repeats:
                    self.dropped += 1
                    continue
                self.kept_busy += 1
            for i, dt in got.items():
                times[i].append(dt)
        return times

    def summary(self) -> str:
        busy = f", {self.kept_busy} BUSY rounds kept" if self.kept_busy else ""
        return f"{self.repeats} reps ({self.dropped} busy dropped{busy})"


def rounds(args: argparse.Namespace) -> Rounds:
    return Rounds(args.warmup, args.repeats, args.max_busy, args.quiet_wait)


def ratio_result(case: str, timer: Rounds, fns: list, limit: float, lower: float | None = None) -> Result:
    """fns = [expanded, stock]: ratio of median times against ``<= limit`` (or ``lower..limit``)."""
    return times_result(case, timer, timer.run(fns), limit, lower)


def times_result(
    case: str, timer: Rounds, times: list[list[float]], limit: float, lower: float | None = None
) -> Result:
    """``ratio_result`` for times already measured by ``timer``: ``times = [expanded, stock]``."""
    med_op, med_base = statistics.median(times[0]), statistics.median(times[1])
    value = med_op / med_base
    paired = statistics.median(a / b for a, b in zip(times[0], times[1], strict=True))
    if lower is None:
        target, ok = f"<= {limit:.2f}", value <= limit
    else:
        target, ok = f"{lower:.2f}..{limit:.2f}", lower <= value <= limit
    spread = (max(times[1]) - min(times[1])) / med_base
    detail = (
        f"paired {paired:.3f}; op {med_op * 1e3:.0f} ms / stock {med_base * 1e3:.0f} ms; "
        f"{timer.summary()}, stock spread {spread:.0%}"
    )
    return Result(case, value, target, ok, detail)


def train_case(case: str, arch: str, size: int, image: int, limit: float, args) -> list[Result]:
    x, y = batch(size, image)
    fns = []
    for name in (f"{arch}_op3", arch):
        model = make_model(name).train()
        opt = sgd(model)
        fns.append(lambda m=model, o=opt: train_step(m, o, x, y))
    return [ratio_result(case, rounds(args), fns, limit)]


def case_resnet18_b32_64(args) -> list[Result]:
    return train_case("resnet18_b32_64", "resnet18", 32, 64, 1.20, args)


def case_resnet18_b16_224(args) -> list[Result]:
    return train_case("resnet18_b16_224", "resnet18", 16, 224, 1.10, args)


def case_vit_tiny_b8_224(args) -> list[Result]:
    return train_case("vit_tiny_b8_224", "vit_tiny_patch16_224", 8, 224, 1.10, args)


def compiled_loss(model: nn.Module, backend: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torch.compile of forward + cross-entropy (the backward comes compiled with it)."""
    return torch.compile(lambda x, y: F.cross_entropy(model(x), y), backend=backend)


def step_with(loss_fn: Callable, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss_fn(x, y).backward()
    opt.step()


def case_compiled_resnet18_b32_64(args) -> list[Result]:
    """compiled resnet18_op3 / compiled resnet18 (<= 1.15), compiled / eager resnet18_op3 (<= 1), and
    compiled / eager resnet18 (<= 1: whether the backend speeds this step up at all), one round-robin."""
    x, y = batch(32, 64)
    fns = []
    for name, compile_it in (
        ("resnet18_op3", True),
        ("resnet18", True),
        ("resnet18_op3", False),
        ("resnet18", False),
    ):
        model = make_model(name).train()
        opt = sgd(model)
        loss_fn = (
            compiled_loss(model, args.backend)
            if compile_it
            else (lambda x, y, m=model: F.cross_entropy(m(x), y))
        )
        fns.append(lambda f=loss_fn, o=opt: step_with(f, o, x, y))
    timer = rounds(args)
    times = timer.run(fns)
    return [
        times_result("compiled_resnet18_b32_64", timer, [times[0], times[1]], 1.15),
        times_result("compiled_vs_eager_op3", timer, [times[0], times[2]], 1.0),
        times_result("compiled_vs_eager_resnet18", timer, [times[1], times[3]], 1.0),
    ]


def case_eval_resnet50(args) -> list[Result]:
    x, _ = batch(8, 224)
    fns = []
    for name in ("resnet50_op3", "resnet50"):
        model = make_model(name).eval()

        def forward(m=model) -> None:
            with torch.no_grad():
                m(x)

        fns.append(forward)
    return [ratio_result("eval_resnet50", rounds(args), fns, 1.03, lower=0.97)]


def case_collapse_resnet50(args) -> list[Result]:
    model = make_model("resnet50_op4")
    timer = Rounds(1, max(3, args.repeats // 2), args.max_busy, args.quiet_wait)
    times = timer.run([lambda: timm_overparam.collapse(model)])[0]
    value = statistics.median(times)
    detail = f"median; min {min(times):.3f} s, max {max(times):.3f} s; {timer.summary()}"
    return [Result("collapse_resnet50", value, "< 1 s", value < 1.0, detail)]


# --------------------------------------------------------------------------------------- per layer
def _chain_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Size]]:
    """Every expanded layer that may run as a chain, with its input shape in a forward of ``x``."""
    found: dict[str, tuple[str, nn.Module, torch.Size]] = {}

    def record(name: str, module: nn.Module, inputs: tuple) -> None:
        found.setdefault(name, (name, module, inputs[0].shape))

    hooks = [
        m.register_forward_pre_hook(functools.partial(record, name))
        for name, m in model.named_modules()
        if is_expanded(m) and m.parametrizations.weight[0].chain_capable
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return list(found.values())


def per_layer_case(case: str, arch: str, size: int, image: int, args) -> list[Result]:
    """Each chain-capable layer's forward + backward timed composed and as a chain, side by side.

    ``value``: the summed time of the cost model's choices over the summed time of the faster
    form of each layer (1.0 = it always picked the faster one); the detail gives the same sum with
    one form forced everywhere and the layers where the choice was the slower form.
    """
    model = make_model(f"{arch}_op3").train()
    x, _ = batch(size, image)
    timer = rounds(args)
    sums = {"choice": 0.0, "best": 0.0, "composed": 0.0, "chain": 0.0}
    misses = []
    layers = _chain_layers(model, x)
    for name, module, shape in layers:
        chain, key = module.parametrizations.weight[0], tuple(shape)
        choice = chain.prefers_chain(shape)
        inp = torch.randn(shape, requires_grad=True)
        with torch.no_grad():
            grad = torch.randn_like(module(inp))

        def step(as_chain: bool, m=module, c=chain, k=key, inp=inp, grad=grad) -> None:
            c._mode[k] = as_chain  # force the form for this input shape
            m.zero_grad(set_to_none=True)
            inp.grad = None
            m(inp).backward(grad)

        composed, as_chain = (
            statistics.median(t) for t in timer.run([lambda: step(False), lambda: step(True)])
        )
        chain._mode[key] = choice
        picked = as_chain if choice else composed
        sums["choice"] += picked
        sums["best"] += min(composed, as_chain)
        sums["composed"] += composed
        sums["chain"] += as_chain
        if picked > min(composed, as_chain):
            misses.append(
                f"{name} {'chain' if choice else 'composed'} x{picked / min(composed, as_chain):.2f}"
            )
    value = sums["choice"] / sums["best"]
    detail = (
        f"{len(layers)} layers, {len(layers) - len(misses)} picked the faster form; all composed "
        f"x{sums['composed'] / sums['best']:.2f}, all chain x{sums['chain'] / sums['best']:.2f}; "
        f"slower picks: {', '.join(misses) or 'none'}"
    )
    return [Result(case, value, "<= 1.05", value <= 1.05, detail)]


def case_per_layer_resnet18_b32_64(args) -> list[Result]:
    return per_layer_case("per_layer_resnet18_b32_64", "resnet18", 32, 64, args)


def case_per_layer_resnet18_b16_224(args) -> list[Result]:
    return per_layer_case("per_layer_resnet18_b16_224", "resnet18", 16, 224, args)


def case_per_layer_vit_tiny_b8_224(args) -> list[Result]:
    return per_layer_case("per_layer_vit_tiny_b8_224", "vit_tiny_patch16_224", 8, 224, args)


# ------------------------------------------------------------------------------------------ memory
def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def persistent_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the training state that lives across steps: parameters, buffers, optimizer state."""
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers()) + _tensor_bytes(state)


def peak_train_memory(name: str, hidden: str | None, size: int, image: int, threads: int) -> dict:
    """Peak bytes of one train step (run in a fresh subprocess), with the parameter count."""
    torch.set_num_threads(threads)
    kwargs = {} if hidden is None else {"op_hidden": hidden}
    model = make_model(name, **kwargs).train()
    opt = sgd(model)
    x, y = batch(size, image)
    train_step(model, opt, x, y)  # creates the momentum buffers, fixes the chain/composed choices
    opt.zero_grad(set_to_none=True)
    persistent = persistent_bytes(model, opt)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        train_step(model, opt, x, y)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    transient = max(itertools.accumulate(n for _, n in events), default=0)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "peak": persistent + transient}


def measure_in_subprocess(*job) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(peak_train_memory, *job).result()


def case_memory(args) -> list[Result]:
    results = []
    for size, image in ((32, 64), (16, 224)):
        base = measure_in_subprocess("resnet18", None, size, image, args.threads)
        for hidden in ("min", "out"):
            op = measure_in_subprocess("resnet18_op3", hidden, size, image, args.threads)
            extra = op["params"] - base["params"]
            floor = base["peak"] + 3 * 4 * extra  # fp32 parameter + gradient + momentum
            overhead = (op["peak"] - floor) / base["peak"]
            detail = (
                f"params x{op['params'] / base['params']:.3f}, peak x{op['peak'] / base['peak']:.3f} "
                f"({op['peak'] / 2**20:.0f} / {base['peak'] / 2**20:.0f} MiB), "
                f"floor {floor / 2**20:.0f} MiB"
            )
            case = f"memory_{hidden}_b{size}_{image}"
            results.append(Result(case, overhead, "< 0.05", overhead < 0.05, detail))
    return results


CASES: dict[str, Callable[[argparse.Namespace], list[Result]]] = {
    "resnet18_b32_64": case_resnet18_b32_64,
    "resnet18_b16_224": case_resnet18_b16_224,
    "vit_tiny_b8_224": case_vit_tiny_b8_224,
    "memory": case_memory,
    "eval_resnet50": case_eval_resnet50,
    "collapse_resnet50": case_collapse_resnet50,
    "compiled_resnet18_b32_64": case_compiled_resnet18_b32_64,
    "per_layer_resnet18_b32_64": case_per_layer_resnet18_b32_64,
    "per_layer_resnet18_b16_224": case_per_layer_resnet18_b16_224,
    "per_layer_vit_tiny_b8_224": case_per_layer_vit_tiny_b8_224,
}


def build_parser(doc: str, cases: dict, repeats: int = 15) -> argparse.ArgumentParser:
    """The command line of a benchmark script with these cases (also used by subspace_step.py)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=sorted(cases), action="append", help="run only this case (repeatable)"
    )
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per case after warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.05,
        help="drop and rerun a round in which other processes used more than this share of the CPUs",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait before each round for other processes to go quiet (0: do not wait)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled cases")
    return parser


TABLE_HEADER = f"{'case':24s} {'value':>7s}  {'target':10s} {'result':6s} detail"


def table_row(r: Result) -> str:
    """One line of the table under ``TABLE_HEADER``: case, value, target, PASS/MISS, detail."""
    return f"{r.case:24s} {r.value:7.3f}  {r.target:10s} {'PASS' if r.ok else 'MISS':6s} {r.detail}"


def main(parser: argparse.ArgumentParser | None = None, cases: dict | None = None) -> None:
    """Parse the command line, run the chosen cases and print the table (defaults: this script's)."""
    parser = parser or build_parser(__doc__, CASES)
    cases = cases or CASES
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, {args.repeats} repeats"
    )
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"note: load average {load:.1f} before starting: other processes share the CPU")
    print(TABLE_HEADER, flush=True)
    for name in args.only or list(cases):
        for r in cases[name](args):
            print(table_row(r), flush=True)


if __name__ == "__main__":
    main()
