"""The coverage harness (benchmarks/coverage.py) on a fixed, diverse sample: a regression fails CI.

The sample holds the smallest variant of many families and every special layer the plugin has to
handle (StdConv2d, ScaledStdConv2d, Conv2dSame, MixedConv2d, CondConv2d, reparameterizable blocks,
eval-time caches, window attention, recurrent layers); each runs as ``_op2`` and ``_line`` in the harness's workers.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from timm_overparam.expand.parametrization import ExpandProject

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "coverage.py"
SAMPLE = [
    "resnet10t",
    "vit_tiny_patch16_224",
    "convnext_zepto_rms",
    "efficientnet_lite0",
    "mobilenetv3_small_050",
    "regnetx_002",
    "levit_128s",  # attention biases cached in eval mode
    "fastvit_t8",  # reparameterizable blocks
    "eva02_tiny_patch14_224",
    "swinv2_tiny_window8_256",
    "nf_regnet_b0",  # ScaledStdConv2d
    "mixnet_s",  # MixedConv2d
    "tf_mobilenetv3_small_075",  # Conv2dSame
    "efficientnet_cc_b0_4e",  # CondConv2d
    "resnetv2_50x1_bit",  # StdConv2d
    "coat_tiny",
    "sequencer2d_s",  # nn.LSTM: parametrized RNN weights, deep-copied after a step
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def harness(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900
    )


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sample_passes_for_both_families(tmp_path):
    out = tmp_path / "coverage.csv"
    res = harness("--archs", ",".join(SAMPLE), "--out", str(out), "--timeout", "300")
    assert res.returncode == 0, res.stderr[-3000:]
    got = rows(out)
    assert sorted((r["arch"], r["family"]) for r in got) == sorted(
        (a, f) for a in SAMPLE for f in ("op", "line")
    )
    failed = [(r["arch"], r["family"], r["reason"]) for r in got if r["status"] != "pass"]
    assert not failed
    assert all(float(r["max_rel_err"]) <= 1e-4 and int(r["params"]) > 0 and r["module"] for r in got)


@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_resumes(tmp_path):
    out = tmp_path / "c.csv"
    slow = harness(
        "--archs", "resnet10t,regnetx_002", "--families", "op", "--timeout", "0.01", "--out", str(out)
    )
    assert slow.returncode == 0, slow.stderr[-3000:]
    assert {(r["arch"], r["status"], r["reason"]) for r in rows(out)} == {
        ("resnet10t", "fail", "timeout (over 0.01 s)"),
        ("regnetx_002", "fail", "timeout (over 0.01 s)"),
    }
    again = harness("--archs", "resnet10t,regnetx_002", "--families", "op", "--out", str(out))
    assert "0 cases to run (2 already in" in again.stdout  # resumed: nothing to do
    starved = harness("--archs", "resnet10t", "--families", "line", "--memory-gb", "0.5", "--out", str(out))
    assert starved.returncode == 0, starved.stderr[-3000:]
    assert rows(out)[-1]["reason"] in ("out of memory", "worker died (exit code 1)")
    small = harness("--archs", "resnet10t", "--rerun-failed", "--max-params", "1e6", "--out", str(out))
    assert "2 failed cases to run again" in small.stdout
    final = {(r["arch"], r["family"]): r for r in rows(out)}
    assert len(final) == 3 and final["regnetx_002", "op"]["status"] == "fail"
    assert (
        final["resnet10t", "op"]["reason"]
        == final["resnet10t", "line"]["reason"]
        == ("too large for this machine (5.4M params)")
    )
    doc = tmp_path / "coverage.md"
    doc.write_text(
        "# Coverage\n\nkept\n\n<!-- coverage report: begin -->\nold\n<!-- coverage report: end -->\nkept too\n"
    )
    assert harness("--report", str(doc), "--out", str(out)).returncode == 0
    text = doc.read_text()
    assert text.startswith("# Coverage\n\nkept\n") and text.endswith("kept too\n") and "old" not in text
    assert (
        "| op | 0 | 1 | 1 | 0.0% (0/1) |" in text and "| regnetx_002 | op | timeout (over 0.01 s) |" in text
    )


def load_harness():
    spec = importlib.util.spec_from_file_location("coverage_harness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_chain_that_stops_gradients_fails(monkeypatch):
    harness_module = load_harness()
    assert harness_module.check("resnet10t", "op", max_params=10**8)["status"] == "pass"
    compose = ExpandProject.compose
    monkeypatch.setattr(ExpandProject, "compose", lambda self: compose(self).detach())
    row = harness_module.check("resnet10t", "op", max_params=10**8)
    assert row["status"] == "fail"  # composed layers (the early ones at 64x64) lose their gradient
    assert re.fullmatch(
        r"\d+/30 tensors got no gradient: conv1\.0\.parametrizations\.weight\..*", row["reason"]
    )


def test_skips_name_the_parameter_count():
    module = load_harness()
    row = module.check("vit_large_patch16_224", "op", max_params=100_000_000)  # counted on the meta device
    assert (row["status"], row["reason"], row["params"]) == (
        "skipped",
        "too large for this machine (304.3M params)",
        304326632,
    )
    with pytest.raises(SystemExit, match=r"unknown architectures \['resnet9000'\]"):
        module.main(["--archs", "resnet9000", "--out", "unused.csv"])
