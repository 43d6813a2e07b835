#!/usr/bin/env bash
# The accumulated-evidence grid of docs/RESULTS.md §2.4 (seeds 0-2 x three starts, price 0.01, z 0, 30 epochs),
# two runs at a time, one thread each; each run writes MODEL-sSEED/report.json.  From the repository root:
#   bash benchmarks/results/bernoulli_cost/accumulate/runall.sh
#   .venv/bin/python examples/bernoulli_fashion.py --summarize --out benchmarks/results/bernoulli_cost/accumulate
cd "$(dirname "$0")/../../../.."
D=benchmarks/results/bernoulli_cost/accumulate
run() { [ -f "$D/$1-s$2/report.json" ] || OMP_NUM_THREADS=1 .venv/bin/python "$D/run.py" "$1" "$2" 0 "$D/$1-s$2" 0.01; }
for s in 0 1 2; do
  run mlp-300-100 $s & run mlp-1200-400 $s & wait
  run mlp-600-200 $s
done
