#!/usr/bin/env bash
# The studies of docs/studies.md: four sweeps on the embedded digits, then their reports in
# docs/studies/. Run from the repository root: bash configs/sweeps/studies.sh
set -euo pipefail
export OMP_NUM_THREADS=1  # two runs at a time on two cores: one thread each
for sweep in study_op_poor study_op_full study_standard study_line; do
    /usr/bin/time -f "$sweep: %e s" python -m timm_overparam.sweep "configs/sweeps/$sweep.yaml" --jobs 2
done
compare() { python -m timm_overparam.compare "$@"; }
for data in poor full; do  # 1. expand-and-project: accuracy and effective rank against depth
    compare "output/sweeps/study_op_$data" --group-by model --metric top1 --out "docs/studies/op_$data"
done
for noise in 0.0 0.2 0.4; do  # 2. line against standard training, each point and the ensemble
    for metric in top1 ece; do
        compare output/sweeps/study_standard output/sweeps/study_line --points --group-by model \
            --filter "label_noise=$noise" --metric "$metric" --out "docs/studies/line_noise$noise/$metric"
    done
done
# the line's accuracy along its points (ensembles marked), one curve per noise level
compare output/sweeps/study_line --group-by label_noise --metric top1 --out docs/studies/line_points
