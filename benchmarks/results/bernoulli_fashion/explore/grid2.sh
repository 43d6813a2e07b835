cd /work/main
export OMP_NUM_THREADS=1
rm -rf benchmarks/results/bernoulli_fashion
.venv/bin/python examples/bernoulli_fashion.py --epochs 5 --out benchmarks/results/bernoulli_fashion 2>&1 | grep -v Warn; echo GRID_DONE
rm -rf /work/notes/demo-bernoulli
.venv/bin/python -m fastbayes.cli demo --method bernoulli --model mlp-300-100 --epochs 5 --out /work/notes/demo-bernoulli 2>&1 | grep -v "it/s\|s/it" | tail -14; echo DEMO_DONE
