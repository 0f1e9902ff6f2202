#!/usr/bin/env bash
# The depth-limit reproductions of docs/depth_limit.md ("Reproductions"), on CPU, from the
# repository root: bash configs/depth_limit/reproduce.sh   (figures go to docs/depth_limit/)
set -euo pipefail
out=output/depth_limit figs=docs/depth_limit
mkdir -p "$figs"
sgd=(--opt sgd --momentum 0 --weight-decay 0 --warmup-epochs 0)

# 1. regression (the seed README's example: Constant data, N = 10,000, full batch, L = 128, dim 1):
#    p-variation and Omega(t) logged per update, Omega(t) fitted
python train.py --model depth_limit_resnet --dataset synthetic/constant --task regression --p-loss 2 \
    --synthetic-samples 10000 -b 9000 --model-kwargs L=128 dim=1 alpha=0.75 gamma=1.0 init=constant \
    augmentation=skip "${sgd[@]}" --lr 9.0 --sched none --epochs 25 --pvar 2.0 --store-grad \
    --output "$out" --experiment constant-L128
python -m timm_overparam.research.curve_fit "$out/constant-L128" --infer-shift --out "$figs/omega_fit_constant.png"

# 2. classification on the embedded digits (8x8 = 64 inputs), --dynamic-lr
python train.py --model depth_limit_resnet --img-size 8 --model-kwargs L=100 dim=15 alpha=0.75 \
    init=ntrunc img_size=8 "${sgd[@]}" --lr 9.0 --sched none --epochs 10 -b 64 --smoothing 0 \
    --pvar 2 --dynamic-lr --store-grad --output "$out" --experiment digits-L100
python -m timm_overparam.research.curve_fit "$out/digits-L100" --infer-shift --out "$figs/omega_fit_digits.png"
python -m timm_overparam.research.landscape render "$out/digits-L100" --steps 21 --batches 2 \
    --out "$out/digits-L100/surface.npy"
python -m timm_overparam.research.landscape plot "$out/digits-L100/surface.npy" --out "$figs/landscape_digits.png"

# 3. the weights' regularity against depth: Sin regression at L = 16, 64, 256, three seeds each
for L in 16 64 256; do
    for seed in 0 1 2; do
        python train.py --model depth_limit_resnet --dataset synthetic/sin --task regression \
            --synthetic-samples 20000 -b 18000 --model-kwargs L=$L dim=4 alpha=0.75 init=ntrunc \
            "${sgd[@]}" --lr 9.0 --sched none --epochs 50 --seed $seed --output "$out/paths" \
            --experiment "L$L-seed$seed"
    done
done
python -m timm_overparam.research.paths norm "$out/paths" --beta 0.75 --pvar 2 --out "$figs/path_norm.png"
python -m timm_overparam.research.paths weights "$out/paths/L256-seed0" --entries 0,0 1,2 3,3 --beta 0.75 \
    --out "$figs/path_weights.png"
