"""Import cost of the plugin: the extra time of ``import timm_overparam`` over ``import timm``.

Each measurement is a fresh interpreter that imports the module and reports the seconds the import
took (``time.perf_counter`` around it, so interpreter start-up is left out); the two imports
alternate, and the medians of ``--runs`` pairs are compared with the target (0.15 s extra).

    python benchmarks/import_time.py --runs 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

TARGET_S = 0.15
SNIPPET = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    """Seconds ``import <module>`` takes in a fresh interpreter (start-up excluded).

    Example: ``import_seconds("timm")``
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", SNIPPET.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(out.stdout.strip().splitlines()[-1])


def measure(runs: int) -> dict[str, float]:
    """Median import seconds of timm and timm_overparam over ``runs`` alternating pairs, and the extra.

    Example: ``measure(5)["extra_s"]``
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    import_seconds("timm_overparam")  # warm the file cache (and write bytecode) before timing
    timm_s, plugin_s = [], []
    for _ in range(runs):
        timm_s.append(import_seconds("timm"))
        plugin_s.append(import_seconds("timm_overparam"))
    t, p = statistics.median(timm_s), statistics.median(plugin_s)
    return {"timm_s": t, "timm_overparam_s": p, "extra_s": p - t, "ratio": p / t}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=11, help="alternating measurement pairs (median)")
    args = parser.parse_args()
    r = measure(args.runs)
    verdict = "within" if r["extra_s"] <= TARGET_S else "OVER"
    print(
        f"import timm: {r['timm_s']:.3f} s, import timm_overparam: {r['timm_overparam_s']:.3f} s "
        f"(median of {args.runs}, {os.cpu_count()} cpus)\n"
        f"extra: {r['extra_s']:.3f} s (ratio {r['ratio']:.2f}); target <= {TARGET_S} s: {verdict}"
    )


if __name__ == "__main__":
    main()
