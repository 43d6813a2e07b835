"""Trace the gate posteriors of a BMRS-protocol run epoch by epoch: quantiles of μ, log σ and ΔF_N, and how many units
each criterion would keep.  This is how we found why the paper's exact ΔF_N never prunes (docs/RESULTS.md §1).

    .venv/bin/python examples/trace_gates.py --model mlp --epochs 20 > benchmarks/results/bmrs_fashion/trace_mlp.txt
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.apps import data
from fastbayes.apps.models import build
from fastbayes.prune import update_masks

Q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)


def fmt(t: torch.Tensor) -> str:
    return "[" + " ".join(f"{v:8.3g}" for v in t.to(torch.float64).quantile(Q).tolist()) + "]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--gate-lr-factor", type=float, default=1.0)
    p.add_argument("--granularity", default="element")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, _ = data.train_val_split(data.fashion_mnist("train"), 0.2, a.seed)
    model = build(a.model)
    fb.add_gates(model, granularity=a.granularity)
    opt = torch.optim.Adam(fb.nn.param_groups(model, a.lr, a.gate_lr_factor), a.lr)
    n = len(train)
    print(f"{a.model}, lr {a.lr}, gate lr x{a.gate_lr_factor}, mean KL (BMRS code), no masks applied while tracing; "
          f"quantiles 0/10/50/90/100 % over all units")
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n, 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx]) + fb.kl_loss(model, reduction="mean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        gates = list(fb.nn.gates(model).values())
        mu = torch.cat([g.mu.detach() for g in gates])
        ls = torch.cat([g.clamped_log_sigma().detach() for g in gates])
        paper = update_masks(model, "bmrs_n")
        df = torch.cat(list(paper.statistics.values()))
        kept = {"bmrs_n": paper.kept, "bmrs_n_code": update_masks(model, "bmrs_n", code_offset=True).kept,
                "bmrs_u8": update_masks(model, "bmrs_u", p1=8).kept, "snr": update_masks(model, "snr").kept}
        for g in gates:           # trace only: leave every unit in the network
            g.mask.fill_(True)
        print(f"epoch {epoch + 1:3d}  mu {fmt(mu)}  log_sigma {fmt(ls)}  dF_N {fmt(df)}  kept "
              + " ".join(f"{k}={v}" for k, v in kept.items()), flush=True)


if __name__ == "__main__":
    main()
