"""The ``fastbayes`` command: ``info`` (what loaded and why not), ``demo`` (train, prune, compact, measure) and
``bench`` (benchmark suites + summary)."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def info() -> dict:
    """Versions, backends, why the others are unavailable and each backend's ops; never raises for a bad
    ``FASTBAYES_BACKEND`` (``backend_error`` says what is wrong with it instead)."""
    import torch

    import fastbayes as fb

    env = os.environ.get("FASTBAYES_BACKEND") or None
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
        "forced_backend": env,
        "backend_error": None,
        "default_backend": {},
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
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        try:
            d["default_backend"][dev] = fb.backends.default(dev)
        except (ValueError, RuntimeError) as e:     # an unknown or unusable FASTBAYES_BACKEND: report it
            d["default_backend"][dev] = None
            if env is not None and env not in fb.backends.NAMES:
                d["backend_error"] = (f"FASTBAYES_BACKEND={env!r} is not a known backend (valid: "
                                      f"{', '.join(fb.backends.NAMES)}); every op call will fail until it is fixed")
            else:
                d["backend_error"] = f"FASTBAYES_BACKEND={env!r}: {e}"
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
    if d["forced_backend"]:
        print(f"forced by FASTBAYES_BACKEND: {d['forced_backend']}")
    if d["backend_error"]:
        print(f"error: {d['backend_error']}")
    print("default: " + ", ".join(f"{dev} tensors -> {b or 'none'}" for dev, b in d["default_backend"].items()))


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


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


def _finite_float(text: str, zero_ok: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if zero_ok else '>'} 0, got {text!r}")
    return v


def _nonnegative_float(text: str) -> float:
    return _finite_float(text, zero_ok=True)


def _positive_float(text: str) -> float:
    return _finite_float(text, zero_ok=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastbayes", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="versions, backends and why the others are unavailable")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pd = sub.add_parser("demo", help="train with gates and a dense baseline, prune, compact, measure; writes "
                                     "DIR/report.json and plots")
    pd.add_argument("--method", default="bmrs_n", choices=["sbp", "bmrs_n", "bmrs_u", "dllp", "bernoulli"])
    pd.add_argument("--model", default="lenet5",
                    help="lenet5, lenet5-bmrs, bmrs-mlp (BMRS's two-layer tanh MLP), mlp (784-150-10) or mlp-H1-H2...")
    pd.add_argument("--dataset", default=None, choices=["fashion-mnist", "digits"],
                    help="default: fashion-mnist if installed, else digits")
    pd.add_argument("--epochs", type=_int_at_least(1), default=6)
    pd.add_argument("--finetune", type=_int_at_least(0), default=None,
                    help="last epochs trained with the masks frozen (default: 1, or 0 with --epochs 1)")
    pd.add_argument("--kl", default="mean", choices=["mean", "elbo"],
                    help="KL weighting: BMRS code's mean KL (default) or the per-example ELBO, KL/N")
    pd.add_argument("--gate-lr-factor", type=_positive_float, default=10.0,
                    help="lr multiplier for the gates' mu and log sigma (default 10, as SBP's VGG recipe)")
    pd.add_argument("--delta-f", default="code", choices=["code", "paper"],
                    help="bmrs_n: the released BMRS code's Delta F (default; +0.919) or the paper's exact formula")
    pd.add_argument("--seed", type=_int_at_least(0), default=0)
    pd.add_argument("--batch-size", type=_int_at_least(1), default=128)
    pd.add_argument("--lr", type=_positive_float, default=1e-3)
    pd.add_argument("--max-train", type=_int_at_least(1), default=None,
                    help="use only the first N training examples")
    pd.add_argument("--out", default="fastbayes-demo")
    pd.add_argument("--price", type=_nonnegative_float, default=None,
                    help="bernoulli: the cost-aware prior's price of a parameter, in nats over the training set "
                         "(default 0.01; higher prunes more)")
    pd.add_argument("--decide-batch", type=_int_at_least(1), default=None,
                    help="bernoulli: examples on which the units in transit are judged after every epoch "
                         "(default 256)")
    pd.add_argument("--particles", type=_int_at_least(2), default=8, help="dllp: number of SVGD particles")
    pd.add_argument("--svgd-epochs", type=_int_at_least(1), default=2,
                    help="dllp: SVGD epochs after the --epochs plain ones")
    pd.add_argument("--repulsion", type=_nonnegative_float, default=None,
                    help="dllp: weight α of SVGD's repulsive term (default 1; 0 switches the interaction off, "
                         "α > 1 targets the tempered posterior; docs/RESULTS.md §3.2)")
    pd.add_argument("--no-dense", action="store_true",
                    help="skip the dense baseline (faster; then no speed-up is claimed). dllp: its plain phase "
                         "is the baseline and is always reported")
    pd.add_argument("--post-training", type=_int_at_least(1), default=None, metavar="STEPS",
                    help="sbp/bmrs_n/bmrs_u: prune after training instead (BMRS §5), removing 1/STEPS of the units "
                         "per step with one fine-tune epoch each; plots the curve and where the rule stops")
    pd.add_argument("--no-plots", action="store_true")
    pb = sub.add_parser("bench", help="run the benchmark suites and print the summary table")
    pb.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    pb.add_argument("--json", default=None, help="where to write pytest-benchmark's JSON")
    p.set_defaults(demo_parser=pd)      # for the cross-option checks' usage errors
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.cmd == "info":
        d = info()
        print(json.dumps(d, indent=2)) if args.json else _print_info(d)
        return 1 if d["backend_error"] else 0
    if args.cmd == "demo":
        demo_parser = args.demo_parser
        finetune = min(1, args.epochs - 1) if args.finetune is None else args.finetune
        if finetune >= args.epochs:
            demo_parser.error(f"argument --finetune: must be < --epochs ({args.epochs}), got {finetune}")
        if args.model not in ("lenet5", "lenet5-bmrs", "bmrs-mlp") and not _is_mlp(args.model):
            demo_parser.error(f"argument --model: expected lenet5, lenet5-bmrs, bmrs-mlp, mlp or mlp-H1-H2..., "
                              f"got {args.model!r}")
        if args.repulsion is not None and args.method != "dllp":
            demo_parser.error(f"argument --repulsion: applies to dllp, not {args.method}")
        if args.price is not None and args.method != "bernoulli":
            demo_parser.error(f"argument --price: applies to bernoulli, not {args.method}")
        if args.decide_batch is not None and args.method != "bernoulli":
            demo_parser.error(f"argument --decide-batch: applies to bernoulli, not {args.method}")
        if args.post_training and args.method not in ("sbp", "bmrs_n", "bmrs_u"):
            demo_parser.error(f"argument --post-training: applies to sbp, bmrs_n and bmrs_u, not {args.method}")
        import fastbayes as fb
        try:
            fb.backends.default("cpu")
        except (ValueError, RuntimeError) as e:
            demo_parser.error(f"FASTBAYES_BACKEND: {e}")
        from .apps.demo import run
        run(args.method, args.model, args.dataset, args.epochs, finetune, args.seed, args.out, args.batch_size,
            args.lr, args.max_train, plots=not args.no_plots, n_particles=args.particles,
            svgd_epochs=args.svgd_epochs, kl=args.kl, gate_lr_factor=args.gate_lr_factor, delta_f=args.delta_f,
            dense=not args.no_dense, post_training_steps=args.post_training or 0,
            **({} if args.price is None else {"price": args.price}),
            **({} if args.decide_batch is None else {"decide_batch": args.decide_batch}),
            **({} if args.repulsion is None else {"repulsion": args.repulsion}))
        return 0
    return bench(args)


def _is_mlp(name: str) -> bool:
    parts = name.split("-")
    return parts[0] == "mlp" and all(h.isdigit() and int(h) > 0 for h in parts[1:])


if __name__ == "__main__":
    sys.exit(main())
