"""The benchmark scripts' per-layer case on a tiny model: it times every chain-capable layer and
leaves each layer's own choice of form in place."""

import argparse
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from timm_overparam.expand.cost import chain_cost, composed_cost

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def load_train_step(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_per_layer_case_times_every_chain_layer_and_restores_the_choice(monkeypatch):
    bench = load_train_step(monkeypatch)
    built = {}
    make_model = bench.make_model

    def keep(name, *a, **kw):
        built["model"] = make_model(name, *a, **kw)
        return built["model"]

    monkeypatch.setattr(bench, "make_model", keep)
    args = argparse.Namespace(warmup=0, repeats=1, max_busy=1.0, quiet_wait=0.0, threads=1)
    (result,) = bench.per_layer_case("tiny", "test_resnet", 4, 48, args)
    model = built["model"]
    chains = {
        name: m
        for name, m in model.named_modules()
        if hasattr(m, "parametrizations") and m.parametrizations.weight[0].chain_capable
    }
    n = int(re.match(r"(\d+) layers, (\d+) picked", result.detail).group(1))
    assert n == len(chains) > 3 and result.value >= 1.0
    x = torch.randn(4, 3, 48, 48)
    shapes = {n: s for n, _, s in bench._chain_layers(model, x)}
    for name, m in chains.items():  # the forced forms are gone: the cost model's choice is back
        chain = m.parametrizations.weight[0]
        key = tuple(shapes[name])
        assert chain._mode[key] == (chain_cost(chain.plan, key) < composed_cost(chain.plan, key))


GPU_SCRIPT = SCRIPT.parent / "gpu.py"
TINY = ["--device", "cpu", "--batch", "4", "--image", "32", "--threads", "1"]


def gpu_sections(out: str) -> dict[tuple[str, str], dict[str, float]]:
    """gpu.py's table: {(arch, dtype): {row: value}}."""
    chunks = re.split(r"^== (\S+), batch \d+, (\w+) ==$", out, flags=re.M)
    return {
        (arch, dtype): {
            m[1]: float(m[2])
            for m in re.finditer(
                r"^((?:mem |eval )?\w+/\w+)\s+(\S+)\s+(?:<= )?\S+\s+(?:PASS|MISS) ", chunk, re.M
            )
        }
        for arch, dtype, chunk in zip(chunks[1::3], chunks[2::3], chunks[3::3], strict=True)
    }


def test_gpu_script_on_the_cpu_prints_every_row_with_a_finite_ratio():
    """The CPU run of the tests' command (eager only): every section, every row, a note for memory."""
    tiny = [*TINY, "--archs", "test_resnet,test_vit", "--warmup", "1", "--repeats", "2", "--no-compile"]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(GPU_SCRIPT), *tiny], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    sections = gpu_sections(done.stdout)
    rows = ["op3/stock", "line/stock", "eval collapsed/stock", "eval op3/stock"]
    assert list(sections) == [(a, d) for a in ("test_resnet", "test_vit") for d in ("fp32", "bf16")]
    for values in sections.values():
        assert list(values) == rows and all(math.isfinite(v) and v > 0 for v in values.values())
    assert done.stdout.count("mem rows: n/a on cpu") == 4
    assert "device: cpu" in done.stdout and "no compile" in done.stdout and "elapsed:" in done.stdout


def test_gpu_script_compiles_the_three_models_of_the_compile_dtypes_only(monkeypatch, capsys):
    """The compiled rows' plumbing, with torch.compile replaced by a recorder (no compilation)."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run: it imports train_step beside it
    spec = importlib.util.spec_from_file_location("gpu_bench", GPU_SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    compiled = []

    def record(model, backend):
        compiled.append((type(model).__name__, backend))
        return model

    monkeypatch.setattr(torch, "compile", record)
    bench.main([*TINY, "--archs", "test_resnet", "--warmup", "0", "--repeats", "1", "--only", "train"])
    sections = gpu_sections(capsys.readouterr().out)
    assert [len(compiled), {b for _, b in compiled}] == [3, {"inductor"}]
    assert list(sections[("test_resnet", "fp32")]) == ["op3/stock", "line/stock"]
    compiled_rows = ["c_op3/c_stock", "c_op3/op3", "c_stock/stock", "c_line/c_stock"]
    assert list(sections[("test_resnet", "bf16")]) == ["op3/stock", "line/stock", *compiled_rows]
    assert all(math.isfinite(v) for s in sections.values() for v in s.values())


def test_gpu_sh_is_bash_that_tees_gpu_py_to_a_results_file_named_after_the_gpu():
    script = GPU_SCRIPT.with_suffix(".sh")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert '"$here/gpu.py" "$@" | tee "$out"' in text and "results/gpu-${slug" in text
    assert "torch.cuda.get_device_name(0)" in text and "set -euo pipefail" in text


def test_precision_script_measures_the_collapse_check_within_its_tolerances(monkeypatch):
    """benchmarks/precision.py on a small op model: exact in float32, inside the --amp limit in low precision."""
    path = SCRIPT.with_name("precision.py")
    spec = importlib.util.spec_from_file_location("precision_bench", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    errors = bench.measure("test_resnet_op2", "cpu")
    assert set(errors) == {"float32", "bfloat16", "float16"}
    assert errors["float32"] <= 1e-5  # the tests' float32 bound on collapse
    assert (
        0 < errors["float16"] < 5e-2 and 0 < errors["bfloat16"] < 5e-2
    )  # rounding shows, within --amp's limit
