"""The reliability claim of the DLLP particle ensemble, measured against real baselines (docs/RESULTS.md §3).

BMRS's Lenet5 (6-16-120-84, 32×32 inputs) on Fashion-MNIST (80/20 split of the training set by seed, the official
test set), every method at the same per-layer sparsity and at most the same training compute, counted in
forward-backward passes over the training set ("epochs"):

* ``dllp_shared``: the plain network (``--epochs`` E) → ``--particles`` n particles moved by f-SVGD proper for
  ``--svgd-epochs`` S (kernel on the outputs, one shared minibatch per step) → pruned by the particles' consensus
  mask.  Compute E + n·S.  Its per-layer kept counts define the sparsity of every other method.
* ``dllp``: the same with fastbayes.dllp's defaults (function kernel, each particle its own minibatch, the kernel on
  32 shared inputs per step), pruned to the same per-layer counts by mean slab responsibility.  Compute E + n·S
  (+ 32/B for the shared inputs).
* ``dllp_weight``: the same with weight-space SVGD and a minibatch per particle (the "independent-minibatch
  ensemble" of RESULTS §3), pruned to the same per-layer counts.  Compute E + n·S.
* ``dllp_repulsive``: ``dllp`` with the repulsion weighted by ``--repulsion`` α (default 1000; ``fit(repulsion=α)``,
  SVGD towards the tempered target (p(D|w) p(w))^(1/α)).  ``dllp_independent``: ``dllp`` with α = 0, the same
  particles, minibatches and kernel-smoothed scores with no interaction: the ablation the repulsion is judged by.
* ``point``: the plain network magnitude-pruned (L2 of incoming weights) at those counts, compacted, fine-tuned for
  n·S epochs.  Compute E + n·S.  ``point_temperature`` (in the same file): its logits divided by a temperature fitted
  on the validation split (no extra training).
* ``deep_ensemble``: n networks from independent initialisations, each trained for ⌊(E + n·S)/n⌋ − 1 epochs,
  magnitude-pruned to the counts, compacted and fine-tuned for 1 epoch.  Compute n·⌊(E + n·S)/n⌋ <= E + n·S.
* ``mc_dropout``: the plain network magnitude-pruned and compacted as ``point``, dropout (p = ``--dropout``) before
  each of its Linear layers, fine-tuned with it for n·S epochs, predicted with n stochastic passes.  Compute E + n·S.

Metrics (``fastbayes.metrics.uncertainty_report``): accuracy, ECE (15 bins), NLL, Brier, misclassification AUROC
and OOD AUROC by predictive entropy against scikit-learn's digits, the test images rotated by 90° and Gaussian noise
images (``fastbayes.ood``, 2,000 each), plus the accuracy–coverage curve, the calibration bins and entropy
histograms for the plots.  One JSON per (seed, method) under ``--out``; finished runs are skipped, so the driver
resumes; ``--jobs`` seeds run in parallel at one thread each.  ``--summarize`` writes summary.md and the plots.

    python examples/dllp_reliability.py --out benchmarks/results/dllp_reliability --seeds 0 1 2 --jobs 2
    python examples/dllp_reliability.py --out benchmarks/results/dllp_reliability --summarize
    python examples/dllp_reliability.py --out /tmp/smoke --max-train 2000 --epochs 1 --svgd-epochs 1 --particles 3
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("plain", "dllp_shared", "dllp", "dllp_weight", "dllp_independent", "dllp_repulsive", "point",
           "deep_ensemble", "mc_dropout")
OOD_N = 2000


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="seeds run in parallel, one thread each")
    p.add_argument("--epochs", type=int, default=10, help="plain training epochs E")
    p.add_argument("--svgd-epochs", type=int, default=2, help="SVGD epochs S")
    p.add_argument("--particles", type=int, default=8, help="particles n (also the deep ensemble's and MC passes)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every phase")
    p.add_argument("--dropout", type=float, default=0.2, help="MC dropout probability")
    p.add_argument("--repulsion", type=float, default=1000.0, help="α of the dllp_repulsive run")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                   help="run only these (default all; the plain network and the masks are made when missing)")
    p.add_argument("--max-train", type=int, default=None, help="use the first N training images (smoke runs)")
    p.add_argument("--summarize", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# data, training, evaluation

def load(seed: int, max_train):
    from fastbayes.apps import data
    train, val = data.train_val_split(data.bmrs_preprocess(data.fashion_mnist("train")), 0.2, seed)
    if max_train:
        train = data.Split(train.x[:max_train], train.y[:max_train])
        val = data.Split(val.x[:max(max_train // 4, 100)], val.y[:max(max_train // 4, 100)])
    test = data.bmrs_preprocess(data.fashion_mnist("test"))
    return train, val, test


def train_epochs(model: nn.Module, train, epochs: int, args, gen: torch.Generator) -> None:
    opt = torch.optim.Adam(model.parameters(), args.lr)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()


@torch.no_grad()
def logits_of(models, x, passes: int = 1, bs: int = 2000) -> torch.Tensor:
    """[members · passes, N, C] logits of a list of modules (``passes`` > 1: stochastic forward passes)."""
    out = []
    for m in models:
        for _ in range(passes):
            out.append(torch.cat([m(x[i:i + bs]) for i in range(0, len(x), bs)]))
    return torch.stack(out)


def evaluate(logits_fn, test, ood: dict) -> dict:
    """uncertainty_report plus what the plots need: accuracy–coverage (100 points), calibration bins, entropy
    histograms in and out of distribution (30 bins over [0, log C])."""
    from fastbayes import metrics
    lg = logits_fn(test.x)
    ood_lg = {k: logits_fn(v) for k, v in ood.items()}
    rep = metrics.uncertainty_report(lg, test.y, ood_lg)
    mean = metrics.predictive_mean(lg)
    ac = metrics.accuracy_coverage(mean, test.y)
    idx = torch.linspace(0, len(ac["coverage"]) - 1, 100).round().long()
    rep["accuracy_coverage"] = {"coverage": ac["coverage"][idx].tolist(), "accuracy": ac["accuracy"][idx].tolist(),
                                "area": ac["area"]}
    rep["calibration_bins"] = {k: (v.tolist() if torch.is_tensor(v) else v)
                               for k, v in metrics.calibration_bins(mean, test.y).items()}
    top = math.log(lg.shape[-1])
    hist = lambda p: torch.histc(metrics.entropy(p).float(), 30, 0, top).tolist()  # noqa: E731
    rep["entropy_hist"] = {"in": hist(mean), **{k: hist(metrics.predictive_mean(v)) for k, v in ood_lg.items()}}
    return rep


def magnitude_compact(model, masks, example):
    from fastbayes import dllp
    from fastbayes.prune import compact
    return compact(model, example, masks=dllp.magnitude_masks(model, masks))


def add_dropout(model: nn.Module, p: float) -> nn.Module:
    """Dropout before every Linear layer, active in eval mode too (MC dropout: the stochastic passes at test time)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.register_forward_pre_hook(lambda mod, inp: (F.dropout(inp[0], p, training=True),))
    return model


