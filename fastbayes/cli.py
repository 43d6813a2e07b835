"""The ``fastbayes`` command: ``info`` (what loaded and why not), ``demo`` (train, prune, compact, measure) and
``bench`` (benchmark suites + summary)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def info() -> dict:
    import torch

    import fastbayes as fb

    d = {
        "fastbayes": fb.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "triton": None,
        "triton_mode": fb.backends.triton_mode(),
        "omp_threads": torch.get_num_threads(),
        "backends": fb.backends.available(),
        "why_not": fb.backends.why_not(),
        "default_backend": {"cpu": fb.backends.default("cpu")},
        "ops": {name: sorted(fb.backends.ops_of(name)) for name in fb.backends.NAMES},
    }
    try:
        import triton
        d["triton"] = triton.__version__
    except Exception:
        pass
    try:
        from . import _C
        d["omp_threads"] = int(_C.omp_max_threads())
    except Exception:
        pass
    if torch.cuda.is_available():
        d["default_backend"]["cuda"] = fb.backends.default("cuda")
    return d


def _print_info(d: dict) -> None:
    print(f"fastbayes {d['fastbayes']}  (python {d['python']}, torch {d['torch']}, "
          f"CUDA {d['torch_cuda'] or 'none'}, triton {d['triton'] or 'not installed'})")
    print(f"GPUs: {', '.join(d['cuda_devices']) or 'none'};  OpenMP threads: {d['omp_threads']};  "
          f"triton mode: {d['triton_mode']}")
    print("backends:")
    for name, ok in d["backends"].items():
        print(f"  {name:<10} {'available' if ok else 'unavailable: ' + d['why_not'][name]}")
        if ok:
            print(f"  {'':<10} ops: {', '.join(d['ops'][name]) or 'none'}")
    print("default: " + ", ".join(f"{dev} tensors -> {b}" for dev, b in d["default_backend"].items()))


def bench(args) -> int:
    """Run the pytest-benchmark suites in benchmarks/ and print a side-by-side summary."""
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    if not root.is_dir():
        print("fastbayes bench needs the source tree's benchmarks/ folder (run it from a checkout)", file=sys.stderr)
        return 2
    out = Path(args.json) if args.json else Path(tempfile.mkdtemp()) / "bench.json"
    cmd = [sys.executable, "-m", "pytest", "-q", str(root), f"--benchmark-json={out}",
           "--benchmark-columns=median,rounds", "-p", "no:cacheprovider"]
    if args.k:
        cmd += ["-k", args.k]
    rc = subprocess.call(cmd)
    if out.exists():
        from .benchtools import load, machine, table
        data = load(out)
        print(f"\n{machine(data)}\n")
        print(table(data))
        print(f"JSON: {out}")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastbayes", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="versions, backends and why the others are unavailable")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pd = sub.add_parser("demo", help="train with gates, prune, compact, measure; writes DIR/report.json and plots")
    pd.add_argument("--method", default="bmrs_n", choices=["sbp", "bmrs_n", "bmrs_u", "dllp", "bernoulli"])
    pd.add_argument("--model", default="lenet5", help="lenet5, mlp (784-150-10) or mlp-H1-H2...")
    pd.add_argument("--dataset", default=None, choices=["fashion-mnist", "digits"],
                    help="default: fashion-mnist if installed, else digits")
    pd.add_argument("--epochs", type=int, default=6)
    pd.add_argument("--finetune", type=int, default=1, help="last epochs trained with the masks frozen")
    pd.add_argument("--kl", default="mean", choices=["mean", "elbo"],
                    help="KL weighting: BMRS code's mean KL (default) or the per-example ELBO, KL/N")
    pd.add_argument("--gate-lr-factor", type=float, default=10.0,
                    help="lr multiplier for the gates' mu and log sigma (default 10, as SBP's VGG recipe)")
    pd.add_argument("--delta-f", default="code", choices=["code", "paper"],
                    help="bmrs_n: the released BMRS code's Delta F (default; +0.919) or the paper's exact formula")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--batch-size", type=int, default=128)
    pd.add_argument("--lr", type=float, default=1e-3)
    pd.add_argument("--max-train", type=int, default=None, help="use only the first N training examples")
    pd.add_argument("--out", default="fastbayes-demo")
    pd.add_argument("--particles", type=int, default=8, help="dllp: number of SVGD particles")
    pd.add_argument("--svgd-epochs", type=int, default=2, help="dllp: SVGD epochs after the --epochs plain ones")
    pd.add_argument("--no-plots", action="store_true")
    pb = sub.add_parser("bench", help="run the benchmark suites and print the summary table")
    pb.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    pb.add_argument("--json", default=None, help="where to write pytest-benchmark's JSON")
    args = p.parse_args(argv)
    if args.cmd == "info":
        d = info()
        print(json.dumps(d, indent=2)) if args.json else _print_info(d)
        return 0
    if args.cmd == "demo":
        from .demo import run
        run(args.method, args.model, args.dataset, args.epochs, args.finetune, args.seed, args.out, args.batch_size,
            args.lr, args.max_train, plots=not args.no_plots, n_particles=args.particles,
            svgd_epochs=args.svgd_epochs, kl=args.kl,
            gate_lr_factor=args.gate_lr_factor, delta_f=args.delta_f)
        return 0
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
