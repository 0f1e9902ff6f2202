"""The benchmark scripts' per-layer case on a tiny model: it times every chain-capable layer and
leaves each layer's own choice of form in place."""

import argparse
import importlib.util
import re
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