# ---------------------------------------------------------------------------------------------------------------
# one seed

def run_seed(seed: int, args) -> None:
    torch.set_num_threads(1)
    from fastbayes import dllp
    from fastbayes.apps.models import build
    from fastbayes.ood import ood_sets
    from fastbayes.prune.measure import count_params

    out, cache = args.out, args.out / "models"
    cache.mkdir(parents=True, exist_ok=True)
    train, val, test = load(seed, args.max_train)
    ood = ood_sets(test.x, seed=seed, n=min(OOD_N, len(test)))
    example = test.x[:1]
    E, S, n = args.epochs, args.svgd_epochs, args.particles
    budget = E + n * S

    def done(method):
        return (out / f"seed{seed}_{method}.json").exists()

    def wanted(method):
        return args.methods is None or method in args.methods

    def write(method, rep, t0, compute):
        rep.update({"method": method, "seed": seed, "compute_epochs": compute, "budget_epochs": budget,
                    "seconds": round(time.time() - t0, 1), "settings": vars_of(args)})
        (out / f"seed{seed}_{method}.json").write_text(json.dumps(rep, indent=1))
        print(f"seed {seed} {method}: acc {rep.get('accuracy', float('nan')):.4f} nll {rep.get('nll', float('nan')):.4f} "
              f"ece {rep.get('ece', float('nan')):.4f} ood {rep.get('ood_auroc') or float('nan'):.3f} "
              f"({rep['seconds']:.0f} s)", flush=True)

    # the plain network every DLLP / point / MC-dropout run starts from
    plain_path = cache / f"seed{seed}_plain.pt"
    torch.manual_seed(seed)
    plain = build("lenet5-bmrs", (1, 32, 32))
    if plain_path.exists():
        plain.load_state_dict(torch.load(plain_path))
        plain.eval()
    else:
        t0 = time.time()
        train_epochs(plain, train, E, args, torch.Generator().manual_seed(seed))
        torch.save(plain.state_dict(), plain_path)
        write("plain", {**evaluate(lambda x: logits_of([plain], x), test, ood), "params": count_params(plain)},
              t0, E)

    masks_path = cache / f"seed{seed}_masks.pt"
    if not masks_path.exists() or not done("dllp_shared"):
        t0 = time.time()
        ens = dllp.ParticleEnsemble(plain, n, generator=torch.Generator().manual_seed(seed))
        hist = ens.fit(train, S, args.lr, args.batch_size, seed=seed, kernel="function", per_particle_batches=False)
        masks = ens.consensus_mask()
        torch.save(masks, masks_path)
        pruned = ens.pruned(masks)
        rep = evaluate(lambda x: pruned.predict(x), test, ood)
        rep.update(history=hist, kept_per_layer={k: int(v.sum()) for k, v in masks.items()},
                   total_per_layer={k: int(v.numel()) for k, v in masks.items()},
                   sparsity_units=dllp.sparsity(masks), params=count_params(ens.compact_mean(example, masks)))
        write("dllp_shared", rep, t0, budget)
    masks = torch.load(masks_path)
    counts = {k: int(v.sum()) for k, v in masks.items()}

    for method, kernel, alpha in (("dllp", "function", 1.0), ("dllp_weight", "weight", 1.0),
                                  ("dllp_independent", "function", 0.0),
                                  ("dllp_repulsive", "function", args.repulsion)):
        if done(method) or not wanted(method):
            continue
        t0 = time.time()
        ens = dllp.ParticleEnsemble(plain, n, generator=torch.Generator().manual_seed(seed))
        hist = ens.fit(train, S, args.lr, args.batch_size, seed=seed, kernel=kernel, per_particle_batches=True,
                       repulsion=alpha)
        mean_r = {k: v.double().mean(0) for k, v in ens.responsibilities().items()}
        own_masks = {}
        for k, r in mean_r.items():       # the dllp_shared run's per-layer counts, by mean slab responsibility
            keep = torch.zeros(r.numel(), dtype=torch.bool)
            keep[torch.topk(r, counts[k]).indices] = True
            own_masks[k] = keep
        pruned = ens.pruned(own_masks)
        rep = evaluate(lambda x: pruned.predict(x), test, ood)
        rep.update(history=hist, consensus_kept=sum(int(v.sum()) for v in ens.consensus_mask().values()),
                   repulsion=alpha)
        write(method, rep, t0, budget)

    if not done("point") and wanted("point"):
        t0 = time.time()
        small = magnitude_compact(plain, masks, example)
        train_epochs(small, train, n * S, args, torch.Generator().manual_seed(seed + 1000))
        rep = evaluate(lambda x: logits_of([small], x), test, ood)
        from fastbayes import metrics
        temp = metrics.fit_temperature(logits_of([small], val.x), val.y)
        rep["point_temperature"] = {"temperature": temp,
                                    **evaluate(lambda x: logits_of([small], x) / temp, test, ood)}
        rep["params"] = count_params(small)
        write("point", rep, t0, budget)

    if not done("deep_ensemble") and wanted("deep_ensemble"):
        t0 = time.time()
        each = budget // n
        members = []
        for k in range(n):
            torch.manual_seed(10_000 * (seed + 1) + k)
            m = build("lenet5-bmrs", (1, 32, 32))
            g = torch.Generator().manual_seed(10_000 * (seed + 1) + k)
            train_epochs(m, train, each - 1, args, g)
            m = magnitude_compact(m, masks, example)
            train_epochs(m, train, 1, args, g)
            members.append(m)
        write("deep_ensemble", {**evaluate(lambda x: logits_of(members, x), test, ood),
                                "epochs_per_member": each}, t0, n * each)

    if not done("mc_dropout") and wanted("mc_dropout"):
        t0 = time.time()
        torch.manual_seed(seed)
        small = add_dropout(magnitude_compact(plain, masks, example), args.dropout)
        train_epochs(small, train, n * S, args, torch.Generator().manual_seed(seed + 2000))
        write("mc_dropout", {**evaluate(lambda x: logits_of([small], x, passes=n), test, ood),
                             "dropout": args.dropout}, t0, budget)


