#!/usr/bin/env bash
# Every run of docs/exploration.md, in order (about 35 minutes on 2 quiet CPU cores; run nothing
# else meanwhile: 2-thread kernels this small stall when another process shares the cores).
# Each run folder is resumable: rerunning a line skips the configurations it already holds.
set -euo pipefail
L="python -m timm_overparam.lab"
O=${1:-output/lab}

# the seed's two experiments
$L pattern --models naive,random_conv,hyper --filters 1-7 --restarts 500 --out "$O/pattern"
$L boolnet --models boolnet,hyper --widths 1-22 --restarts 50 --out "$O/boolnet"

# the new question: parameters that add no function (op factors) and subspaces (lines)
$L pattern --models naive,naive_op2,naive_op3,naive_op4,naive_line,random_conv,random_conv_op2,random_conv_line,hyper,hyper_op2,hyper_line \
  --filters 1-7 --restarts 500 --out "$O/pattern_variants"
$L pattern --models naive,naive_op2,naive_op4 --op-width 4 --filters 1-7 --restarts 500 --out "$O/pattern_op_width4"
$L boolnet --models boolnet,boolnet_op2,boolnet_op3,boolnet_op4,boolnet_line,hyper,hyper_op2,hyper_line \
  --widths 1-22 --restarts 200 --out "$O/boolnet_variants"

# is it the step size? the same comparisons at other learning rates
for lr in 0.03 0.3 1.0; do
  $L boolnet --models boolnet,boolnet_op2,boolnet_op4,boolnet_line --widths 1-8,12,16,22 --restarts 200 --lr $lr --out "$O/boolnet_lr$lr"
  $L pattern --models naive,naive_op2,naive_op4,naive_line --filters 1-7 --restarts 500 --lr $lr --out "$O/pattern_lr$lr"
done

# the figures against deployed parameters
$L plot "$O/pattern_variants" --x deployed --out "$O/pattern_variants/deployed.png"
$L plot "$O/boolnet_variants" --x deployed --out "$O/boolnet_variants/deployed.png"
