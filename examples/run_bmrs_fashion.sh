#!/usr/bin/env bash
# The BMRS Table 1 runs on Fashion-MNIST that docs/RESULTS.md reports, seed-major so that a cut-off sweep still has
# every method for the first seeds.  Usage: [SEEDS="0 1 2"] [MODELS=mlp] [THREADS=1] bash examples/run_bmrs_fashion.sh [EPOCHS] [FINETUNE]
# (EPOCHS counts the fine-tuning epochs: BMRS's protocol is 50 + 10 = `60 10`.)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-60}
FINETUNE=${2:-10}
OUT=benchmarks/results/bmrs_fashion
mkdir -p "$OUT"
for seed in ${SEEDS:-0 1 2}; do
  for model in ${MODELS:-mlp}; do
    for method in ${METHODS:-bmrs_n bmrs_n_code snr bmrs_u8 bmrs_u4 none}; do
      .venv/bin/python examples/reproduce_bmrs.py --model "$model" --method "$method" --seed "$seed" \
        --epochs "$EPOCHS" --finetune "$FINETUNE" --threads "${THREADS:-1}" --out "$OUT" >> "$OUT/log.txt" 2>&1
    done
  done
done
