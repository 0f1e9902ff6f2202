"""Coverage of timm's architectures by both families: convert, train one step, collapse/extract, load.

For each architecture (all of ``timm.list_models()``, a ``--pattern``, ``--archs`` or a random
``--sample``) and each family (``op``: ``<arch>_op2``; ``line``: ``<arch>_line``), one task in a
worker process:

1. build the base model at a small input size (64x64, or ``img_size=64`` for models with a fixed
   input size; the default size when the small one does not work) and count its parameters
   (architectures above ``--max-params`` are skipped, not counted as passes);
2. build the derived model, draw every all-zero tensor at random (zero-initialised heads, residual
   scales and gates would leave whole branches without gradient, in the stock model as well), run
   one training step on random data (a sampled point and the regulariser for the line) and check
   that every parametrized tensor got a gradient wherever the stock model at the same weights gets
   one (a bias before a softmax gets none in either); the step is clipped to norm 1, lr 0.01;
3. in eval mode, compare the derived model with its collapse (op) or its extracted point (line) and
   with the stock base model loaded strictly from that state_dict (relative error <= 1e-4, float32).

Workers are long-lived (pebble's ProcessPool; timm is imported once per worker, and a worker is
replaced after 20 cases), one thread each, with an address-space bound (``--memory-gb``) and a
time bound per task (``--timeout``); a worker that crashes, hangs or runs out of memory is
replaced and the task is recorded as failed. Rows are appended to the CSV as they finish and a
rerun skips the (arch, family) pairs already there, so an interrupted sweep resumes. ``--report`` writes the markdown summary (docs/coverage.md) from a CSV.

    python benchmarks/coverage.py --out benchmarks/results/coverage.csv          # the whole registry
    python benchmarks/coverage.py --pattern 'convnext*' --out /tmp/convnext.csv
    python benchmarks/coverage.py --sample 300 --seed 0 --out benchmarks/results/coverage.csv
    python benchmarks/coverage.py --report docs/coverage.md --out benchmarks/results/coverage.csv
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import gc
import io
import os
import random
import resource
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = {"op": "op2", "line": "line"}
COLUMNS = ["arch", "family", "module", "status", "reason", "params", "input", "max_rel_err", "seconds"]
SMALL = 64
TOLERANCE = 1e-4
OURS = ("op", "subspace")  # the plugin's own registry modules
RECYCLE = 20  # cases per worker process
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


# ----------------------------------------------------------------------------- inside a worker
def _init_worker(gib: float) -> None:
    """Worker initializer: one thread, and an address-space bound so that allocations fail cleanly.

    glibc serves large blocks from its heap once the mmap threshold has adapted upwards, and the
    heap's address space is not given back: after a few large models a worker would reach the bound
    with little memory in use. A fixed threshold (1 MiB) keeps tensors in mappings that are
    returned on free.
    """
    import ctypes

    import torch

    torch.set_num_threads(1)
    if gib > 0:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _rel_err(out: Any, ref: Any) -> float:
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _logits(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _inputs(arch: str) -> list[tuple[dict[str, Any], int]]:
    """(create_model kwargs, input side) to try in order: small first, then the default size."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    default = cfg.input_size[-1] if cfg is not None else 224
    low = cfg.min_input_size[-1] if cfg is not None and cfg.min_input_size else 0
    fixed = bool(cfg is not None and cfg.fixed_input_size)
    small = ({"img_size": SMALL}, SMALL) if fixed else ({}, max(SMALL, low))
    return [small] if small[1] >= default and not fixed else [small, ({}, default)]


def _derived(arch: str, family: str) -> tuple[Any, dict[str, Any], int, Any]:
    """The derived model at the first input size where it runs (eval forward): model, kwargs, side, batch."""
    import timm
    import torch

    errors = []
    for kwargs, side in _inputs(arch):
        try:
            torch.manual_seed(0)
            model = timm.create_model(f"{arch}_{FAMILIES[family]}", **kwargs).eval()
            x = torch.randn(2, model.pretrained_cfg.get("input_size", (3,))[0], side, side)
            with torch.no_grad():
                model(x)
            return model, kwargs, side, x
        except Exception as e:  # the next size may work
            errors.append(f"{side}: {type(e).__name__}: {e}")
    raise RuntimeError("no input size works: " + " | ".join(errors))


