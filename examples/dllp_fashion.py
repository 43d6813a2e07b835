"""SVGD particle pruning after DLLP on Fashion-MNIST: LeNet5 trained plainly, then a particle ensemble with the
spike-and-slab prior (fastbayes.dllp, docs/METHODS.md §4.2 — our own design, DLLP's abstract only).

Writes one JSON with the sparsity, accuracy and reliability (ECE, NLL, Brier, predictive entropy, mutual information,
accuracy mean/std/95 % interval across particles) of

* the pruned DLLP ensemble (every particle, one consensus mask),
* the single compact network (the particle mean, physically pruned),
* the hard-pruned point estimate: magnitude pruning (L2 of incoming weights) of the plain network at the same
  per-layer sparsity; also the same after training the plain network for ``--svgd-epochs`` more epochs (a point
  estimate with as many passes over the data as plain + SVGD), and
* BMRS_N (fastbayes's gated training with the BMRS_N criterion, released-code ΔF, as ``fastbayes.apps.demo``) trained from
  scratch for the same number of passes over the data as the plain + SVGD phases (``--bmrs-epochs``, 0 skips it),

plus a reliability diagram of all four.  The particles start from the trained network with a jitter of 0.1 × each
parameter tensor's std and draw their own minibatches (``fastbayes.dllp`` defaults; ``--noise 1e-3 --noise-scale
absolute --shared-batches`` restores the earlier setting, whose particles stay nearly identical).  ``--model lenet5``
runs LeNet5-Caffe (about 5× the compute per example).  Needs the Fashion-MNIST files (``apt-get install
dataset-fashion-mnist``, or ``FASTBAYES_DATA``).

    python examples/dllp_fashion.py                                   # defaults
    python examples/dllp_fashion.py --max-train 2000 --particles 3 --epochs 1 --svgd-epochs 1 --bmrs-epochs 1  # smoke
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastbayes import add_gates, dllp, kl_loss, metrics
from fastbayes.apps import data
from fastbayes.apps.models import build
from fastbayes.prune import PruneSchedule, compact
from fastbayes.prune.measure import count_params


def reliability(logits, labels) -> dict:
    """``metrics.reliability_report`` plus ``mean_confidence`` (mean max predictive probability): above the accuracy is
    over-confident, below it under-confident."""
    rep = metrics.reliability_report(logits, labels)
    mean = metrics.predictive_mean(logits)
    rep["mean_confidence"] = float(mean.max(-1).values.mean())
    # error detection: how well the uncertainty ranks the wrong predictions above the right ones (AUROC, 0.5 = chance)
    wrong = mean.argmax(-1).cpu() != labels.cpu()
    logp = torch.log_softmax(logits.double(), -1)
    h_pred = -(mean * mean.clamp_min(1e-300).log()).sum(-1).cpu()
    mi = h_pred - (-(logp.exp() * logp).sum(-1).mean(0)).cpu()
    rep["error_auroc_entropy"] = _auroc(h_pred, wrong)
    rep["error_auroc_mi"] = _auroc(mi, wrong) if logits.shape[0] > 1 else None
    return rep


def _auroc(score, positive) -> float:
    """P(score of a random positive > score of a random negative), ties counted ½ (Mann-Whitney U / (n₊ n₋))."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(score.double())
    s = score.double()[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    _, inv, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)   # average tied ranks
    first = torch.cumsum(counts, 0) - counts
    avg = (first + (counts + 1) / 2.0).double()
    ranks[order] = avg[inv]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_bmrs_n(args, train, val, test) -> dict:
    """BMRS_N from scratch as ``fastbayes.apps.demo.run("bmrs_n", ...)`` does it (per-weight multiplicative noise gates,
    mean CE + mean KL, gate lr ×10, masks recomputed every epoch with the released code's ΔF, the last
    ``--bmrs-finetune`` epochs with frozen masks), then compacted.  Returns its sparsity and reliability."""
    from fastbayes.apps.demo import METHODS
    torch.manual_seed(args.seed)
    criterion, options, granularity = METHODS["bmrs_n"]
    model = build(args.model, tuple(train.x.shape[1:]))
    gates = add_gates(model, granularity=granularity)
    gate_params = {id(p) for g in gates.values() for p in (g.mu, g.log_sigma)}
    opt = torch.optim.Adam([{"params": [p for p in model.parameters() if id(p) not in gate_params]},
                            {"params": [p for p in model.parameters() if id(p) in gate_params], "lr": 10 * args.lr}],
                           args.lr)
    finetune = min(args.bmrs_finetune, args.bmrs_epochs - 1)
    schedule = PruneSchedule(model, criterion, prune_epochs=args.bmrs_epochs - finetune,
                             **{**options, "code_offset": True})
    t0 = time.perf_counter()
    for epoch in range(args.bmrs_epochs):
        model.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx]) + kl_loss(model, reduction="mean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        schedule.step(epoch)
        kept = sum(int(g.mask.sum()) for g in gates.values())
        print(f"bmrs_n epoch {epoch + 1}: val acc {accuracy(model, val):.4f}, kept {kept} units "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    masks = {name: g.mask.clone() for name, g in gates.items()}
    for g in gates.values():
        g.mask.fill_(True)
    params_before = count_params(model)
    for name, g in gates.items():
        g.mask.copy_(masks[name])
    small = compact(model, test.x[:1])
    logits = dllp.predict_logits(small, test.x)
    return {"method": "BMRS_N (released-code ΔF), fastbayes gates, from scratch",
            "epochs": args.bmrs_epochs, "finetune_epochs": finetune,
            "sparsity_units": dllp.sparsity(masks),
            "kept_per_layer": {k: int(v.sum()) for k, v in masks.items()},
            "params": count_params(small), "params_gated": params_before,
            "test_accuracy": accuracy(small, test), "reliability": reliability(logits, test.y),
            "logits": logits}


@torch.no_grad()
def accuracy(model, split, bs=2000):
    model.eval()
    return sum(int((model(split.x[i:i + bs]).argmax(1) == split.y[i:i + bs]).sum())
               for i in range(0, len(split), bs)) / len(split)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet5-bmrs", choices=["lenet5-bmrs", "lenet5"],
                   help="lenet5-bmrs: BMRS's Lenet5 (6-16-120-84, 32×32 inputs); lenet5: LeNet5-Caffe (20-50-500)")
    p.add_argument("--epochs", type=int, default=3, help="plain training epochs")
    p.add_argument("--svgd-epochs", type=int, default=2)
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the plain training")
    p.add_argument("--svgd-lr", type=float, default=1e-3, help="Adam learning rate inside SVGD")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--noise", type=float, default=dllp.DEFAULT_NOISE,
                   help="particle jitter: a fraction of each parameter tensor's std (or an absolute std)")
    p.add_argument("--noise-scale", default="relative", choices=["relative", "absolute"])
    p.add_argument("--shared-batches", action="store_true",
                   help="all particles share one minibatch per step (default: each particle draws its own)")
    p.add_argument("--temperature", type=float, default=1.0, help="likelihood temperature T (posterior ∝ lik^(1/T))")
    p.add_argument("--bandwidth-scale", type=float, default=1.0, help="multiplies the median-heuristic bandwidth")
    p.add_argument("--bmrs-epochs", type=int, default=None,
                   help="BMRS_N training epochs (default: --epochs + --svgd-epochs; 0 skips BMRS_N)")
    p.add_argument("--bmrs-finetune", type=int, default=1, help="BMRS_N epochs with frozen masks at the end")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--pi", type=float, default=0.5, help="prior slab probability")
    p.add_argument("--spike-ratio", type=float, default=1e-2, help="s0 / s1 of the spike-and-slab prior")
    p.add_argument("--max-train", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="dllp_fashion.json")
    p.add_argument("--plot", default=None, help="reliability diagram PNG (default: next to --out)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.bmrs_epochs is None:
        args.bmrs_epochs = args.epochs + args.svgd_epochs
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"   # no machine paths
    command = shlex.join([exe, *(sys.argv if argv is None else [sys.argv[0], *argv])])
    print(f"command: {command}", flush=True)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    full, test = data.fashion_mnist("train"), data.fashion_mnist("test")
    if args.model == "lenet5-bmrs":   # BMRS resizes the 28×28 images to 32×32
        resize = lambda s: data.Split(F.interpolate(s.x, size=(32, 32), mode="bilinear", align_corners=False), s.y)
        full, test = resize(full), resize(test)
    train, val = data.train_val_split(full, 0.2, args.seed)
    if args.max_train:
        train = data.Split(train.x[:args.max_train], train.y[:args.max_train])
    model = build(args.model, tuple(train.x.shape[1:]))

    def plain_epoch(net, optimizer):
        net.train()
        perm = torch.randperm(len(train))
        for i in range(0, len(train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(net(train.x[idx]), train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    opt = torch.optim.Adam(model.parameters(), args.lr)
    history = []
    for epoch in range(args.epochs):
        plain_epoch(model, opt)
        history.append({"phase": "plain", "epoch": epoch + 1, "val_accuracy": accuracy(model, val),
                        "seconds": time.perf_counter() - t0})
        print(f"plain epoch {epoch + 1}: val acc {history[-1]['val_accuracy']:.4f} "
              f"({history[-1]['seconds']:.0f} s)", flush=True)
    model.eval()
    t_plain = time.perf_counter() - t0

    def on_epoch(e, ens):
        acc = float((metrics.predictive_mean(ens.predict(val.x)).argmax(1) == val.y).double().mean())
        kept = sum(int(m.sum()) for m in ens.consensus_mask().values())
        print(f"svgd epoch {e + 1}: val acc (ensemble) {acc:.4f}, consensus keeps {kept} units "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return {"phase": "svgd", "val_accuracy": acc, "seconds": time.perf_counter() - t0}

    ens = dllp.ParticleEnsemble(model, args.particles, args.noise, noise_scale=args.noise_scale, pi=args.pi,
                                spike_ratio=args.spike_ratio)
    history += ens.fit(train, args.svgd_epochs, args.svgd_lr, args.batch_size, seed=args.seed,
                       kernel="weight", per_particle_batches=not args.shared_batches, temperature=args.temperature,
                       bandwidth_scale=args.bandwidth_scale, callback=on_epoch)
    t_svgd = time.perf_counter() - t0 - t_plain

    masks = ens.consensus_mask()
    small = ens.compact_mean(test.x[:1], masks)
    ens_logits = ens.pruned(masks).predict(test.x)
    point_masks = dllp.magnitude_masks(model, masks)
    point = dllp.apply_masks(model, point_masks)
    point_logits = dllp.predict_logits(point, test.x)
    point_small = compact(model, test.x[:1], masks=point_masks)
    params = count_params(model)
    # a point estimate with the same number of passes over the data: the plain network trained on (same Adam state)
    # for --svgd-epochs more epochs, then magnitude-pruned at the same per-layer widths
    t_ft0 = time.perf_counter()
    ft = copy.deepcopy(model)
    ft_opt = torch.optim.Adam(ft.parameters(), args.lr)
    ft_opt.load_state_dict(opt.state_dict())
    for epoch in range(args.svgd_epochs):
        plain_epoch(ft, ft_opt)
    ft.eval()
    ft_masks = dllp.magnitude_masks(ft, masks)
    ft_point = dllp.apply_masks(ft, ft_masks)
    ft_logits = dllp.predict_logits(ft_point, test.x)
    t_ft = time.perf_counter() - t_ft0
    t_bmrs0 = time.perf_counter()
    bmrs = train_bmrs_n(args, train, val, test) if args.bmrs_epochs > 0 else None
    t_bmrs = time.perf_counter() - t_bmrs0
    mean_logits = dllp.predict_logits(small, test.x)
    res = {
        "command": command, "model": args.model, "dataset": "fashion-mnist", "n_train": len(train),
        "n_test": len(test), "settings": vars(args),
        "plain": {"test_accuracy": accuracy(model, test), "params": params,
                  "reliability": reliability(dllp.predict_logits(model, test.x), test.y)},
        "sparsity_units": dllp.sparsity(masks),
        "kept_per_layer": {k: int(v.sum()) for k, v in masks.items()},
        "total_per_layer": {k: int(v.numel()) for k, v in masks.items()},
        "dllp_ensemble": {"n_particles": args.particles, "params_per_particle": count_params(small),
                          "compression_pct": 100.0 * (1 - count_params(small) / params),
                          "reliability": reliability(ens_logits, test.y)},
        "dllp_compact_mean": {"test_accuracy": accuracy(small, test), "params": count_params(small),
                              "reliability": reliability(mean_logits, test.y)},
        "point_estimate": {"method": "magnitude (L2 of incoming weights), same per-layer sparsity",
                           "test_accuracy": accuracy(point, test), "params": count_params(point_small),
                           "reliability": reliability(point_logits, test.y)},
        "point_estimate_same_budget": {
            "method": f"plain network trained {args.svgd_epochs} more epochs (as many passes as SVGD), then magnitude "
                      "pruning at the same per-layer sparsity",
            "test_accuracy_unpruned": accuracy(ft, test), "test_accuracy": accuracy(ft_point, test),
            "params": count_params(compact(ft, test.x[:1], masks=ft_masks)),
            "reliability": reliability(ft_logits, test.y)},
        "bmrs_n": None if bmrs is None else {k: v for k, v in bmrs.items() if k != "logits"},
        "history": history,
        "seconds": {"plain": t_plain, "svgd": t_svgd, "point_same_budget": t_ft, "bmrs_n": t_bmrs, "total": time.perf_counter() - t0},
        "torch_threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    series = {f"DLLP ensemble ({args.particles} particles)": metrics.predictive_mean(ens_logits),
              "DLLP compact particle mean": metrics.predictive_mean(mean_logits),
              "magnitude-pruned point estimate": metrics.predictive_mean(point_logits),
              "magnitude-pruned, same budget": metrics.predictive_mean(ft_logits)}
    if bmrs is not None:
        series[f"BMRS_N ({100 * bmrs['sparsity_units']:.1f}% units pruned)"] = metrics.predictive_mean(bmrs["logits"])
    metrics.plot_reliability_diagram(series, test.y, plot, title=f"{args.model} / Fashion-MNIST, DLLP "
                                  f"{100 * res['sparsity_units']:.1f}% of units pruned")
    e, q = res["dllp_ensemble"]["reliability"], res["point_estimate"]["reliability"]
    print(f"units pruned {100 * res['sparsity_units']:.1f}% ({res['kept_per_layer']} kept), parameters removed "
          f"{res['dllp_ensemble']['compression_pct']:.1f}%")
    print(f"{'':<28}{'accuracy':>10}{'conf':>9}{'ECE':>9}{'NLL':>9}{'Brier':>9}{'MI':>9}{'AUC(H)':>8}")
    rows = [("DLLP ensemble", e), ("DLLP compact mean", res["dllp_compact_mean"]["reliability"]),
            ("point estimate (magnitude)", q),
            ("point est., same budget", res["point_estimate_same_budget"]["reliability"])]
    if bmrs is not None:
        rows.append((f"BMRS_N ({100 * bmrs['sparsity_units']:.1f}% units)", bmrs["reliability"]))
    for name, r in rows:
        print(f"{name:<28}{r['accuracy']:>10.4f}{r['mean_confidence']:>9.4f}{r['ece']:>9.4f}{r['nll']:>9.4f}{r['brier']:>9.4f}"
              f"{r['mutual_information']:>9.4f}{r['error_auroc_entropy']:>8.4f}")
    print(f"particles: accuracy {e['accuracy_mean']:.4f} ± {e['accuracy_std']:.4f}, 95% interval "
          f"[{e['accuracy_ci95'][0]:.4f}, {e['accuracy_ci95'][1]:.4f}]; compact particle mean "
          f"{res['dllp_compact_mean']['test_accuracy']:.4f}")
    print(f"wrote {out} and {plot} ({res['seconds']['total']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
