"""Resumable driver for BMRS Table 1 on Fashion-MNIST (examples/reproduce_bmrs.py, one JSON per cell).

Runs ``--jobs`` cells at a time with one thread each and skips every cell whose JSON exists, so it can be stopped
and restarted at any time; each run's log goes to ``<out>/logs/``.  Cells run seed-major (every method of a seed
before the next seed) so that an interrupted grid still has whole rows; ``l2`` waits for the same seed's
``bmrs_n_code`` (it prunes to the rate of BMRS_N as the paper ran it).

    python examples/run_bmrs_table1.py --models mlp lenet5 --seeds 0 1 2 [--jobs 2] [--out DIR]
    python examples/run_bmrs_table1.py --models mlp --methods bmrs_n_code bmrs_u8 --tag ftc-glr10 \
        --extra='--finetune-compact --gate-lr-factor 10'     # a fastbayes recipe row
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["none", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4", "snr", "etheta", "l2"]


def cells(models, seeds, methods):
    return [(m, s, meth) for s in seeds for m in models for meth in methods]


def name(model, seed, method, tag="") -> str:
    return f"{model}_{method}{'_' + tag if tag else ''}_seed{seed}"


def done(out: Path, model, seed, method, tag="") -> bool:
    return (out / f"{name(model, seed, method, tag)}.json").exists()


def ready(out: Path, model, seed, method) -> bool:
    return method != "l2" or done(out, model, seed, "bmrs_n_code")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mlp", "lenet5"], choices=["mlp", "lenet5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--finetune", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/bmrs_table1"))
    p.add_argument("--tag", default="", help="a fastbayes recipe row: passed on, and part of every JSON name")
    p.add_argument("--extra", default="", help="more reproduce_bmrs.py options for a recipe row, e.g. "
                                                 "'--finetune-compact --gate-lr-factor 10'")
    a = p.parse_args()
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells(a.models, a.seeds, a.methods) if not done(out, *c[:2], c[2], a.tag)]
    running: dict[tuple, subprocess.Popen] = {}
    print(f"{len(todo)} cells to run, {a.jobs} at a time", flush=True)
    while todo or running:
        for c, proc in list(running.items()):
            if proc.poll() is not None:
                del running[c]
                print(f"{time.strftime('%H:%M:%S')} {c} exit {proc.returncode}", flush=True)
        waiting_on = {(m, s, "bmrs_n_code") for m, s, meth in todo if meth == "l2"}
        while len(running) < a.jobs:
            nxt = next((c for c in todo if ready(out, *c[:2], c[2])), None)
            if nxt is None:
                if todo and not running and not (waiting_on & set(todo)):
                    print(f"cannot run {todo}: their bmrs_n_code runs failed", flush=True)
                    todo = []
                break
            todo.remove(nxt)
            model, seed, method = nxt
            log = open(out / "logs" / f"{name(model, seed, method, a.tag)}.log", "w")
            cmd = [sys.executable, str(ROOT / "examples/reproduce_bmrs.py"), "--model", model, "--method", method,
                   "--seed", str(seed), "--epochs", str(a.epochs), "--finetune", str(a.finetune), "--out", str(out),
                   "--threads", "1"] + (["--tag", a.tag] if a.tag else []) + a.extra.split()
            running[nxt] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            print(f"{time.strftime('%H:%M:%S')} start {nxt}", flush=True)
        time.sleep(2)


if __name__ == "__main__":
    main()