def _params(arch: str) -> int:
    """Parameter count without allocating (meta device); falls back to a real model."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(arch)
    except Exception:
        model = timm.create_model(arch)
    return sum(p.numel() for p in model.parameters())


def check(arch: str, family: str, max_params: int) -> dict[str, Any]:
    """Run one (arch, family) case; returns its CSV row (status ``pass``, ``fail: ...`` or ``skipped: ...``)."""
    start = time.perf_counter()
    row: dict[str, Any] = {"arch": arch, "family": family, "params": "", "input": "", "max_rel_err": ""}
    try:
        row["params"] = params = _params(arch)
        if params > max_params:
            row["status"] = "skipped"
            row["reason"] = f"too large for this machine ({params / 1e6:.1f}M params)"
        else:
            row.update(_check(arch, family))
    except MemoryError:
        row |= {"status": "fail", "reason": "out of memory"}
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "can't allocate memory" in text or "not enough memory" in text:
            row |= {"status": "fail", "reason": "out of memory"}
        else:
            row |= {"status": "fail", "reason": f"{type(e).__name__}: {text}"[:300]}
    gc.collect()  # converted models hold reference cycles: free this case's memory before the next
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _revive(model: Any) -> None:
    """Draw every all-zero tensor at random, effective tensors (through their parametrization) first.

    Zero-initialised heads, residual scales and gates leave whole branches without gradient in the
    first step, in the stock model as well; drawn, every branch is exercised.
    """
    import torch
    from torch.nn.utils import parametrize

    with torch.no_grad():
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    value = getattr(module, name)
                    if value.is_floating_point() and not value.any():  # assigned through right_inverse
                        setattr(module, name, torch.randn_like(value) * 0.1)
        for p in model.parameters():
            if p.is_floating_point() and not p.any():
                p.normal_(0.0, 0.1)


def _stock_name(name: str) -> str:
    """The stock parameter a derived parameter feeds: ``a.parametrizations.weight.0.factors.1.weight`` -> ``a.weight``."""
    if ".parametrizations." not in name:
        return name
    owner, rest = name.split(".parametrizations.", 1)
    return f"{owner}.{rest.split('.', 1)[0]}"


def _dead(model: Any, x: Any, seed: int = 0) -> set[str]:
    """Names of the parameters that get no gradient from one training forward/backward on ``x``."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)  # the same dropout masks and labels for the derived and the stock model
    out = _logits(model(x))
    loss = F.cross_entropy(out, torch.randint(out.shape[-1], (len(x),)))
    if hasattr(model, "subspace_config"):
        import timm_overparam as top

        loss = loss + top.subspace_regularizer(model)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}


def _check(arch: str, family: str) -> dict[str, Any]:
    import timm
    import torch

    import timm_overparam as top

    model, kwargs, side, x = _derived(arch, family)
    if not model.overparam_report.converted:
        return {"status": "fail", "reason": f"nothing converted: {model.overparam_report.summary()}"}
    _revive(model)
    model.train()
    point = None if family == "op" else top.sample_point(model, torch.Generator().manual_seed(0))
    derived = [n for n, _ in model.named_parameters() if ".parametrizations." in n]
    dead = sorted(_dead(model, x) & set(derived))
    if dead:  # fine only where the stock model at the same weights gets no gradient either
        plain = top.collapse(model) if point is None else top.extract_point(model, point)
        plain.zero_grad(set_to_none=True)
        alive = {n for n, _ in plain.named_parameters()} - _dead(plain.train(), x)
        dead = [n for n in dead if _stock_name(n) in alive]  # e.g. a bias before a softmax: none in either
    if dead:
        return {"status": "fail", "reason": f"{len(dead)}/{len(derived)} tensors got no gradient: {dead[0]}"}
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # a bounded step: no model diverges from it
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    model.eval()
    with torch.no_grad():
        if family == "op":
            plain = top.collapse(model)
        else:
            top.set_point(model, 0.3)
            plain = top.extract_point(model, 0.3)
        ref = _logits(model(x))
        err = _rel_err(_logits(plain.eval()(x)), ref)
        stock = timm.create_model(arch, **kwargs).eval()  # fresh: some models cache tensors in eval
        stock.load_state_dict(plain.state_dict(), strict=True)
        err = max(err, _rel_err(_logits(stock(x)), ref))
    row = {"input": f"{side}" + (" img_size" if kwargs else ""), "max_rel_err": f"{err:.3g}"}
    if not torch.isfinite(ref).all() or not err <= TOLERANCE:
        return row | {
            "status": "fail",
            "reason": f"outputs differ by {err:.3g} (relative; limit {TOLERANCE})",
        }
    return row | {"status": "pass", "reason": ""}