def vars_of(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("summarize", "jobs")}


# ---------------------------------------------------------------------------------------------------------------
# summary

ROWS = [("dllp", "DLLP ensemble (function kernel, own minibatches; default)"),
        ("dllp_repulsive", "DLLP, repulsion × α (tempered)"), ("dllp_independent", "DLLP, no repulsion (α = 0)"),
        ("dllp_shared", "DLLP, f-SVGD on a shared minibatch"),
        ("dllp_weight", "DLLP, weight-space SVGD, own minibatches"),
        ("deep_ensemble", "deep ensemble (n independent, pruned)"), ("mc_dropout", "MC dropout on the pruned net"),
        ("point", "point estimate (pruned, fine-tuned)"), ("point_temperature", "point estimate + temperature"),
        ("plain", "plain dense network (not pruned)")]
KEYS = [("accuracy", "acc"), ("ece", "ECE"), ("nll", "NLL"), ("brier", "Brier"),
        ("misclassification_auroc", "misclass. AUROC"), ("ood_auroc", "OOD AUROC")]


def load_runs(out: Path) -> dict:
    runs = {}
    for f in sorted(out.glob("seed*_*.json")):
        rep = json.loads(f.read_text())
        runs.setdefault(rep["method"], {})[rep["seed"]] = rep
        if rep["method"] == "point":
            runs.setdefault("point_temperature", {})[rep["seed"]] = rep["point_temperature"]
    return runs


