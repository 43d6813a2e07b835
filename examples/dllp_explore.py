"""The 10k-subset exploration of docs/RESULTS.md §3 (DLLP particle ensemble on BMRS's Lenet5 / Fashion-MNIST).

``grid``: Lenet5 trained plainly for 10 epochs on the first ``--max-train`` images of the seeded 80/20 training split
(cached in ``--cache``), then one SVGD run of 8 particles per configuration (1 epoch, B = 128, Adam lr 1e-3), evaluated
on the first 5,000 test images; one JSON line per configuration appended to ``--out``.  ``ratio``: from the cached
network after 1 SVGD epoch, the size of SVGD's repulsive term relative to its driving term for a global kernel at
scaled median bandwidths and for per-layer kernels (the bandwidth and per-layer measurements of §3).

Committed outputs (made at 1 thread, OMP_NUM_THREADS=1):

    .venv/bin/python examples/dllp_explore.py grid  --out benchmarks/results/dllp_fashion/explore_10k.jsonl
    .venv/bin/python examples/dllp_explore.py ratio > benchmarks/results/dllp_fashion/explore_ratio.txt
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastbayes import dllp
from fastbayes.apps import data
from fastbayes.apps.models import build

# the configurations of the RESULTS.md §3 exploration table, in its order
GRID = [
    {"noise": 1e-3, "noise_scale": "absolute", "per_particle_batches": False},
    {"noise": 0.1, "per_particle_batches": False},
    {"noise": 1e-3, "noise_scale": "absolute", "per_particle_batches": True},
    {"noise": 0.1, "per_particle_batches": True},
    {"noise": 0.3, "per_particle_batches": True},
    {"noise": 0.1, "per_particle_batches": True, "bandwidth_scale": 0.1},
    {"noise": 0.1, "per_particle_batches": True, "bandwidth_scale": 10.0},
    {"noise": 0.1, "per_particle_batches": True, "temperature": 10.0},
    {"noise": 0.1, "per_particle_batches": True, "epochs": 3},
    {"noise": 0.1, "per_particle_batches": False, "epochs": 3},
]
FIT_KEYS = ("per_particle_batches", "temperature", "bandwidth_scale", "epochs", "lr")


def _to32(s: data.Split) -> data.Split:
    return data.Split(F.interpolate(s.x, size=(32, 32), mode="bilinear", align_corners=False), s.y)


def load(max_train: int):
    train, _ = data.train_val_split(_to32(data.fashion_mnist("train")), 0.2, 0)
    test = _to32(data.fashion_mnist("test"))
    return data.Split(train.x[:max_train], train.y[:max_train]), data.Split(test.x[:5000], test.y[:5000])


def plain_network(train, cache: Path, plain_epochs: int = 10):
    """The plain Lenet5 every configuration starts from, trained once and cached (seed 0)."""
    torch.manual_seed(0)
    model = build("lenet5-bmrs", (1, 32, 32))
    path = cache / f"base_{len(train)}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
    else:
        t = time.time()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for _ in range(plain_epochs):
            perm = torch.randperm(len(train))
            for i in range(0, len(train), 128):
                idx = perm[i:i + 128]
                loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        torch.save(model.state_dict(), path)
        print("plain", time.time() - t, flush=True)
    return model.eval()


def grid(args) -> None:
    train, test = load(args.max_train)
    model = plain_network(train, args.cache)
    for cfg in GRID[:args.configs]:
        cfg = dict(cfg)
        label = json.dumps(cfg)
        fitkw = {k: cfg.pop(k) for k in list(cfg) if k in FIT_KEYS}
        t = time.time()
        ens = dllp.ParticleEnsemble(model, 8, generator=torch.Generator().manual_seed(0), **cfg)
        h = ens.fit(train, fitkw.pop("epochs", 1), fitkw.pop("lr", 1e-3), 128, seed=0, kernel="weight", **fitkw)
        masks = ens.consensus_mask()
        r = dllp.reliability_report(ens.pruned(masks).predict(test.x), test.y)
        point = dllp.apply_masks(model, dllp.magnitude_masks(model, masks))
        pt = dllp.reliability_report(dllp.predict_logits(point, test.x), test.y)
        plain = dllp.reliability_report(dllp.predict_logits(model, test.x), test.y)
        row = {"cfg": label, "sec": round(time.time() - t), "sparsity": round(dllp.sparsity(masks), 4),
               "acc": round(r["accuracy"], 4), "acc_mean": round(r["accuracy_mean"], 4),
               "acc_std": round(r["accuracy_std"], 4), "mi": r["mutual_information"], "ece": round(r["ece"], 4),
               "nll": round(r["nll"], 4), "pt_acc": round(pt["accuracy"], 4), "pt_ece": round(pt["ece"], 4),
               "pt_nll": round(pt["nll"], 4), "plain_acc": round(plain["accuracy"], 4),
               "plain_nll": round(plain["nll"], 4),
               "diag": {k: h[-1][k] for k in ("bandwidth", "median_sq_dist", "repulsion_ratio", "rms_spread", "nll")}}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def ratio(args) -> None:
    from fastbayes.reference.svgd import median_bandwidth, pairwise_sq_dists

    train, _ = load(args.max_train)
    model = plain_network(train, args.cache)
    ens = dllp.ParticleEnsemble(model, 8, generator=torch.Generator().manual_seed(0))
    ens.fit(train, 1, 1e-3, 128, seed=0, kernel="weight")
    n, N = 8, len(train)
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(N, generator=g)[:128] for _ in range(n)])
    out = ens._forward_each(train.x[idx])
    (F.cross_entropy(out.flatten(0, 1), train.y[idx].flatten(), reduction="sum") * (N / 128)).backward()
    ens._add_prior_grad()
    ps = {k: p for k, p in ens.params.items() if p.grad is not None}

    def parts(names, scale=1.0):
        """‖repulsive‖ / ‖driving‖ (Frobenius, all particles) and the mean off-diagonal kernel value."""
        d = pairwise_sq_dists([ps[k].detach() for k in names])
        h = median_bandwidth(d) * scale
        K = torch.exp(-d / h)
        dr = rp = 0.0
        for k in names:
            X = ps[k].detach().reshape(n, -1).double()
            G = -ps[k].grad.reshape(n, -1).double()
            dr += float((K @ G).pow(2).sum())
            rp += float(((2 / h) * (K.sum(1, keepdim=True) * X - K @ X)).pow(2).sum())
        iu = torch.triu_indices(n, n, 1)
        return math.sqrt(rp / dr), float(K[iu[0], iu[1]].mean())

    names = list(ps)
    print("dims", sum(ps[k][0].numel() for k in names))
    for s in (0.01, 0.1, 1.0, 10.0, 100.0):
        r, k = parts(names, s)
        print(f"global kernel, bandwidth x{s}: repulsion/driving {r:.2e}, mean off-diagonal k {k:.3f}")
    for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
        sub = [k for k in names if k.startswith(layer + ".")]
        r, k = parts(sub)
        print(f"per-layer kernel {layer} ({sum(ps[k][0].numel() for k in sub)} dims): repulsion/driving {r:.2e}, "
              f"mean k {k:.3f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["grid", "ratio"])
    p.add_argument("--max-train", type=int, default=10000)
    p.add_argument("--configs", type=int, default=len(GRID), help="grid: run only the first N configurations")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "fastbayes-dllp-explore",
                   help="where the plain network is cached")
    p.add_argument("--out", default="explore_10k.jsonl", help="grid: JSON lines are appended here")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    grid(args) if args.what == "grid" else ratio(args)


if __name__ == "__main__":
    main()