# ------------------------------------------------------------------------------- the sweep
def base_architectures() -> dict[str, str]:
    """Every base architecture of timm's registry -> its timm module (the plugin's own names left out)."""
    import timm

    import timm_overparam  # noqa: F401  (registers the derived names, which are then left out)

    return {
        arch: module
        for module in timm.list_modules()
        if module not in OURS
        for arch in timm.list_models(module=module)
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a results CSV (a row cut short by a killed run is dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("seconds") not in (None, "")]


def forget_failures(out: Path, cases: set[tuple[str, str]]) -> int:
    """Drop the failed rows of ``cases`` from ``out`` (rewritten atomically) so that they run again."""
    rows = read_rows(out)
    keep = [r for r in rows if not (r["status"] == "fail" and (r["arch"], r["family"]) in cases)]
    from timm_overparam.core.atomic import write_text_atomic

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(keep)
    write_text_atomic(out, text.getvalue())
    return len(rows) - len(keep)


def sweep(
    archs: list[str],
    modules: dict[str, str],
    out: Path,
    families: list[str],
    workers: int,
    timeout: float,
    memory_gb: float,
    max_params: int,
) -> list[dict[str, str]]:
    """Run every (arch, family) not yet in ``out``; append each row as it finishes. Returns all rows."""
    from pebble import ProcessExpired, ProcessPool

    done = {(r["arch"], r["family"]) for r in read_rows(out)}
    order = random.Random(0).sample(
        archs, len(archs)
    )  # any prefix of an interrupted sweep is a random sample
    todo = [(a, f) for a in order for f in families if (a, f) not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(",".join(COLUMNS) + "\n")
    print(f"{len(todo)} cases to run ({len(done)} already in {out}), {workers} workers", flush=True)
    # a worker is replaced after RECYCLE cases: its address space (bounded) only grows with fragmentation
    with ProcessPool(
        max_workers=workers, max_tasks=RECYCLE, initializer=_init_worker, initargs=(memory_gb,)
    ) as pool:
        futures = {pool.schedule(check, args=(a, f, max_params), timeout=timeout): (a, f) for a, f in todo}
        for i, future in enumerate(as_completed(futures), 1):
            arch, family = futures[future]
            try:
                row = future.result()
            except FutureTimeout:
                row = {
                    "arch": arch,
                    "family": family,
                    "status": "fail",
                    "reason": f"timeout (over {timeout:g} s)",
                }
                row["seconds"] = timeout
            except ProcessExpired as e:  # killed by the kernel or crashed in native code
                row = {
                    "arch": arch,
                    "family": family,
                    "status": "fail",
                    "reason": f"worker died (exit code {e.exitcode})",
                }
                row["seconds"] = ""
            row["module"] = modules.get(arch, "")
            with open(out, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore").writerow(
                    {k: row.get(k, "") for k in COLUMNS} | {"seconds": row.get("seconds") or 0}
                )
            print(f"[{i}/{len(todo)}] {arch} {family}: {row['status']} {row.get('reason', '')}", flush=True)
    return read_rows(out)


# ------------------------------------------------------------------------------- the report
def _rate(counter: Counter) -> str:
    tried = counter["pass"] + counter["fail"]
    return f"{100 * counter['pass'] / tried:.1f}% ({counter['pass']}/{tried})" if tried else "-"


BEGIN, END = "<!-- coverage report: begin -->", "<!-- coverage report: end -->"


def write_report(rows: list[dict[str, str]], out: Path, path: Path) -> None:
    """Put the report between the BEGIN/END markers of ``path`` (text around them is kept), atomically."""
    text = f"{BEGIN}\n{report(rows, out)}{END}\n"
    if path.exists() and BEGIN in (old := path.read_text()) and END in old:
        text = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END) + 1 :]
    from timm_overparam.core.atomic import write_text_atomic

    write_text_atomic(path, text)


