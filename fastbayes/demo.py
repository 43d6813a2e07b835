"""``fastbayes demo``: train a gated network, prune it, compact it, measure it, evaluate it, plot it.

The loop is BMRS's Algorithm 1 with the SBP/BMRS noise: train with gates, recompute the masks after every epoch,
fine-tune the last ``finetune`` epochs with the masks frozen, then fold the gates away and remove the pruned units
physically (``fastbayes.prune.compact``).  Everything runs offline on Fashion-MNIST (digits when it is missing).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import add_gates, backends, data, kl_loss
from .models import build
from .prune import PruneSchedule, compact, measure, update_masks

# method -> (criterion, criterion options, gate granularity)
METHODS = {
    "sbp": ("snr", {}, "batch"),
    "bmrs_n": ("bmrs_n", {}, "sample"),
    "bmrs_u": ("bmrs_u", {"p1": 8}, "sample"),
}


def _progress(iterable, **kw):
    try:
        from tqdm.auto import tqdm
        return tqdm(iterable, **kw)
    except ImportError:
        return iterable


@torch.no_grad()
def accuracy(model, split, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        correct += int((model(split.x[i:i + batch_size]).argmax(1) == split.y[i:i + batch_size]).sum())
    return correct / max(len(split), 1)


@torch.no_grad()
def _accuracy_vs_compression(model, gates, decisions, test, points: int = 12):
    """Prune progressively by the criterion's ranking (no fine-tuning) and record (compression %, accuracy)."""
    saved = {n: g.mask.clone() for n, g in gates.items()}
    # one global ranking: larger statistic = more prunable for ΔF, smaller for SNR
    order = []
    for name, (stat, higher_prunes) in decisions.items():
        for i, s in enumerate(stat.tolist()):
            order.append(((s if higher_prunes else -s), name, i))
    order.sort(reverse=True)
    curve = []
    total = len(order)
    for k in [round(total * f) for f in torch.linspace(0, 0.97, points).tolist()]:
        for n, g in gates.items():
            g.mask.fill_(True)
        for _, name, i in order[:k]:
            gates[name].mask[i] = False
        curve.append({"units_pruned": k, "accuracy": accuracy(model, test)})
    for n, g in gates.items():
        g.mask.copy_(saved[n])
    return curve


