"""SBP's LeNet5-Caffe recipe (pretrain, then SBP) on Fashion-MNIST, set against the SBP README's MNIST row.

SBP (docs/METHODS.md §1.4): pretrain LeNet5-Caffe (conv20-conv50-fc500-fc10, VALID padding) with Adam(β1 = 0.95), lr 1e-3,
batch 128; then add per-batch log-normal noise (one θ per unit per step), train the negative ELBO (mean CE + KL/N,
no warm-up, KL weight 1) with the lr decaying linearly to 0 over the second half, and prune units with SNR ≤ 1.
SBP trains 200 + 200 epochs; on our 2-core CPU we run ``--pretrain`` + ``--sbp`` epochs (defaults 10 + 20) and give
the gates' μ, log σ 10× the weights' lr (SBP's VGG recipe) so they travel far enough in the shorter run.

    .venv/bin/python examples/sbp_lenet5.py --pretrain 10 --sbp 20 --out benchmarks/results/sbp_lenet5.json
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


def train(model, split, epochs, opt, batch_size, loss_extra=None, sched=None, desc=""):
    n = len(split)
    for epoch in range(epochs):
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain", type=int, default=10)
    p.add_argument("--sbp", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gate-lr-factor", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/sbp_lenet5.json")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train_set, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    model = build("lenet5")
    t0 = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), a.lr, betas=(0.95, 0.999))
    train(model, train_set, a.pretrain, opt, 128, desc="pretrain")
    acc_dense = accuracy(model, test)
    dense_m = measure(model, test.x[:128])
    flops_dense = measure(model, test.x[:1], repeats=1, warmup=0, min_time=0)["flops"]
    print(f"pretrained: test acc {acc_dense:.4f}", flush=True)

    fb.add_gates(model, granularity="batch")
    opt = torch.optim.Adam(fb.nn.param_groups(model, a.lr, a.gate_lr_factor), a.lr, betas=(0.95, 0.999))
    half = a.sbp // 2  # constant lr for the first half, then linear decay to 0 (SBP: 100 + 100 of 200 epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 if e < half else max(0.0, (a.sbp - e) / max(1, a.sbp - half)))
    n = len(train_set)
    train(model, train_set, a.sbp, opt, 128, loss_extra=lambda: fb.kl_loss(model) / n, sched=sched, desc="sbp")
    report = update_masks(model, "snr")
    print(report, flush=True)
    acc_masked = accuracy(model, test)
    small = compact(model, test.x[:1])
    acc_small = accuracy(small, test)
    small_m = measure(small, test.x[:128])
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
           "device": dense_m["device"], "seconds": time.perf_counter() - t0}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