def fmt(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f}"


def summarize(out: Path) -> None:
    runs = load_runs(out)
    lines = ["# DLLP reliability against baselines (BMRS Lenet5 / Fashion-MNIST)", "",
             f"Made with `{' '.join(shlex.quote(a) for a in sys.argv)}`; mean ± std over seeds "
             f"({', '.join(str(s) for s in sorted({s for r in runs.values() for s in r}))}).", "",
             "| method | seeds | compute (epochs) | " + " | ".join(k for _, k in KEYS) + " | MI |",
             "|---|---:|---:|" + "---:|" * (len(KEYS) + 1)]
    for key, label in ROWS:
        r = runs.get(key, {})
        if not r:
            continue
        comp = runs.get("point" if key == "point_temperature" else key, {})
        c = sorted({v.get("compute_epochs") for v in comp.values()})
        lines.append(f"| {label} | {len(r)} | {'/'.join(str(x) for x in c)} | "
                     + " | ".join(fmt([v.get(k) for v in r.values()]) for k, _ in KEYS)
                     + f" | {fmt([v.get('mutual_information') for v in r.values()])} |")
    d = runs.get("dllp_shared", {})
    if d:
        any_rep = next(iter(d.values()))
        lines += ["", f"Kept units per layer (dllp_shared consensus, seed {next(iter(d))}): {any_rep['kept_per_layer']} of "
                      f"{any_rep['total_per_layer']}; units pruned {fmt([v['sparsity_units'] for v in d.values()])}.",
                  "", "OOD AUROC per set:", "", "| method | " + " | ".join(any_rep["ood_auroc_per_set"]) + " |",
                  "|---|" + "---:|" * len(any_rep["ood_auroc_per_set"])]
        for key, label in ROWS:
            r = runs.get(key, {})
            if r:
                lines.append(f"| {label} | " + " | ".join(fmt([v["ood_auroc_per_set"].get(s) for v in r.values()])
                                                      for s in any_rep["ood_auroc_per_set"]) + " |")
        alphas = sorted({v.get("repulsion") for v in runs.get("dllp_repulsive", {}).values()})
        if alphas:
            lines += ["", f"dllp_repulsive: repulsion weight α = {', '.join(f'{a:g}' for a in alphas)}."]
        lines += ["", "SVGD repulsion / driving (last epoch, in the weights):", ""]
        for key in ("dllp", "dllp_shared", "dllp_weight", "dllp_independent", "dllp_repulsive"):
            r = runs.get(key, {})
            if r:
                lines.append(f"* {key}: " + ", ".join(f"seed {s}: {v['history'][-1]['repulsion_ratio']:.2e}"
                                                      for s, v in sorted(r.items())))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plots(runs, out)


