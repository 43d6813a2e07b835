#!/usr/bin/env bash
# The BMRS Table 1 runs on Fashion-MNIST that docs/RESULTS.md reports, in the order they were run (seed-major, so
# that a cut-off sweep still has every method for the first seeds).  Usage: bash examples/run_bmrs_fashion.sh [EPOCHS] [FINETUNE]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-20}
FINETUNE=${2:-5}
OUT=benchmarks/results/bmrs_fashion
mkdir -p "$OUT"
for seed in ${SEEDS:-0 1 2}; do
  for model in mlp; do
    for method in snr bmrs_n bmrs_u8 bmrs_u4 none; do
      .venv/bin/python examples/reproduce_bmrs.py --model "$model" --method "$method" --seed "$seed" \
        --epochs "$EPOCHS" --finetune "$FINETUNE" --out "$OUT" >> "$OUT/log.txt" 2>&1
    done
  done
done
