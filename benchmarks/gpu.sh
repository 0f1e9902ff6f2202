#!/usr/bin/env bash
# The GPU speed table: benchmarks/gpu.py with its defaults on this machine's GPU (cuda:0), the
# table teed to benchmarks/results/gpu-<gpu name slug>.txt (e.g. gpu-nvidia-h200.txt).
#
#   bash benchmarks/gpu.sh                      # about 5-6 minutes on one H200 (estimate)
#   bash benchmarks/gpu.sh --archs resnet50     # extra arguments go to gpu.py
#
# Python: $PYTHON, else the repository's .venv/bin/python, else python3.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
export HF_HUB_OFFLINE=1

name="$("$python" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device (on the CPU run benchmarks/gpu.py --device cpu with tiny settings)")
print(torch.cuda.get_device_name(0))')"
slug="$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')"
mkdir -p "$here/results"
out="$here/results/gpu-${slug:-unknown}.txt"
echo "gpu.sh: $name -> $out" >&2
"$python" "$here/gpu.py" "$@" | tee "$out"