def plots(runs: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [(k, lbl) for k, lbl in ROWS if runs.get(k) and k != "plain"]
    if not shown:
        return
    seed = min(runs[shown[0][0]])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for k, lbl in shown:
        rep = runs[k].get(seed)
        if rep is None:
            continue
        b = rep["calibration_bins"]
        conf, acc, cnt = b["confidence"], b["accuracy"], b["fraction"]
        pts = [(c, a) for c, a, m in zip(conf, acc, cnt) if m > 0]
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"{lbl} (ECE {rep['ece']:.3f})")
        ac = rep["accuracy_coverage"]
        axes[1].plot(ac["coverage"], ac["accuracy"], label=f"{lbl} (area {ac['area']:.4f})")
    axes[0].plot([0, 1], [0, 1], "k:", lw=1)
    axes[0].set(xlabel="confidence", ylabel="accuracy", title=f"reliability diagram (seed {seed})")
    axes[1].set(xlabel="coverage (most confident first)", ylabel="accuracy", title="accuracy–coverage")
    axes[0].legend(fontsize=6, loc="upper left")
    axes[1].legend(fontsize=6, loc="lower left")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "reliability_and_coverage.png", dpi=120)
    plt.close(fig)

    sets = list(runs[shown[0][0]][seed]["entropy_hist"])
    fig, axes = plt.subplots(len(shown), 1, figsize=(7, 1.6 * len(shown)), sharex=True)
    for ax, (k, lbl) in zip(axes, shown):
        rep = runs[k].get(seed)
        if rep is None:
            continue
        for s in sets:
            h = torch.tensor(rep["entropy_hist"][s])
            ax.step(torch.linspace(0, 1, len(h)).tolist(), (h / h.sum()).tolist(), where="mid",
                    label=s if s != "in" else "test (in)")
        ax.set_ylabel(k, fontsize=7)
        ax.set_title(f"{lbl}: OOD AUROC {rep['ood_auroc']:.3f}", fontsize=8)
    axes[0].legend(fontsize=7, ncol=len(sets))
    axes[-1].set_xlabel("predictive entropy / log C")
    fig.tight_layout()
    fig.savefig(out / "ood_entropy.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        summarize(args.out)
        return
    os.environ["OMP_NUM_THREADS"] = "1"
    if args.jobs <= 1 or len(args.seeds) == 1:
        for s in args.seeds:
            run_seed(s, args)
        return
    with get_context("spawn").Pool(args.jobs) as pool:
        pool.starmap(run_seed, [(s, args) for s in args.seeds])


if __name__ == "__main__":
    main()
