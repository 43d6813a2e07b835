"""BMRS Table 1 on Fashion-MNIST, as the released code runs it: one run per (model, method, seed), one JSON each.

    python examples/reproduce_bmrs.py --model {mlp,lenet5} \
        --method {none,l2,etheta,snr,bmrs_n,bmrs_n_code,bmrs_u8,bmrs_u4} --seed S --epochs 60 --finetune 10 --out DIR

Protocol (docs/METHODS.md §2.5, read from BMRS's paper and released code):

* models: ``mlp`` is BMRS's 1024-150-150-10 tanh MLP, ``lenet5`` BMRS's Lenet5 (6-16-120-84); noise per element,
  after each hidden layer's activation (``add_gates(placement="activation")``);
* inputs resized to 32×32 and scaled (x − 127)/255; 80/20 train/validation split of the official training set;
* Adam without weight decay (MLP batch 128, lr 1.5e-3; Lenet5 batch 32, lr 1.4e-3); loss = mean CE + mean KL;
* masks after every epoch of the first ``epochs − finetune`` (no floor on kept units; a pruned unit stays pruned, as
  the code's zeroed weights make it), then ``finetune`` epochs with masks frozen, keeping the best-validation model;
* ``none``: the plain network (no noise); ``l2``: noise-trained without pruning, then the units with the smallest
  L2 norm of incoming weights masked (globally) to the fraction BMRS_N (code ΔF) kept for the same seed, then
  fine-tuned;
* reported: test accuracy of the compacted model, ``compression_pct`` counted as the code counts it
  (``fastbayes.prune.bmrs_compression_pct``) and the physically removed share of the dense network's parameters.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.apps import data
from fastbayes.apps.models import build
from fastbayes.prune import PruneSchedule, bmrs_compression_pct, compact, count_params

MODELS = {  # BMRS App. C, Fashion-MNIST
    "mlp": dict(arch="bmrs-mlp", batch_size=128, lr=1.5e-3),
    "lenet5": dict(arch="lenet5-bmrs", batch_size=32, lr=1.4e-3),
}
# criterion and options per Table 1 row; bmrs_n_code: the released code's ΔF_N, without the 2π inside the log
METHODS = {"none": None, "l2": None, "etheta": ("etheta", {"threshold": 0.1}), "snr": ("snr", {"threshold": 1.0}),
           "bmrs_n": ("bmrs_n", {}), "bmrs_n_code": ("bmrs_n", {"code_offset": True}),
           "bmrs_u8": ("bmrs_u", {"p1": 8, "code_clamp": True}), "bmrs_u4": ("bmrs_u", {"p1": 4, "code_clamp": True})}


@torch.no_grad()
def accuracy(model, split, bs=2000):
    was = model.training
    model.eval()
    try:
        return sum(int((model(split.x[i:i + bs]).argmax(1) == split.y[i:i + bs]).sum())
                   for i in range(0, len(split), bs)) / len(split)
    finally:
        model.train(was)


def l2_masks(model, keep_fraction: float) -> None:
    """Mask, over all gated layers together, the units with the smallest L2 norm of incoming weights so that
    ``keep_fraction`` of the units stay (BMRS's L2 baseline)."""
    modules = dict(model.named_modules())
    layers = fb.nn.sites.site_layers(model)
    gates = fb.nn.gates(model)
    norms = {s: modules[layers[s]].weight.detach().flatten(1).norm(dim=1) for s in gates}
    allv = torch.cat(list(norms.values()))
    n_keep = int(round(keep_fraction * allv.numel()))
    order = torch.argsort(allv, descending=True, stable=True)
    keep = torch.zeros(allv.numel(), dtype=torch.bool)
    keep[order[:n_keep]] = True
    i = 0
    for s, g in gates.items():
        g.mask.copy_(keep[i:i + g.mask.numel()])
        i += g.mask.numel()


def run(model_name, method, seed, epochs, finetune, out_dir, granularity="element", gate_lr_factor=1.0,
        finetune_compact=False, tag="", kl_weight=1.0):
    """One cell.  The options after ``granularity`` are not BMRS's protocol (the "fastbayes recipe" rows):
    ``gate_lr_factor`` scales the gates' learning rate (``fb.nn.param_groups``), ``finetune_compact`` fine-tunes the
    compacted network (no noise, E[θ] folded in) instead of the noisy masked one, ``kl_weight`` scales every gate's
    KL, and ``tag`` names the JSON apart."""
    if finetune < 0 or epochs <= finetune:
        raise ValueError(f"need 0 <= finetune < epochs, got epochs={epochs}, finetune={finetune}")
    out = Path(out_dir) / f"{model_name}_{method}{'_' + tag if tag else ''}_seed{seed}.json"
    # the paper's BMRS_N numbers are the released code's (bmrs_n_code), so L2 prunes to that rate
    bmrs_n_file = Path(out_dir) / f"{model_name}_bmrs_n_code_seed{seed}.json"
    if method == "l2" and not bmrs_n_file.exists():
        raise FileNotFoundError(f"l2 prunes to BMRS_N's rate: run --method bmrs_n_code --seed {seed} first "
                                f"({bmrs_n_file})")
    cfg = MODELS[model_name]
    torch.manual_seed(seed)
    full = data.bmrs_preprocess(data.fashion_mnist("train"))
    test = data.bmrs_preprocess(data.fashion_mnist("test"))
    train, val = data.train_val_split(full, 0.2, seed)
    model = build(cfg["arch"], tuple(train.x.shape[1:]))
    dense_params = count_params(model)
    gated = method != "none"
    schedule = None
    if gated:
        fb.add_gates(model, placement="activation", granularity=granularity, kl_weight=kl_weight)
        if METHODS[method] is not None:
            criterion, options = METHODS[method]
            schedule = PruneSchedule(model, criterion, prune_epochs=epochs - finetune, min_units=0, permanent=True,
                                     **options)
    params = fb.nn.param_groups(model, cfg["lr"], gate_lr_factor) if gated and gate_lr_factor != 1.0 \
        else model.parameters()
    opt = torch.optim.Adam(params, cfg["lr"])
    counted = None        # compression as BMRS counts it, fixed once the network is compacted
    bs, n = cfg["batch_size"], len(train)
    hist, best, t0 = [], (-1.0, None), time.perf_counter()
    for epoch in range(epochs):
        if method == "l2" and epoch == epochs - finetune:
            # the noise-trained, unpruned network: what post-training pruning (BMRS §5) starts from
            (out.parent / "models").mkdir(parents=True, exist_ok=True)
            fb.checkpoint.save(out.parent / "models" / f"{model_name}_trained_seed{seed}.pt", model, opt)
            kept = json.loads(bmrs_n_file.read_text())["kept_per_layer"]
            total = sum(g.mask.numel() for g in fb.nn.gates(model).values())
            l2_masks(model, sum(kept.values()) / total)
        if finetune_compact and gated and epoch == epochs - finetune:
            counted = (bmrs_compression_pct(model), {s: int(g.mask.sum()) for s, g in fb.nn.gates(model).items()},
                       {s: g.mask.numel() for s, g in fb.nn.gates(model).items()})
            model = compact(model, test.x[:2])
            gated = False
            opt = torch.optim.Adam(model.parameters(), cfg["lr"])
        model.train()
        perm = torch.randperm(n)
        loss_sum, te = 0.0, time.perf_counter()
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            if gated:
                loss = loss + fb.kl_loss(model, reduction="mean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
        rep = schedule.step(epoch) if schedule is not None else None
        kept = {s: int(g.mask.sum()) for s, g in fb.nn.gates(model).items()} if gated else \
            (counted[1] if counted else None)
        val_acc = accuracy(model, val)
        hist.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "val_accuracy": val_acc, "kept_per_layer": kept,
                     "seconds": time.perf_counter() - te,
                     # the criterion's statistic (SNR, E[θ], ΔF) over each layer's units: min, median, max
                     "statistic": {r.name: [r.statistic_min, r.statistic_median, r.statistic_max]
                                   for r in rep.layers} if rep is not None else None})
        if epoch >= epochs - finetune and val_acc > best[0]:      # best-validation model of the fine-tune epochs
            best = (val_acc, copy.deepcopy(model.state_dict()))
        print(f"{model_name} {method} seed {seed} epoch {epoch + 1}/{epochs}: loss {loss_sum / n:.4f}, "
              f"val {val_acc:.4f}, kept {kept}", flush=True)
    if best[1] is not None:
        model.load_state_dict(best[1])
    if counted is None and gated:
        counted = (bmrs_compression_pct(model), {s: int(g.mask.sum()) for s, g in fb.nn.gates(model).items()},
                   {s: g.mask.numel() for s, g in fb.nn.gates(model).items()})
    small = compact(model, test.x[:2]) if gated else model
    res = {"model": model_name, "architecture": cfg["arch"], "method": method, "tag": tag, "seed": seed,
           "epochs": epochs, "finetune": finetune, "granularity": granularity if method != "none" else None,
           "gate_lr_factor": gate_lr_factor, "finetune_compact": finetune_compact, "kl_weight": kl_weight,
           "batch_size": bs, "lr": cfg["lr"],
           "threads": torch.get_num_threads(), "train_seconds": time.perf_counter() - t0,
           "best_val_accuracy": best[0], "test_accuracy": accuracy(small, test),
           "compression_pct": counted[0] if counted else 0.0,
           "removed_pct": 100.0 * (1 - count_params(small) / dense_params),
           "kept_per_layer": counted[1] if counted else {}, "units_per_layer": counted[2] if counted else {},
           "history": hist}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out)              # a killed run leaves no half-written JSON for the driver to skip
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(MODELS), required=True)
    p.add_argument("--method", choices=list(METHODS), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60, help="all epochs, fine-tuning included (BMRS: 50 + 10)")
    p.add_argument("--finetune", type=int, default=10)
    p.add_argument("--granularity", default="element", choices=["element", "sample", "batch"])
    p.add_argument("--out", default="benchmarks/results/bmrs_table1")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--gate-lr-factor", type=float, default=1.0, help="not BMRS: gates' lr = lr × this")
    p.add_argument("--finetune-compact", action="store_true", help="not BMRS: fine-tune the compacted network")
    p.add_argument("--kl-weight", type=float, default=1.0, help="not BMRS: every gate's KL × this")
    p.add_argument("--tag", default="", help="suffix of the JSON name (e.g. 'recipe')")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = run(a.model, a.method, a.seed, a.epochs, a.finetune, a.out, a.granularity, a.gate_lr_factor,
            a.finetune_compact, a.tag, a.kl_weight)
    print(json.dumps({k: r[k] for k in ("model", "method", "seed", "test_accuracy", "compression_pct", "removed_pct",
                                         "kept_per_layer")}))
