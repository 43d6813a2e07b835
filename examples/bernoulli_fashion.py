"""Bernoulli gates pruned while training (fastbayes.prune.Shrinker) on Fashion-MNIST: 3 seeds × 2 starting widths,
with the dense baseline of every run.

    OMP_NUM_THREADS=1 .venv/bin/python examples/bernoulli_fashion.py --epochs 5 --dense \
        --out benchmarks/results/bernoulli_fashion

Each run is ``fastbayes demo --method bernoulli`` on the full 48k training split (``--max-train 0``; at 10 000 the
1/N-weighted prior is 5× stronger and the slab's L2 alone costs accuracy); the script prints final widths, accuracy
and the median train step of the first and last epoch, and writes each run's ``OUT/MODEL-sSEED/report.json`` (plots
only for the first seed).  The robustness question: do the final widths agree across seeds and starting widths?

``--dense`` also trains the dense baseline of each run: the same architecture without gates, the same seed (hence
the same split and the same initial weights as the gated model), epochs, batch size and Adam lr, with the median
train step of each epoch timed exactly as ``_run_bernoulli`` times it (forward, loss, backward, optimiser step), so
the Bernoulli run's step-time curve can be set against the dense model's.  It is written to
``OUT/MODEL-sSEED/dense.json``.  ``--no-bernoulli`` skips the Bernoulli runs and uses the report.json already there,
e.g. to add the dense baselines to an existing grid:

    OMP_NUM_THREADS=1 .venv/bin/python examples/bernoulli_fashion.py --epochs 5 --dense --no-bernoulli

``OUT/summary.json`` is rebuilt from the files on disk (report.json and dense.json of every run asked for), merged
by (model, seed) into the summary already there: rows of other runs are kept, and a row's Bernoulli entries are kept
when its report.json is missing.  Always at 1 thread unless ``--threads`` says otherwise.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastbayes.apps.demo import _prepare, accuracy, run
from fastbayes.apps.models import build


def train_dense(model_name, seed, epochs, out, batch_size=128, lr=1e-3, max_train=None) -> dict:
    """The dense baseline of ``run("bernoulli", model_name, ...)``: same split, initial weights, epochs, batch size
    and Adam lr, no gates and no prior; the median train step per epoch is timed as ``_run_bernoulli`` times it."""
    out, dataset, train, val, test = _prepare(out, None, seed, max_train)
    model = build(model_name, tuple(train.x.shape[1:]))
    build(model_name, tuple(train.x.shape[1:]))    # _run_bernoulli builds twice: keep the RNG stream in step
    opt = torch.optim.Adam(model.parameters(), lr)
    n, history, step_ms = len(train), [], []
    t_train = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm, times = torch.randperm(n), []
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(1e3 * (time.perf_counter() - t0))
        step_ms.append(statistics.median(times))
        history.append({"epoch": epoch + 1, "val_accuracy": accuracy(model, val), "train_step_ms": step_ms[-1]})
    train_seconds = time.perf_counter() - t_train
    rep = {"method": "dense", "dataset": dataset, "model": model_name, "seed": seed, "epochs": epochs,
           "batch_size": batch_size, "lr": lr, "optimizer": "Adam", "n_train": n,
           "test_accuracy": accuracy(model, test), "params": sum(p.numel() for p in model.parameters()),
           "train_seconds": train_seconds, "train_step_ms_per_epoch": step_ms,
           "train_step_ms_start": step_ms[0], "train_step_ms_end": step_ms[-1],
           "val_accuracy_per_epoch": [h["val_accuracy"] for h in history], "threads": torch.get_num_threads()}
    (out / "dense.json").write_text(json.dumps(rep, indent=2))
    return rep


def bernoulli_row(rep: dict) -> dict:
    return {"model": rep["model"], "seed": rep["seed"], "widths": rep["kept_per_layer"],
            "test_accuracy": rep["test_accuracy_after"], "gates_binary": rep["gates_binary"],
            "units_per_epoch": rep["units_per_epoch"],
            "step_ms_first": rep["train_step_ms_start"], "step_ms_last": rep["train_step_ms_end"],
            "total_per_layer": rep["total_per_layer"], "compression_pct": rep["compression_pct"],
            "units_in_transit_after_training": rep["units_in_transit_after_training"],
            "settle_steps": rep["settle_steps"], "train_seconds": rep["train_seconds"],
            "val_accuracy_per_epoch": [h["val_accuracy"] for h in rep["history"]],
            "epochs": rep["epochs"], "step_ms_per_epoch": rep["train_step_ms_per_epoch"]}


def dense_entry(d: dict) -> dict:
    return {"test_accuracy": d["test_accuracy"], "epochs": d["epochs"], "params": d["params"],
            "step_ms_first": d["train_step_ms_start"], "step_ms_last": d["train_step_ms_end"],
            "step_ms_per_epoch": d["train_step_ms_per_epoch"], "train_seconds": d["train_seconds"],
            "val_accuracy_per_epoch": d["val_accuracy_per_epoch"], "file": "dense.json"}


def merge_summary(out: Path, runs) -> list:
    """``OUT/summary.json`` updated by (model, seed) for ``runs`` from their report.json / dense.json."""
    path = out / "summary.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    index = {(r["model"], r["seed"]): r for r in rows}
    for model, seed in runs:
        d = out / f"{model}-s{seed}"
        row = index.get((model, seed))
        if row is None:
            row = index[(model, seed)] = {"model": model, "seed": seed}
            rows.append(row)
        if (d / "report.json").exists():
            row.update(bernoulli_row(json.loads((d / "report.json").read_text())))
        if (d / "dense.json").exists():
            row["dense"] = dense_entry(json.loads((d / "dense.json").read_text()))
    path.write_text(json.dumps(rows, indent=2))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp-300-100", "mlp-600-200"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-train", type=int, default=0, help="training subset; 0: the full 48k split")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dense", action="store_true", help="also train each run's dense baseline (dense.json)")
    p.add_argument("--no-bernoulli", action="store_true",
                   help="skip the Bernoulli runs; use the report.json already in OUT/MODEL-sSEED")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", default="benchmarks/results/bernoulli_fashion")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    runs = [(model, seed) for model in a.models for seed in a.seeds]
    for model, seed in runs:
        d = out / f"{model}-s{seed}"
        if not a.no_bernoulli:
            run("bernoulli", model, None, a.epochs, 0, seed, d, batch_size=a.batch_size, lr=a.lr,
                max_train=a.max_train or None, plots=seed == a.seeds[0], quiet=True, dense=False)  # own --dense
        if (d / "report.json").exists():
            r = bernoulli_row(json.loads((d / "report.json").read_text()))
            if r["epochs"] != a.epochs:
                print(f"warning: {d / 'report.json'} ran {r['epochs']} epochs, not {a.epochs}")
            print(f"{model:>12} seed {seed}: widths {list(r['widths'].values())}, test acc "
                  f"{r['test_accuracy']:.4f}, binary {r['gates_binary']}, step {r['step_ms_first']:.1f} -> "
                  f"{r['step_ms_last']:.1f} ms")
        if a.dense:
            dn = train_dense(model, seed, a.epochs, d, batch_size=a.batch_size, lr=a.lr,
                             max_train=a.max_train or None)
            print(f"{model:>12} seed {seed}: dense test acc {dn['test_accuracy']:.4f}, step "
                  f"{dn['train_step_ms_start']:.1f} -> {dn['train_step_ms_end']:.1f} ms, {dn['train_seconds']:.1f} s")
    merge_summary(out, runs)


if __name__ == "__main__":
    main()
