#!/usr/bin/env bash
# The studies of docs/studies.md: four sweeps on the embedded digits, then their reports in
# docs/studies/. Run from the repository root: bash configs/sweeps/studies.sh
set -euo pipefail
export OMP_NUM_THREADS=1  # two runs at a time on two cores: one thread each
for sweep in study_op_poor study_op_full study_standard study_line; do
    /usr/bin/time -f "$sweep: %e s" python -m timm_overparam.sweep "configs/sweeps/$sweep.yaml" --jobs 2
done