def run(method: str = "bmrs_n", model_name: str = "lenet5", dataset: str | None = None, epochs: int = 6,
        finetune: int = 1, seed: int = 0, out: str | Path = "fastbayes-demo", batch_size: int = 128,
        lr: float = 1e-3, max_train: int | None = None, plots: bool = True, quiet: bool = False) -> dict:
    """Run the demo; returns the report dict (also written to ``out/report.json``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    if epochs < 1 or finetune < 0 or finetune >= epochs:
        raise ValueError(f"need epochs >= 1 and 0 <= finetune < epochs, got epochs={epochs}, finetune={finetune}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = "fashion-mnist" if data.available()["fashion-mnist"] else "digits"
    torch.manual_seed(seed)
    full = data.load(dataset, "train")
    train, val = data.train_val_split(full, 0.2, seed)
    if max_train:
        train = data.Split(train.x[:max_train], train.y[:max_train])
    test = data.load(dataset, "test")
    criterion, options, granularity = METHODS[method]
    model = build(model_name, tuple(train.x.shape[1:]))
    gates = add_gates(model, granularity=granularity)
    opt = torch.optim.Adam(model.parameters(), lr)
    schedule = PruneSchedule(model, criterion, prune_epochs=epochs - finetune, **options)
    n = len(train)
    history = []
    log = print if not quiet else (lambda *a, **k: None)
    log(f"fastbayes demo: {method} on {model_name} / {dataset} ({n} train, {len(val)} val, {len(test)} test), "
        f"{epochs} epochs, backend {backends.default('cpu')}")
    t_train = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n)
        bar = _progress(range(0, n, batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=quiet)
        for i in bar:
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx]) + kl_loss(model) / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(bar, "set_postfix") and (i // batch_size) % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        report = schedule.step(epoch)
        kept = sum(int(g.mask.sum()) for g in gates.values())
        total = sum(g.num_features for g in gates.values())
        history.append({"epoch": epoch + 1, "val_accuracy": accuracy(model, val), "kept_units": kept,
                        "total_units": total, "masks_frozen": report is None})
        log(f"epoch {epoch + 1}: val acc {history[-1]['val_accuracy']:.4f}, kept {kept}/{total} units"
            + (" (masks frozen)" if report is None else ""))
    train_seconds = time.perf_counter() - t_train
    final = schedule.last_report or update_masks(model, criterion, **options)

    example = test.x[:1]
    batch = test.x[:128]
    # "before": the trained network with every unit kept; "after": the compact pruned network
    masks = {name: g.mask.clone() for name, g in gates.items()}
    for g in gates.values():
        g.mask.fill_(True)
    acc_before = accuracy(model, test)
    m_before = measure(model, batch)
    flops_before = measure(model, example, repeats=1, warmup=0, min_time=0)["flops"]
    for name, g in gates.items():
        g.mask.copy_(masks[name])
    acc_masked = accuracy(model, test)
    small = compact(model, example)
    acc_after = accuracy(small, test)
    m_after = measure(small, batch)
    flops_after = measure(small, example, repeats=1, warmup=0, min_time=0)["flops"]

    higher_prunes = criterion != "snr"
    decisions = {name: (final.statistics[name], higher_prunes) for name in gates}
    curve = _accuracy_vs_compression(model, gates, decisions, test)
    rep = {
        "method": method, "dataset": dataset, "model": model_name, "epochs": epochs, "finetune_epochs": finetune,
        "seed": seed, "granularity": granularity, "criterion": final.rule,
        "test_accuracy_before": acc_before, "test_accuracy_masked": acc_masked, "test_accuracy_after": acc_after,
        "params_before": m_before["params"], "params_after": m_after["params"],
        "flops_before": flops_before, "flops_after": flops_after,
        "compression_pct": 100.0 * (1 - m_after["params"] / m_before["params"]),
        "flops_reduction": flops_before / max(flops_after, 1),
        "kept_per_layer": final.kept_per_layer,
        "total_per_layer": {r.name: r.total for r in final.layers},
        "latency_ms_before": m_before["latency_ms"], "latency_ms_after": m_after["latency_ms"],
        "speedup": m_before["latency_ms"] / m_after["latency_ms"], "latency_batch": int(batch.shape[0]),
        "train_seconds": train_seconds, "backend": backends.default("cpu"), "device": m_before["device"],
        "history": history, "accuracy_vs_pruned_units": curve,
    }
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    if plots:
        _plots(rep, final, out)
    log(summary(rep))
    log(f"wrote {out / 'report.json'}" + (" and plots" if plots else ""))
    return rep


def summary(rep: dict) -> str:
    rows = [("test accuracy", f"{rep['test_accuracy_before']:.4f}", f"{rep['test_accuracy_after']:.4f}"),
            ("parameters", f"{rep['params_before']:,}", f"{rep['params_after']:,}"),
            ("FLOPs / example", f"{rep['flops_before']:,}", f"{rep['flops_after']:,}"),
            (f"latency ms (batch {rep['latency_batch']})", f"{rep['latency_ms_before']:.2f}",
             f"{rep['latency_ms_after']:.2f}")]
    lines = [f"{'':<26}{'before':>14}{'after':>14}"] + [f"{a:<26}{b:>14}{c:>14}" for a, b, c in rows]
    lines.append(f"compression {rep['compression_pct']:.1f}% of parameters, FLOPs ÷{rep['flops_reduction']:.2f}, "
                 f"measured speed-up ×{rep['speedup']:.2f} on {rep['device']}")
    lines.append("kept per layer: " + ", ".join(f"{k} {v}/{rep['total_per_layer'][k]}"
                                                for k, v in rep["kept_per_layer"].items()))
    return "\n".join(lines)


def _plots(rep: dict, final, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rep["kept_per_layer"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tot = [rep["total_per_layer"][n] for n in names]
    kept = [rep["kept_per_layer"][n] for n in names]
    ax.bar(names, tot, color="#d0d0d0", label="total")
    ax.bar(names, kept, color="#3a7bd5", label="kept")
    for i, (k, t) in enumerate(zip(kept, tot)):
        ax.text(i, t, f"{k}/{t}", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("units")
    ax.set_title(f"{rep['method']}: kept units per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "kept_per_layer.png", dpi=120)
    plt.close(fig)

    stats = torch.cat([s.flatten() for s in final.statistics.values()]).double()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if rep["method"] == "sbp":
        vals, thr, label = torch.log10(stats.clamp_min(1e-12)), math.log10(max(1.0, 1e-12)), "log10 SNR"
    else:
        vals, thr, label = torch.sign(stats) * torch.log10(1 + stats.abs()), 0.0, "sign(ΔF)·log10(1+|ΔF|)"
    ax.hist(vals.numpy(), bins=60, color="#3a7bd5")
    ax.axvline(thr, color="#c0392b", ls="--", label=f"threshold ({final.rule})")
    ax.set_xlabel(label)
    ax.set_ylabel("units")
    ax.set_title("pruning criterion over all units")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "criterion_histogram.png", dpi=120)
    plt.close(fig)

    curve = rep["accuracy_vs_pruned_units"]
    total = sum(rep["total_per_layer"].values())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([100 * c["units_pruned"] / total for c in curve], [c["accuracy"] for c in curve], "o-", color="#3a7bd5",
            label="prune by criterion rank (no fine-tune)")
    pruned = total - sum(rep["kept_per_layer"].values())
    ax.plot([100 * pruned / total], [rep["test_accuracy_after"]], "*", ms=14, color="#c0392b",
            label=f"{rep['method']} decision (compact model)")
    ax.set_xlabel("units pruned (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"accuracy vs compression ({rep['compression_pct']:.1f}% of parameters removed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_compression.png", dpi=120)
    plt.close(fig)

