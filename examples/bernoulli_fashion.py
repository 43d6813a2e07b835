"""Bernoulli gates pruned while training (fastbayes.prune.Shrinker) on Fashion-MNIST: 3 seeds × 2 starting widths.

    .venv/bin/python examples/bernoulli_fashion.py --max-train 10000 --epochs 4 --out bernoulli-runs

Each run is ``fastbayes demo --method bernoulli``; the script prints final widths, accuracy and the median train step
of the first and last epoch, and writes ``OUT/summary.json``.  The robustness question: do the final widths agree
across seeds and starting widths?
"""
import argparse
import json
from pathlib import Path

from fastbayes.demo import run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp-300-100", "mlp-600-200"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-train", type=int, default=10000, help="training subset (the CPU is small and shared)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default="bernoulli-runs")
    a = p.parse_args(argv)
    rows = []
    for model in a.models:
        for seed in a.seeds:
            rep = run("bernoulli", model, None, a.epochs, 0, seed, Path(a.out) / f"{model}-s{seed}", lr=a.lr,
                      max_train=a.max_train, plots=True, quiet=True)
            rows.append({"model": model, "seed": seed, "widths": rep["kept_per_layer"],
                         "test_accuracy": rep["test_accuracy_after"], "gates_binary": rep["gates_binary"],
                         "units_per_epoch": rep["units_per_epoch"],
                         "step_ms_first": rep["train_step_ms_start"], "step_ms_last": rep["train_step_ms_end"]})
            r = rows[-1]
            print(f"{model:>12} seed {seed}: widths {list(r['widths'].values())}, test acc {r['test_accuracy']:.4f}, "
                  f"binary {r['gates_binary']}, step {r['step_ms_first']:.1f} -> {r['step_ms_last']:.1f} ms")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
