"""benchmarks/lab.py on tiny settings (--quick): both experiments, vectorised vs loop, metrics matched."""

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lab.py"


def load_lab_benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # as when run: it imports train_step beside it
    spec = importlib.util.spec_from_file_location("lab_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_quick_run_of_both_experiments_passes_and_matches_every_restart(monkeypatch, tmp_path, capsys):
    bench = load_lab_benchmark(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run folders go under tmp_path
    threads = torch.get_num_threads()
    try:  # one thread: no 2-thread OpenMP stalls while other processes share the cores
        status = bench.main(["--quick", "--quiet-wait", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert status == 0, out
    rows = [line.split() for line in out.splitlines()]
    table = {row[0]: row for row in rows if row and row[0] in ("pattern", "boolnet")}
    assert set(table) == {"pattern", "boolnet"} and all(row[-1] == "PASS" for row in table.values())
    # pattern: 3 models x 2 sizes x 8 restarts; boolnet: 2 models x 2 sizes x 8 restarts, all looped
    assert "PASS pattern: matched restarts 48/48" in out
    assert "PASS boolnet: matched restarts 32/32" in out
    assert "FAIL" not in out