def report(rows: list[dict[str, str]], out: Path) -> str:
    """The markdown summary of a results CSV: pass rates per family and per timm module, every failure."""
    import timm
    import torch

    families = sorted({r["family"] for r in rows}, key=list(FAMILIES).index)
    by_family = {f: Counter(r["status"] for r in rows if r["family"] == f) for f in families}
    archs = sorted({r["arch"] for r in rows})
    both = [a for a in archs if all(r["status"] == "pass" for r in rows if r["arch"] == a)]
    under = [a for a in archs if all(r["status"] != "skipped" for r in rows if r["arch"] == a)]
    lines = [
        f"Rows: `{out}`, from `python benchmarks/coverage.py --out {out}` (timm {timm.__version__}, torch",
        f"{torch.__version__}); this summary: `python benchmarks/coverage.py --out {out} --report <this file>`.",
        "A case passes when the derived model (`<arch>_op2` or `<arch>_line`) trains one step with a",
        "gradient on every parametrized tensor wherever the stock model at the same weights gets one, and",
        "its collapse (op) or extracted point (line) and the stock model loaded strictly from that",
        f"state_dict reproduce its eval outputs within {TOLERANCE:g} (relative, float32). Pass rates count",
        "the architectures under the parameter bound; those above it are listed apart.",
        "",
        f"Architectures run: {len(archs)}; under the bound: {len(under)}; passing for both families: "
        f"{len([a for a in both if a in under])} ({100 * len([a for a in both if a in under]) / max(1, len(under)):.1f}%).",
        "",
        "| family | pass | fail | skipped | pass rate (under the bound) |",
        "|---|---|---|---|---|",
    ]
    for f in families:
        c = by_family[f]
        lines.append(f"| {f} | {c['pass']} | {c['fail']} | {c['skipped']} | {_rate(c)} |")
    lines += ["", "### Per timm module", "", "| module | architectures | " + " | ".join(families) + " |"]
    lines.append("|---|---|" + "---|" * len(families))
    per_module: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for r in rows:
        per_module[r["module"]][r["family"]][r["status"]] += 1
    for module in sorted(per_module):
        counts = per_module[module]
        n = max(sum(c.values()) for c in counts.values())
        lines.append(f"| {module} | {n} | " + " | ".join(_rate(counts[f]) for f in families) + " |")
    failures = [r for r in rows if r["status"] == "fail"]
    lines += ["", f"### Failures ({len(failures)})", ""]
    if failures:
        lines += ["| arch | family | reason |", "|---|---|---|"]
        lines += [
            f"| {r['arch']} | {r['family']} | {r['reason']} |"
            for r in sorted(failures, key=lambda r: (r["arch"], r["family"]))
        ]
    else:
        lines.append("None.")
    skipped = sorted({(r["arch"], r["reason"]) for r in rows if r["status"] == "skipped"})
    lines += ["", f"### Skipped ({len(skipped)} architectures)", ""]
    lines += [f"- {arch}: {reason}" for arch, reason in skipped] or ["None."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="benchmarks/results/coverage.csv", help="results CSV (appended, resumed)"
    )
    parser.add_argument("--pattern", default="*", help="fnmatch pattern over architecture names")
    parser.add_argument("--archs", default="", help="comma-separated architectures (instead of --pattern)")
    parser.add_argument("--sample", type=int, default=0, help="a random sample of this many architectures")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--families", default="op,line", help="op, line or both")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument(
        "--memory-gb", type=float, default=10.0, help="address-space bound per worker (0: none)"
    )
    parser.add_argument("--max-params", type=float, default=100e6, help="larger base models are skipped")
    parser.add_argument("--rerun-failed", action="store_true", help="run the failed cases in --out again")
    parser.add_argument("--report", default="", help="write the markdown summary of --out here (no sweep)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report:
        rows = read_rows(out)
        if not rows:
            raise SystemExit(f"no results in {out}: run the sweep first")
        write_report(rows, out, Path(args.report))
        return 0
    families = [f.strip() for f in args.families.split(",")]
    if not set(families) <= set(FAMILIES):
        raise SystemExit(f"--families must name op and/or line, got {args.families!r}")
    modules = base_architectures()
    if args.archs:
        archs = [a.strip() for a in args.archs.split(",")]
        unknown = [a for a in archs if a not in modules]
        if unknown:
            raise SystemExit(f"unknown architectures {unknown}")
    else:
        archs = sorted(a for a in modules if fnmatch.fnmatch(a, args.pattern))
    if args.sample:
        archs = sorted(random.Random(args.seed).sample(archs, min(args.sample, len(archs))))
    if args.rerun_failed and out.exists():
        print(f"{forget_failures(out, {(a, f) for a in archs for f in families})} failed cases to run again")
    rows = sweep(
        archs, modules, out, families, args.workers, args.timeout, args.memory_gb, int(args.max_params)
    )
    chosen = {(a, f) for a in archs for f in families}
    status = Counter(r["status"] for r in rows if (r["arch"], r["family"]) in chosen)
    print(f"{out}: {dict(status)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
