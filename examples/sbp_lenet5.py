"""SBP's LeNet5-Caffe recipe (pretrain, then SBP) on Fashion-MNIST, set against the SBP README's MNIST row.

SBP (docs/METHODS.md §1.4): pretrain LeNet5-Caffe (conv20-conv50-fc500-fc10, VALID padding) with Adam(β1 = 0.95), lr 1e-3,
batch 128; then add per-batch log-normal noise (one θ per unit per step), train the negative ELBO (mean CE + KL/N,
no warm-up, KL weight 1) with the lr decaying linearly to 0 over the second half, and prune units with SNR ≤ 1.
SBP trains 200 + 200 epochs; on our 2-core CPU we run ``--pretrain`` + ``--sbp`` epochs (defaults 50 + 50) and give
the gates' μ, log σ 10× the weights' lr (SBP's VGG recipe) so they travel far enough in the shorter run.

The run is resumable: after every epoch it writes a checkpoint (``fastbayes.checkpoint``: model, gates, optimiser,
schedule, RNG) next to ``--out`` under ``models/`` (git-ignored); started again with the same arguments it carries on
from the last finished epoch.  50 + 50 epochs take ~2.7 h at one thread.

    .venv/bin/python examples/sbp_lenet5.py --pretrain 50 --sbp 50 --threads 1 --out benchmarks/results/sbp_lenet5/sbp_lenet5_50+50.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.apps import data
from fastbayes.apps.demo import accuracy
from fastbayes.apps.models import build
from fastbayes.prune import compact, measure, update_masks


def train(model, split, epochs, opt, batch_size, loss_extra=None, sched=None, desc="", start=0, on_epoch=None):
    n = len(split)
    for epoch in range(start, epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(split.x[idx]), split.y[idx])
            if loss_extra is not None:
                loss = loss + loss_extra()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        print(f"{desc} epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch + 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain", type=int, default=50)
    p.add_argument("--sbp", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gate-lr-factor", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--subset", type=int, default=0, help="train on the first N images only (a smoke test)")
    p.add_argument("--out", default="benchmarks/results/sbp_lenet5/sbp_lenet5_50+50.json")
    a = p.parse_args(argv)
    for name in ("pretrain", "sbp"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    state_path = out.parent / "models" / (out.stem + ".state.pt")
    state_path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    train_set, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    if a.subset:
        train_set, test = (data.Split(s.x[:a.subset], s.y[:a.subset]) for s in (train_set, test))
    n = len(train_set)
    model = build("lenet5")
    half = a.sbp // 2  # constant lr for the first half, then linear decay to 0 (SBP: 100 + 100 of 200 epochs)

    # the arguments a checkpoint must share to be resumed
    args = {k: getattr(a, k) for k in ("pretrain", "sbp", "lr", "gate_lr_factor", "seed", "subset")}

    def pretrain_optimizer(m):
        return torch.optim.Adam(m.parameters(), a.lr, betas=(0.95, 0.999))

    def sbp_optimizer(m):
        return torch.optim.Adam(fb.nn.param_groups(m, a.lr, a.gate_lr_factor), a.lr, betas=(0.95, 0.999))

    def lr_factor(e):
        return 1.0 if e < half else max(0.0, (a.sbp - e) / max(1, a.sbp - half))

    run = {"phase": "pretrain", "epoch": 0, "seconds": 0.0}
    if state_path.exists():
        saved = torch.load(state_path, weights_only=True)["extra"]
        if saved["args"] != args:
            raise SystemExit(f"{state_path} was written with other arguments {saved['args']}: remove it to start over")
        ck = fb.checkpoint.load(state_path, model, pretrain_optimizer if saved["phase"] == "pretrain" else sbp_optimizer)
        opt, run = ck.optimizer, ck.extra
        torch.set_rng_state(run["rng"])
        print(f"resumed from {state_path}: {run['phase']} epoch {run['epoch']}", flush=True)
    else:
        opt = pretrain_optimizer(model)
    t0 = time.perf_counter() - run["seconds"]

    def checkpoint(phase, sched=None):
        def on_epoch(epoch):
            run.update(phase=phase, epoch=epoch, seconds=time.perf_counter() - t0, rng=torch.get_rng_state(),
                       args=args, sched=sched.state_dict() if sched is not None else None)
            tmp = state_path.with_suffix(".tmp")
            fb.checkpoint.save(tmp, model, opt, **run)
            tmp.replace(state_path)  # a run killed mid-write keeps the previous epoch's state
        return on_epoch

    if run["phase"] == "pretrain":
        train(model, train_set, a.pretrain, opt, 128, desc="pretrain", start=run["epoch"],
              on_epoch=checkpoint("pretrain"))
        run["dense"] = {"accuracy": accuracy(model, test),
                        "flops": measure(model, test.x[:1], repeats=1, warmup=0, min_time=0)["flops"]}
        print(f"pretrained: test acc {run['dense']['accuracy']:.4f}", flush=True)
        fb.add_gates(model, granularity="batch")
        opt = sbp_optimizer(model)
        run.update(phase="sbp", epoch=0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    if run.get("sched") is not None and run["phase"] == "sbp" and run["epoch"] > 0:
        sched.load_state_dict(run["sched"])
    train(model, train_set, a.sbp, opt, 128, loss_extra=lambda: fb.kl_loss(model) / n, sched=sched, desc="sbp",
          start=run["epoch"], on_epoch=checkpoint("sbp", sched))
    acc_dense, flops_dense = run["dense"]["accuracy"], run["dense"]["flops"]
    report = update_masks(model, "snr")
    print(report, flush=True)
    acc_masked = accuracy(model, test)
    small = compact(model, test.x[:1])
    acc_small = accuracy(small, test)
    # the speed-up is timed now, side by side with a plain dense LeNet5 (same architecture as the pretrained one)
    plain = build("lenet5").eval()
    # also with every width rounded up to a multiple of 8 (oneDNN's blocked layouts want multiples of 8 or 16)
    small8 = compact(model, test.x[:1], round_to=8)
    rounds = [(measure(plain, test.x[:128]), measure(small, test.x[:128]), measure(small8, test.x[:128]))
              for _ in range(3)]
    dense_m, small_m, small8_m = (min((r[i] for r in rounds), key=lambda m: m["latency_ms"]) for i in (0, 1, 2))
    flops_small = measure(small, test.x[:1], repeats=1, warmup=0, min_time=0)["flops"]
    kept = report.kept_per_layer
    # SBP's column convention: conv1 channels - conv2 channels - fc1 inputs - fc1 units
    arch = [kept["conv1"], kept["conv2"], kept["conv2"] * 16, kept["fc1"]]
    res = {"model": "lenet5 (LeNet5-Caffe)", "dataset": "fashion-mnist", "seed": a.seed,
           "pretrain_epochs": a.pretrain, "sbp_epochs": a.sbp, "lr": a.lr, "gate_lr": a.lr * a.gate_lr_factor,
           "test_error_pct_dense": 100 * (1 - acc_dense), "test_error_pct_masked": 100 * (1 - acc_masked),
           "test_error_pct_compact": 100 * (1 - acc_small), "architecture": arch,
           "params_dense": dense_m["params"], "params_compact": small_m["params"],
           "flops_dense": flops_dense, "flops_compact": flops_small, "flops_reduction": flops_dense / flops_small,
           "latency_ms_dense": dense_m["latency_ms"], "latency_ms_compact": small_m["latency_ms"],
           "cpu_speedup": dense_m["latency_ms"] / small_m["latency_ms"], "latency_batch": 128,
           "params_compact_round8": small8_m["params"], "latency_ms_compact_round8": small8_m["latency_ms"],
           "cpu_speedup_round8": dense_m["latency_ms"] / small8_m["latency_ms"],
           "test_error_pct_compact_round8": 100 * (1 - accuracy(small8, test)),
           "device": dense_m["device"], "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
