"""``fastbayes demo``: train a gated network and, in the same run, the same architecture without gates (the dense
baseline); prune, compact, measure both, evaluate, plot.

Contract: ``run(...)`` returns the report dict and writes ``out/report.json``; ``speedup`` is the dense baseline's
latency over the compact model's, both measured in this run.  Why a trained dense twin: the gated model in eval mode
is not what a user would deploy without fastbayes, so it is no fair "before".  Loop and settings: docs/RESULTS.md §1.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import add_gates, backends, kl_loss
from ..nn import param_groups
from ..prune import PruneSchedule, compact, measure, post_training, update_masks
from ..prune.masks import report as mask_report
from . import data
from .models import build

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


# BMRS's own models take its preprocessing: 32×32 inputs, x − 127/255 (``data.bmrs_preprocess``)
BMRS_MODELS = ("lenet5-bmrs", "bmrs-mlp")


def _prepare(out, dataset, seed, max_train, model_name=None):
    """Every method's common start: the output folder, the data set (Fashion-MNIST if installed, else digits),
    the seeded 80/20 train/validation split (optionally cut to ``max_train``) and the test split, preprocessed as
    BMRS does for its models (``BMRS_MODELS``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = "fashion-mnist" if data.available()["fashion-mnist"] else "digits"
    torch.manual_seed(seed)
    train, val = data.train_val_split(data.load(dataset, "train"), 0.2, seed)
    if max_train:
        train = data.Split(train.x[:max_train], train.y[:max_train])
    test = data.load(dataset, "test")
    if model_name in BMRS_MODELS:
        train, val, test = (data.bmrs_preprocess(sp) for sp in (train, val, test))
    return out, dataset, train, val, test


def _finetune_default(epochs: int, finetune: int | None) -> int:
    """One fine-tune epoch when there is room for it (``--epochs 1`` has none)."""
    return min(1, epochs - 1) if finetune is None else finetune


def _train_dense(model_name, train, val, epochs, batch_size, lr, init_state, quiet, log, *, restore_rng=True,
                 label="dense"):
    """Train ``build(model_name)`` without gates: Adam(lr), cross-entropy, ``epochs`` epochs of ``batch_size``.

    Returns ``(net, train_seconds, history)``.  ``init_state`` is torch's RNG state to build from, so the baseline
    starts from the gated model's initial weights; the caller's RNG state is restored afterwards (unless
    ``restore_rng=False``), so training a baseline does not change the gated run's draws."""
    saved = torch.get_rng_state()
    torch.set_rng_state(init_state)
    try:
        net = build(model_name, tuple(train.x.shape[1:]))
        opt = torch.optim.Adam(net.parameters(), lr)
        n, history = len(train), []
        t0 = time.perf_counter()
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(n)
            for i in _progress(range(0, n, batch_size), desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False,
                               disable=quiet):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(net(train.x[idx]), train.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            history.append({"epoch": epoch + 1, "val_accuracy": accuracy(net, val)})
            log(f"{label} epoch {epoch + 1}: val acc {history[-1]['val_accuracy']:.4f}")
        seconds = time.perf_counter() - t0
    finally:
        if restore_rng:
            torch.set_rng_state(saved)
    return net, seconds, history


def _paired_latency(dense, small, batch, rounds: int = 3) -> tuple[float, float]:
    """Median latency (ms) of ``dense`` and ``small``, measured alternately ``rounds`` times (10 calls each) so that
    both see the same machine load; the speed-up is their ratio."""
    import statistics

    from ..prune.measure import latency_ms
    a, b = [], []
    for _ in range(rounds):
        a.append(latency_ms(dense, batch, repeats=10, min_time=0.05))
        b.append(latency_ms(small, batch, repeats=10, min_time=0.05))
    return statistics.median(a), statistics.median(b)


def _dense_keys(dense, dense_seconds, dense_history, test, example, batch, small, description) -> dict:
    """The report's ``dense_*`` keys and ``speedup`` (dense latency / compact latency, same run); all None, and no
    speed-up, without a baseline."""
    if dense is None:
        return {"dense_baseline": None, "dense_test_accuracy": None, "dense_params": None, "dense_flops": None,
                "dense_latency_ms": None, "dense_train_seconds": None, "dense_history": None, "speedup": None}
    from ..prune.measure import count_flops, count_params
    lat_dense, lat_small = _paired_latency(dense, small, batch)
    return {"dense_baseline": description, "dense_test_accuracy": accuracy(dense, test),
            "dense_params": count_params(dense), "dense_flops": count_flops(dense, example),
            "dense_latency_ms": lat_dense, "latency_ms_after": lat_small, "dense_train_seconds": dense_seconds,
            "dense_history": dense_history, "speedup": lat_dense / lat_small}


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


PRICE = 0.01   # "bernoulli": nats per parameter of the cost-aware prior (docs/RESULTS.md §2)


def run(method: str = "bmrs_n", model_name: str = "lenet5", dataset: str | None = None, epochs: int = 6,
        finetune: int | None = None, seed: int = 0, out: str | Path = "fastbayes-demo", batch_size: int = 128,
        lr: float = 1e-3, max_train: int | None = None, plots: bool = True, quiet: bool = False, *,
        n_particles: int = 8, svgd_epochs: int = 2, kl: str = "mean", gate_lr_factor: float = 10.0,
        delta_f: str = "code", dense: bool = True, post_training_steps: int = 0, price: float = PRICE,
        decide_batch: int | None = None, repulsion: float = 1.0) -> dict:
    """Train, prune, compact and measure; returns the report dict, also written to ``out/report.json``.

    * ``method``: "sbp", "bmrs_n", "bmrs_u" (gated training, masks recomputed every epoch, the last ``finetune``
      epochs with the masks frozen; default ``min(1, epochs - 1)``), "bernoulli" or "dllp" (``epochs`` plain epochs,
      then ``svgd_epochs`` of SVGD with ``n_particles``; ``finetune`` unused).
    * ``dense=True`` also trains the same architecture without gates (same data, seed, initial weights, epochs, batch
      size, lr): the ``dense_*`` keys, and ``speedup`` = its latency / the compact model's.  ``dense=False``: those
      keys and ``speedup`` are None (no speed-up is claimed).
    * ``kl``: "mean" (the BMRS code's weighting, prunes within a demo's few epochs) or "elbo" (KL/N);
      docs/METHODS.md §2.1.
    * ``gate_lr_factor``: lr multiplier of the gates' μ and log σ, 10 by default so that log σ moves in ~2 epochs
      instead of ~15 (docs/METHODS.md §1.4).
    * ``price``: "bernoulli"'s cost-aware prior, nats per parameter over the training set (``CostPrior``).
    * ``repulsion``: "dllp": weight α of SVGD's repulsive term (``ParticleEnsemble.fit(repulsion=...)``; 0 switches
      the interaction off, α > 1 targets the tempered posterior; docs/RESULTS.md §3.2).
    * ``decide_batch``: "bernoulli": training examples on which ``decide`` judges the units in transit after every
      epoch (default ``DECIDE_BATCH``; their exact gradients' noise floor sets the final widths; docs/RESULTS.md §2).
    * ``delta_f``: ΔF_N of "bmrs_n", "code" (the released code's, +½·log 2π; prunes) or "paper" (exact);
      docs/METHODS.md §2.3.
    * ``post_training_steps`` > 0: BMRS §5 instead of pruning while training: all ``epochs`` train without masks,
      then ``fastbayes.prune.post_training`` removes 1/``post_training_steps`` of the units per step (one fine-tune
      epoch each) and the model continues from where the criterion's rule stops; report key ``post_training`` and
      the plot ``post_training.png`` hold the accuracy–compression curve with the stop marked.

    Raises ValueError naming the argument for bad values."""
    if method == "bernoulli":
        return _run_bernoulli(model_name, dataset, epochs, seed, out, batch_size, lr, max_train, plots, quiet, dense,
                              price, decide_batch)
    if method == "dllp":
        from ..dllp import _finite
        repulsion = _finite("repulsion", repulsion, nonnegative=True)   # before anything is trained or written
        return _run_dllp(model_name, dataset, epochs, seed, out, batch_size, lr, max_train, plots, quiet,
                         n_particles, svgd_epochs, repulsion)
    finetune = _finetune_default(epochs, finetune)
    if delta_f not in ("code", "paper"):
        raise ValueError(f"delta_f must be 'code' or 'paper', got {delta_f!r}")
    if not gate_lr_factor > 0:
        raise ValueError(f"gate_lr_factor must be positive, got {gate_lr_factor!r}")
    if kl not in ("mean", "elbo"):
        raise ValueError(f"kl must be 'mean' or 'elbo', got {kl!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS) + ('dllp', 'bernoulli')}, got {method!r}")
    if epochs < 1 or finetune < 0 or finetune >= epochs:
        raise ValueError(f"need epochs >= 1 and 0 <= finetune < epochs, got epochs={epochs}, finetune={finetune}")
    if isinstance(post_training_steps, bool) or not isinstance(post_training_steps, int) or post_training_steps < 0:
        raise ValueError(f"post_training_steps must be a non-negative integer, got {post_training_steps!r}")
    out, dataset, train, val, test = _prepare(out, dataset, seed, max_train, model_name)
    criterion, options, granularity = METHODS[method]
    if criterion == "bmrs_n":
        options = {**options, "code_offset": delta_f == "code"}
    init_state = torch.get_rng_state()       # the dense baseline is built from the same state: same weights
    model = build(model_name, tuple(train.x.shape[1:]))
    # BMRS's own models carry their noise after the activation, as its released code does
    placement = "activation" if model_name in ("bmrs-mlp", "lenet5-bmrs") else None
    gates = add_gates(model, granularity=granularity, placement=placement)
    opt = torch.optim.Adam(param_groups(model, lr, gate_lr_factor), lr)
    schedule = PruneSchedule(model, criterion, prune_epochs=epochs - finetune, **options) \
        if not post_training_steps else None
    n = len(train)
    history = []
    log = print if not quiet else (lambda *a, **k: None)
    log(f"fastbayes demo: {method} on {model_name} / {dataset} ({n} train, {len(val)} val, {len(test)} test), "
        f"{epochs} epoch(s) ({f'the last {finetune} with the masks frozen' if finetune else 'no fine-tune epoch'}), "
        f"backend {backends.default('cpu')}")
    t_train = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n)
        bar = _progress(range(0, n, batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=quiet)
        for i in bar:
            idx = perm[i:i + batch_size]
            reg = kl_loss(model, reduction="mean") if kl == "mean" else kl_loss(model) / n
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx]) + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(bar, "set_postfix") and (i // batch_size) % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        report = schedule.step(epoch) if schedule is not None else None
        kept = sum(int(g.mask.sum()) for g in gates.values())
        total = sum(g.num_features for g in gates.values())
        history.append({"epoch": epoch + 1, "val_accuracy": accuracy(model, val), "kept_units": kept,
                        "total_units": total, "masks_frozen": report is None})
        log(f"epoch {epoch + 1}: val acc {history[-1]['val_accuracy']:.4f}, kept {kept}/{total} units"
            + (" (masks frozen)" if report is None and schedule is not None else ""))
    train_seconds = time.perf_counter() - t_train
    curve_post = None
    if post_training_steps:
        total_units = sum(g.num_features for g in gates.values())
        batches = lambda split: [(split.x[i:i + batch_size], split.y[i:i + batch_size])  # noqa: E731
                                 for i in range(0, len(split), batch_size)]
        log(f"post-training pruning: {math.ceil(total_units / post_training_steps)} units per step, one fine-tune "
            "epoch each")
        curve_post = post_training(model, criterion, batches(train), batches(val), lr=lr,
                                   step_units=math.ceil(total_units / post_training_steps), progress=not quiet,
                                   restore="stop", **options)
        final = mask_report(model, criterion, **options)
    else:
        final = schedule.last_report or update_masks(model, criterion, **options)
    net = hist = dense_seconds = None
    if dense:
        net, dense_seconds, hist = _train_dense(model_name, train, val, epochs, batch_size, lr, init_state, quiet, log)

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
    baseline = (f"{model_name} without gates, trained in this run: same data, seed, initial weights, {epochs} "
                f"epoch(s), batch {batch_size}, Adam lr {lr:g}")
    rep = {
        "kl_weighting": kl, "gate_lr": lr * gate_lr_factor, "criterion_options": options, "method": method,
        "dataset": dataset, "model": model_name, "epochs": epochs, "finetune_epochs": finetune,
        "seed": seed, "granularity": granularity, "criterion": final.rule,
        "test_accuracy_before": acc_before, "test_accuracy_masked": acc_masked, "test_accuracy_after": acc_after,
        "params_before": m_before["params"], "params_after": m_after["params"],
        "flops_before": flops_before, "flops_after": flops_after,
        "compression_pct": 100.0 * (1 - m_after["params"] / m_before["params"]),
        "flops_reduction": flops_before / max(flops_after, 1),
        "kept_per_layer": final.kept_per_layer,
        "total_per_layer": {r.name: r.total for r in final.layers},
        "latency_ms_before": m_before["latency_ms"], "latency_ms_after": m_after["latency_ms"],
        "latency_batch": int(batch.shape[0]),
        "train_seconds": train_seconds, "backend": backends.default("cpu"), "device": m_before["device"],
        "history": history, "accuracy_vs_pruned_units": curve,
        "post_training": curve_post.to_dict() if curve_post is not None else None,
        **_dense_keys(net, dense_seconds, hist, test, example, batch, small, baseline),
    }
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    if plots:
        _plots(rep, final, out)
        if curve_post is not None:
            curve_post.plot(out / "post_training.png", label=f"{method} (post-training)")
    log(summary(rep))
    log(f"wrote {out / 'report.json'}" + (" and plots" if plots else ""))
    return rep


def summary(rep: dict) -> str:
    """The printed table: dense baseline ("before"), the model with gates, the compact pruned model ("after")."""
    def num(v, fmt):
        return "–" if v is None else format(v, fmt)

    method, dense = rep["method"], rep.get("dense_test_accuracy") is not None
    if method == "dllp":     # the gated model is the particle ensemble; its size is n_particles × the compact one
        mid_head = f"ensemble ×{rep['n_particles']}"
        mid = [rep["reliability"]["accuracy"], None, None, None]
    elif method == "bernoulli":     # the gated model shrank while it trained: only its accuracy differs
        mid_head, mid = "with gates", [rep["test_accuracy_before"], None, None, None]
    else:
        mid_head = "gated, all kept"
        mid = [rep["test_accuracy_before"], rep["params_before"], rep["flops_before"], rep["latency_ms_before"]]
    cols = [[rep.get("dense_test_accuracy"), rep.get("dense_params"), rep.get("dense_flops"),
             rep.get("dense_latency_ms")], mid,
            [rep["test_accuracy_after"], rep["params_after"], rep["flops_after"], rep["latency_ms_after"]]]
    names = ["test accuracy", "parameters", "FLOPs / example", f"latency ms (batch {rep['latency_batch']})"]
    fmts = [".4f", ",", ",", ".2f"]
    lines = [f"{'':<26}{'dense (before)':>16}{mid_head:>17}{'pruned compact':>16}"]
    for r, (name, fmt) in enumerate(zip(names, fmts)):
        lines.append(f"{name:<26}" + "".join(f"{num(c[r], fmt):>{w}}" for c, w in zip(cols, (16, 17, 16))))
    if dense:
        lines.append(f"dense baseline: {rep['dense_baseline']} ({rep['dense_train_seconds']:.1f} s of training vs "
                     f"{rep['train_seconds']:.1f} s with gates)")
        lines.append(f"compression {rep['compression_pct']:.1f}% of parameters, FLOPs ÷{rep['flops_reduction']:.2f}, "
                     f"speed-up ×{rep['speedup']:.2f} (dense latency / compact latency, measured alternately in this "
                     f"run on {rep['device']})")
    else:
        lines.append(f"compression {rep['compression_pct']:.1f}% of parameters, FLOPs ÷{rep['flops_reduction']:.2f}; "
                     "no dense baseline trained (--no-dense), so no speed-up is claimed")
    lines.append("kept per layer: " + ", ".join(f"{k} {v}/{rep['total_per_layer'][k]}"
                                                for k, v in rep["kept_per_layer"].items()))
    return "\n".join(lines)


def _plot_kept_per_layer(rep: dict, out: Path, title: str) -> None:
    """Bar chart of kept vs total units per gated layer (log scale), written to ``out/kept_per_layer.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rep["kept_per_layer"])
    tot = [rep["total_per_layer"][n] for n in names]
    kept = [rep["kept_per_layer"][n] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, tot, color="#d0d0d0", label="total")
    ax.bar(names, kept, color="#3a7bd5", label="kept")
    for i, (k, t) in enumerate(zip(kept, tot)):
        ax.text(i, t, f"{k}/{t}", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("units")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "kept_per_layer.png", dpi=120)
    plt.close(fig)


def _plot_accuracy_vs_compression(rep: dict, out: Path, curve_label: str, decision_pct: float,
                                  decision_label: str) -> None:
    """The accuracy of progressively pruned models against the share of units removed, with the method's decision."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve, total = rep["accuracy_vs_pruned_units"], sum(rep["total_per_layer"].values())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([100 * c["units_pruned"] / total for c in curve], [c["accuracy"] for c in curve], "o-", color="#3a7bd5",
            label=curve_label)
    ax.plot([decision_pct], [rep["test_accuracy_after"]], "*", ms=14, color="#c0392b", label=decision_label)
    ax.set_xlabel("units pruned (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"accuracy vs compression ({rep['compression_pct']:.1f}% of parameters removed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_compression.png", dpi=120)
    plt.close(fig)


def _plots(rep: dict, final, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _plot_kept_per_layer(rep, out, f"{rep['method']}: kept units per layer")

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

    total = sum(rep["total_per_layer"].values())
    pruned = total - sum(rep["kept_per_layer"].values())
    _plot_accuracy_vs_compression(rep, out, "prune by criterion rank (no fine-tune)", 100 * pruned / total,
                                  f"{rep['method']} decision (compact model)")


# ----------------------------------------------------------------------------------------------------------------
# method "dllp": SVGD particle pruning with a reliability report (fastbayes.dllp, docs/METHODS.md §4)

def _run_dllp(model_name, dataset, epochs, seed, out, batch_size, lr, max_train, plots, quiet, n_particles,
              svgd_epochs, repulsion=1.0) -> dict:
    """Train the plain network, run SVGD on ``n_particles`` particles, prune by consensus, compact the particle mean
    and report the common keys plus ``n_particles``, ``reliability`` of the pruned ensemble
    (``metrics.uncertainty_report``: calibration, misclassification and OOD AUROC), ``baselines`` (``point``: the
    plain network magnitude-pruned at the same per-layer sparsity; ``point_temperature``: the same temperature-scaled
    on the validation split; same keys) and ``repulsion_ratio`` (SVGD's last recorded repulsive/driving ratio)."""
    from .. import dllp, metrics

    if not isinstance(epochs, int) or epochs < 1 or not isinstance(svgd_epochs, int) or svgd_epochs < 1:
        raise ValueError(f"need epochs >= 1 and svgd_epochs >= 1, got epochs={epochs}, svgd_epochs={svgd_epochs}")
    out, dataset, train, val, test = _prepare(out, dataset, seed, max_train, model_name)
    log = print if not quiet else (lambda *a, **k: None)
    log(f"fastbayes demo: dllp on {model_name} / {dataset} ({len(train)} train, {len(val)} val, {len(test)} test), "
        f"{epochs} plain epochs, then SVGD with {n_particles} particles for {svgd_epochs} epochs")
    t_train = time.perf_counter()
    # the plain phase is the dense baseline itself (no gates; the particles start from it)
    model, plain_seconds, plain_history = _train_dense(model_name, train, val, epochs, batch_size, lr,
                                                       torch.get_rng_state(), quiet, log, restore_rng=False,
                                                       label="plain")
    history = [{**h, "phase": "plain"} for h in plain_history]
    model.eval()

    def on_epoch(e, ens):
        acc = float((metrics.predictive_mean(ens.predict(val.x)).argmax(1) == val.y).double().mean())
        kept = sum(int(m.sum()) for m in ens.consensus_mask().values())
        log(f"svgd epoch {e + 1}: val acc (ensemble) {acc:.4f}, consensus keeps {kept} units")
        return {"phase": "svgd", "val_accuracy": acc}

    # particles: the trained network jittered by 0.1 × each parameter tensor's std, each drawing its own minibatches,
    # moved by SVGD with the kernel on their outputs over shared inputs (docs/METHODS.md §4.2, RESULTS.md §3)
    svgd_settings = {"noise": dllp.DEFAULT_NOISE, "noise_scale": "relative", "kernel": "function",
                     "per_particle_batches": True, "measurement": min(batch_size, 32), "temperature": 1.0,
                     "bandwidth": "median heuristic med²/log(n+1)", "repulsion": repulsion}
    ens = dllp.ParticleEnsemble(model, n_particles, dllp.DEFAULT_NOISE, noise_scale="relative")
    for h in ens.fit(train, svgd_epochs, lr, batch_size, seed=seed, kernel="function", temperature=1.0,
                     repulsion=repulsion, callback=on_epoch, progress=not quiet):
        history.append({**h, "epoch": epochs + h["epoch"]})
    train_seconds = time.perf_counter() - t_train
    masks = ens.consensus_mask()

    example, batch = test.x[:1], test.x[:128]
    mean_net = ens.mean_module()
    masked = dllp.apply_masks(mean_net, masks)
    small = compact(mean_net, example, masks=masks)
    m_before, m_after = measure(model, batch), measure(small, batch)
    flops_before = measure(model, example, repeats=1, warmup=0, min_time=0)["flops"]
    flops_after = measure(small, example, repeats=1, warmup=0, min_time=0)["flops"]
    pruned_ens = ens.pruned(masks)
    point = dllp.apply_masks(model, dllp.magnitude_masks(model, masks))
    ood = _ood_inputs(test.x, dataset, seed)
    ens_logits = pruned_ens.predict(test.x)
    point_logits = dllp.predict_logits(point, test.x)
    # temperature scaling of the point estimate, fitted on the validation split (the cheapest calibration fix)
    temperature = metrics.fit_temperature(dllp.predict_logits(point, val.x), val.y)
    reliability = metrics.uncertainty_report(ens_logits, test.y, {k: pruned_ens.predict(v) for k, v in ood.items()})
    point_ood = {k: dllp.predict_logits(point, v) for k, v in ood.items()}
    baselines = {
        "point": {"method": "the plain network magnitude-pruned (L2 of incoming weights) at the same per-layer "
                            "sparsity, no fine-tuning",
                  **metrics.uncertainty_report(point_logits, test.y, point_ood)},
        "point_temperature": {"method": "the same, its logits divided by a temperature fitted on the validation "
                                        "split (NLL)", "temperature": temperature,
                              **metrics.uncertainty_report(point_logits / temperature, test.y,
                                                           {k: v / temperature for k, v in point_ood.items()})},
    }
    mean_r = {k: v.double().mean(0).cpu() for k, v in ens.responsibilities().items()}
    last_ratio = next((h["repulsion_ratio"] for h in reversed(history) if "repulsion_ratio" in h), None)
    rep = {
        "method": "dllp", "dataset": dataset, "model": model_name, "epochs": epochs, "finetune_epochs": 0,
        "seed": seed, "granularity": None, "criterion": "mean slab responsibility over particles < 0.5 prunes",
        "test_accuracy_before": accuracy(model, test), "test_accuracy_masked": accuracy(masked, test),
        "test_accuracy_after": accuracy(small, test),
        "params_before": m_before["params"], "params_after": m_after["params"],
        "flops_before": flops_before, "flops_after": flops_after,
        "compression_pct": 100.0 * (1 - m_after["params"] / m_before["params"]),
        "flops_reduction": flops_before / max(flops_after, 1),
        "kept_per_layer": {k: int(v.sum()) for k, v in masks.items()},
        "total_per_layer": {k: int(v.numel()) for k, v in masks.items()},
        "latency_ms_before": m_before["latency_ms"], "latency_ms_after": m_after["latency_ms"],
        "latency_batch": int(batch.shape[0]),
        "train_seconds": train_seconds, "backend": backends.default("cpu"), "device": m_before["device"],
        "history": history, "accuracy_vs_pruned_units": _dllp_curve(mean_net, mean_r, test),
        **_dense_keys(model, plain_seconds, plain_history, test, example, batch, small,
                      f"the plain {model_name} the particles start from ({epochs} epoch(s), batch {batch_size}, "
                      f"Adam lr {lr:g}; no SVGD epochs)"),
        "n_particles": n_particles, "svgd_epochs": svgd_epochs, "svgd_settings": svgd_settings,
        "units_sparsity": dllp.sparsity(masks), "ood_sets": {k: int(v.shape[0]) for k, v in ood.items()},
        "reliability": reliability, "baselines": baselines, "repulsion_ratio": last_ratio,
    }
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    if plots:
        _plots_dllp(rep, mean_r, out)
        probs = {f"DLLP ensemble ({n_particles} particles)": metrics.predictive_mean(ens_logits),
                 "magnitude-pruned point estimate": metrics.predictive_mean(point_logits),
                 f"point estimate, T = {temperature:.2f}": metrics.predictive_mean(point_logits / temperature)}
        title = f"{model_name} / {dataset}, {100 * rep['units_sparsity']:.1f}% of units pruned"
        metrics.plot_reliability_diagram(probs, test.y, out / "reliability_diagram.png", title=title)
        metrics.plot_accuracy_coverage({k: (v, test.y) for k, v in probs.items()}, out / "accuracy_coverage.png",
                                       title=title)
    log(summary(rep))
    r, p, t = rep["reliability"], baselines["point"], baselines["point_temperature"]
    log(f"reliability (DLLP ensemble / point estimate / temperature-scaled): ECE {r['ece']:.4f} / {p['ece']:.4f} / "
        f"{t['ece']:.4f}, NLL {r['nll']:.4f} / {p['nll']:.4f} / {t['nll']:.4f}, accuracy {r['accuracy']:.4f} / "
        f"{p['accuracy']:.4f} (particles {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f})"
        + (f", OOD AUROC {r['ood_auroc']:.3f} / {p['ood_auroc']:.3f} / {t['ood_auroc']:.3f}" if ood else "")
        + (f"; SVGD repulsion/driving {last_ratio:.2e}" if last_ratio is not None else ""))
    log(f"wrote {out / 'report.json'}" + (" and plots" if plots else ""))
    return rep


def _ood_inputs(x_test: torch.Tensor, dataset: str, seed: int, n: int = 2000) -> dict:
    """The OOD sets of ``fastbayes.ood`` for ``x_test`` (at most ``n`` each): scikit-learn's digits (unless they are the
    in-distribution data, or scikit-learn is missing), the test images rotated by 90°, and Gaussian noise images."""
    from ..ood import ood_sets
    names = ["rotated", "noise"]
    if dataset != "digits":
        try:
            import sklearn  # noqa: F401
            names.insert(0, "digits")
        except ImportError:
            pass
    return ood_sets(x_test, seed=seed, n=min(n, len(x_test)), sets=names)


@torch.no_grad()
def _dllp_curve(net, mean_r, test, points: int = 12):
    """Zero units progressively in order of increasing mean slab responsibility (no retraining): (units, accuracy)."""
    from .. import dllp

    order = sorted(((float(r), name, i) for name, rs in mean_r.items() for i, r in enumerate(rs.tolist())))
    total, curve = len(order), []
    for k in [round(total * f) for f in torch.linspace(0, 0.97, points).tolist()]:
        masks = {name: torch.ones(rs.numel(), dtype=torch.bool) for name, rs in mean_r.items()}
        for _, name, i in order[:k]:
            masks[name][i] = False
        curve.append({"units_pruned": k, "accuracy": accuracy(dllp.apply_masks(net, masks), test)})
    return curve


def _plots_dllp(rep: dict, mean_r: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _plot_kept_per_layer(rep, out, "dllp: kept units per layer (consensus mask)")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(torch.cat(list(mean_r.values())).numpy(), bins=50, range=(0, 1), color="#3a7bd5")
    ax.axvline(0.5, color="#c0392b", ls="--", label="threshold ½")
    ax.set_xlabel("mean slab responsibility over particles")
    ax.set_ylabel("units")
    ax.set_yscale("log")
    ax.set_title("pruning criterion over all units")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "criterion_histogram.png", dpi=120)
    plt.close(fig)

    _plot_accuracy_vs_compression(rep, out, "particle mean, prune by responsibility rank", 100 * rep["units_sparsity"],
                                  "consensus mask (compact particle mean)")


# ----------------------------------------------------------------------------------------------------------------
# method "bernoulli": Bernoulli unit gates pruned physically while training (fastbayes.prune.Shrinker,
# docs/METHODS.md §3)

# The design and why each setting (docs/METHODS.md §3.2; measured in docs/RESULTS.md §2): θ init 1, the cost-aware
# prior price · E[#params] (one knob, nats per parameter over the training set, weighted 1/N), projected plain SGD on
# θ with an absolute lr (Adam moved every θ together), no freezing at θ = 1, and after every epoch the units still in
# transit decided by their exact gradient on a fresh batch (``decide``: by its sign, at most DECIDE_MAX_DROP of a
# layer dropped at once; DECIDE_Z > 0 would ask for that many standard errors of evidence and DECIDE_MAX_UNITS bound
# the units judged per epoch, every one after the last), so every gate is 0 or 1 at the end of the run.
BERNOULLI_OPTIONS = {"init_theta": 1.0}
THETA_LR = 3.0
DECIDE_BATCH = 256
DECIDE_Z = 0.0           # the sign of the exact gradient: measured the most robust to the starting width (RESULTS §2)
DECIDE_MAX_DROP = 0.25
DECIDE_MAX_UNITS = None  # units judged per gate and epoch (two forwards of DECIDE_BATCH each); None: all
DECIDE_ACCUMULATE = False  # pool each unit's evidence over the epochs (a sequential test; the last call by its sign)


def _run_bernoulli(model_name, dataset, epochs, seed, out, batch_size, lr, max_train, plots, quiet,
                   dense=True, price=PRICE, decide_batch=None) -> dict:
    """Train with Bernoulli gates and a ``Shrinker`` (units leave the model while it trains), fold the gates away and
    report the common keys (``*_before``: the network at its starting width; its accuracy is that of the gated
    model, which never ran dense after training), the ``dense_*`` keys of the trained dense baseline, plus
    ``gates_binary``, ``train_step_ms_start``/``_end``, ``units_per_epoch`` and ``train_step_ms_per_epoch``."""
    import statistics

    from ..nn import bernoulli as B
    from ..nn.cost import check_price
    from ..prune import Shrinker

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"need epochs >= 1, got {epochs!r}")
    price = check_price(price)       # before _prepare writes anything
    decide_batch = DECIDE_BATCH if decide_batch is None else decide_batch
    if isinstance(decide_batch, bool) or not isinstance(decide_batch, int) or decide_batch < 1:
        raise ValueError(f"decide_batch must be a positive integer, got {decide_batch!r}")
    out, dataset, train, val, test = _prepare(out, dataset, seed, max_train, model_name)
    init_state = torch.get_rng_state()       # the dense baseline is built from the same state: same weights
    model = build(model_name, tuple(train.x.shape[1:]))
    start = build(model_name, tuple(train.x.shape[1:]))    # the starting width, for the "before" measurements
    gates = add_gates(model, kind="bernoulli", **BERNOULLI_OPTIONS)
    prior = B.CostPrior(model, train.x[:2], price=price)
    total_per_layer = {k: g.num_features for k, g in gates.items()}
    thetas = {id(g.theta) for g in gates.values()}
    opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in thetas], lr)
    theta_opt = torch.optim.SGD([g.theta for g in gates.values()], lr=THETA_LR)     # stateless: nothing to slice
    # units leave only after ``decide`` has confirmed them (θ = 0 reached by the straight-through steps is only a
    # candidate): the shrinker projects θ every step and removes after each decision, not every k steps
    shrinker = Shrinker(model, opt, every=2 ** 62, eps=1e-3, example_inputs=train.x[:2], freeze=False)
    n, history, step_ms, units = len(train), [], [], [sum(total_per_layer.values())]
    log = print if not quiet else (lambda *a, **k: None)
    log(f"fastbayes demo: bernoulli on {model_name} / {dataset} ({n} train, {len(val)} val, {len(test)} test), "
        f"{epochs} epochs, price {price:g} nats/parameter, units decided and removed after every epoch, "
        f"backend {backends.default('cpu')}")

    def in_transit() -> int:
        return sum(int((g.mask & (g.theta < 1)).sum()) for g in gates.values())

    def decide_in_transit(last: bool) -> int:
        """The units still inside (0, 1) set to 0 or 1 by their exact gradient on a fresh batch, then removed."""
        idx = torch.randint(0, n, (decide_batch,))
        xb, yb = train.x[idx], train.y[idx]
        model.train()
        done = B.decide(model, lambda m: F.cross_entropy(m(xb), yb, reduction="none"), lambda: prior() / n,
                        max_drop=DECIDE_MAX_DROP, z=0.0 if last and DECIDE_ACCUMULATE else DECIDE_Z,
                        max_units=None if last else DECIDE_MAX_UNITS, accumulate=DECIDE_ACCUMULATE)
        if shrinker.shrink():
            theta_opt.param_groups[0]["params"] = [g.theta for g in gates.values()]
        return sum(done.values())

    t_train = time.perf_counter()
    in_transit_after_training = 0
    for epoch in range(epochs):
        model.train()
        perm, times = torch.randperm(n), []
        for i in _progress(range(0, n, batch_size), desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=quiet):
            idx = perm[i:i + batch_size]
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx]) + prior() / n
            opt.zero_grad(set_to_none=True)
            theta_opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            theta_opt.step()
            times.append(1e3 * (time.perf_counter() - t0))     # the step itself; removals are timed apart
            if shrinker.step():    # removals replace θ Parameters (sliced): point the θ optimiser at the new ones
                theta_opt.param_groups[0]["params"] = [g.theta for g in gates.values()]
        in_transit_after_training = in_transit()
        decided = decide_in_transit(last=epoch == epochs - 1)
        step_ms.append(statistics.median(times))
        units.append(shrinker.live_units())
        history.append({"epoch": epoch + 1, "val_accuracy": accuracy(model, val), "kept_units": units[-1],
                        "total_units": units[0], "train_step_ms": step_ms[-1], "per_layer": shrinker.units(),
                        "decided": decided, "expected_params": float(prior.cost().detach())})
        log(f"epoch {epoch + 1}: val acc {history[-1]['val_accuracy']:.4f}, live units {units[-1]}/{units[0]} "
            f"{history[-1]['per_layer']}, {decided} decided, median step {step_ms[-1]:.2f} ms")
    in_transit_after = in_transit()
    train_seconds = time.perf_counter() - t_train

    net = hist = dense_seconds = None
    if dense:
        net, dense_seconds, hist = _train_dense(model_name, train, val, epochs, batch_size, lr, init_state, quiet, log)

    acc_gated = accuracy(model, test)
    small = shrinker.finalize()
    binary = shrinker.binary()
    example, batch = test.x[:1], test.x[:128]
    m_before, m_after = measure(start, batch), measure(small, batch)
    flops_before = measure(start, example, repeats=1, warmup=0, min_time=0)["flops"]
    flops_after = measure(small, example, repeats=1, warmup=0, min_time=0)["flops"]
    acc_after = accuracy(small, test)
    kept = shrinker.units()
    rep = {
        "method": "bernoulli", "dataset": dataset, "model": model_name, "epochs": epochs, "finetune_epochs": 0,
        "seed": seed, "granularity": "sample",
        "criterion": "units decided after every epoch (exact gradient; cost-aware prior) removed while training",
        "test_accuracy_before": acc_gated, "test_accuracy_masked": acc_gated, "test_accuracy_after": acc_after,
        "params_before": m_before["params"], "params_after": m_after["params"],
        "flops_before": flops_before, "flops_after": flops_after,
        "compression_pct": 100.0 * (1 - m_after["params"] / m_before["params"]),
        "flops_reduction": flops_before / max(flops_after, 1),
        "kept_per_layer": kept, "total_per_layer": total_per_layer,
        "latency_ms_before": m_before["latency_ms"], "latency_ms_after": m_after["latency_ms"],
        "latency_batch": int(batch.shape[0]),
        "train_seconds": train_seconds, "backend": backends.default("cpu"), "device": m_before["device"],
        "history": history, "accuracy_vs_pruned_units": [],
        **_dense_keys(net, dense_seconds, hist, test, example, batch, small,
                      f"{model_name} without gates or prior, trained in this run: same data, seed, initial weights, "
                      f"{epochs} epoch(s), batch {batch_size}, Adam lr {lr:g}"),
        "gates_binary": binary, "train_step_ms_start": step_ms[0], "train_step_ms_end": step_ms[-1],
        "train_step_ms_per_epoch": step_ms, "units_per_epoch": units,
        "gate_options": dict(BERNOULLI_OPTIONS), "prior": "cost", "price": float(price),
        "decide": {"batch": decide_batch, "z": DECIDE_Z, "max_drop": DECIDE_MAX_DROP, "max_units": DECIDE_MAX_UNITS,
                   "accumulate": DECIDE_ACCUMULATE},
        "theta_optimizer": "SGD", "theta_lr": THETA_LR, "shrinker_freeze": False,
        "units_in_transit_after_training": in_transit_after_training, "units_in_transit_at_end": in_transit_after,
        "shrink_events": [h for h in shrinker.history if h["removed"]],
    }
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    if plots:
        _plots_bernoulli(rep, out)
    log(summary(rep))
    log(f"gates binary: {binary}; median train step {step_ms[0]:.2f} ms (epoch 1) -> {step_ms[-1]:.2f} ms "
        f"(epoch {epochs})")
    log(f"wrote {out / 'report.json'}" + (" and plots" if plots else ""))
    return rep


def _plots_bernoulli(rep: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = list(range(len(rep["units_per_epoch"])))
    ax.plot(ep, rep["units_per_epoch"], "o-", color="#3a7bd5", label="live units")
    ax.set_xlabel("epoch")
    ax.set_ylabel("live units", color="#3a7bd5")
    ax2 = ax.twinx()
    ax2.plot(ep[1:], rep["train_step_ms_per_epoch"], "s--", color="#c0392b", label="median train step")
    ax2.set_ylabel("median train step (ms)", color="#c0392b")
    ax2.set_ylim(bottom=0)
    ax.set_title(f"bernoulli on {rep['model']}: units and step time per epoch")
    fig.tight_layout()
    fig.savefig(out / "units_and_step_time.png", dpi=120)
    plt.close(fig)

    _plot_kept_per_layer(rep, out, "bernoulli: kept units per layer")
