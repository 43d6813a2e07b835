cd /work/main
export OMP_NUM_THREADS=1
rm -rf benchmarks/results/bernoulli_fashion
/usr/bin/time -v .venv/bin/python examples/bernoulli_fashion.py --epochs 5 --out benchmarks/results/bernoulli_fashion 2>&1 | grep -v "^\s" ; echo GRID_DONE
for m in bernoulli bmrs_n sbp; do
  .venv/bin/python -m fastbayes.cli demo --method $m --model mlp-300-100 --epochs 5 --out /work/notes/demo-$m 2>&1 | grep -v "it/s\|s/it" | tail -25; echo "DEMO $m DONE"
done
for s in 0 1 2; do .venv/bin/python /work/notes/exp/dense.py mlp-300-100 5 $s; .venv/bin/python /work/notes/exp/dense.py mlp-600-200 5 $s; done
echo ALL_DONE
