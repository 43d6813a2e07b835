"""Reliability metrics of a classifier or an ensemble: ECE (torchmetrics), NLL, Brier, entropy, mutual information.

One implementation of each, used by ``fastbayes.dllp``, the demo and the examples.  ``probs`` is a predictive
distribution [N, classes]; ``logits`` an ensemble's logits [n_members, N, classes] (a single model is
``logits[None]``).  Everything is computed in float64 except the ECE's binning, which follows torchmetrics
(confidences in float32): ``calibration_bins`` reproduces those bins exactly, so a reliability diagram drawn from
them and ``ece`` give the same number.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

N_BINS = 15

__all__ = ["N_BINS", "brier", "calibration_bins", "ece", "entropy", "mutual_information", "nll",
           "plot_reliability_diagram", "predictive_mean", "reliability_report"]


def _n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return n_bins


def _check_probs(probs: Tensor, labels: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError("probs must be a floating tensor [N, classes >= 2], got "
                         f"{tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__}")
    p = probs.detach().double()
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool((p > 1 + 1e-6).any()):
        raise ValueError("probs must be probabilities in [0, 1]")
    # a mean of softmaxes can exceed 1 by an ulp, and torchmetrics would then re-softmax every row
    p = p.clamp(0.0, 1.0)
    if labels is None:
        return p, None
    return p, _check_labels(labels, p.shape[0], p.shape[1], p.device)


def _check_labels(labels: Tensor, n: int, classes: int, device) -> Tensor:
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.shape != (n,):
        raise ValueError(f"labels must be an integer tensor of shape ({n},), got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    labels = labels.long().to(device)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must be class indices in [0, {classes})")
    return labels


def _check_logits(logits: Tensor, labels: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 3:
        raise ValueError("logits must be a floating tensor [n_members, N, classes], got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    n, N, C = logits.shape
    if n < 1 or N < 1 or C < 2:
        raise ValueError(f"logits need n_members >= 1, N >= 1 and classes >= 2, got {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite")
    return logits.detach().double(), None if labels is None else _check_labels(labels, N, C, logits.device)


def predictive_mean(logits: Tensor) -> Tensor:
    """The predictive distribution (1/n) Σ_j softmax(logits_j), [N, classes] (float64), from [n, N, classes]."""
    logits, _ = _check_logits(logits)
    logp = torch.log_softmax(logits, -1)
    return (torch.logsumexp(logp, 0) - math.log(logp.shape[0])).exp()


def entropy(probs: Tensor) -> Tensor:
    """H[p] = −Σ_c p_c log p_c per example, [N] float64 nats (0·log 0 = 0)."""
    p, _ = _check_probs(probs)
    return -torch.special.xlogy(p, p).sum(-1)


def mutual_information(logits: Tensor) -> Tensor:
    """The ensemble's epistemic uncertainty per example, [N] float64 nats: H[p̄] − (1/n) Σ_j H[p_j] (≥ 0; 0 for one
    member or identical members)."""
    logits, _ = _check_logits(logits)
    n = logits.shape[0]
    logp = torch.log_softmax(logits, -1)
    log_mean = torch.logsumexp(logp, 0) - math.log(n)
    h_pred = -(log_mean.exp() * log_mean).sum(-1)      # log-softmax of finite logits is finite: no 0·log 0
    h_exp = -(logp.exp() * logp).sum(-1).mean(0)
    return (h_pred - h_exp).clamp_min(0.0)


def nll(probs: Tensor, labels: Tensor) -> float:
    """−mean log p(y) (nats); +inf if a true class has probability 0."""
    p, y = _check_probs(probs, labels)
    return float(-p.gather(1, y[:, None]).log().mean())


def brier(probs: Tensor, labels: Tensor) -> float:
    """The multi-class Brier score mean Σ_c (p_c − 1[c = y])², in [0, 2]."""
    p, y = _check_probs(probs, labels)
    return float((p - F.one_hot(y, p.shape[1]).double()).pow(2).sum(-1).mean())


def ece(probs: Tensor, labels: Tensor, n_bins: int = N_BINS) -> float:
    """Expected calibration error of ``probs``: torchmetrics ``MulticlassCalibrationError`` (``n_bins`` equal-width
    confidence bins, L1 norm), the number ``calibration_bins`` draws."""
    n_bins = _n_bins(n_bins)
    p, y = _check_probs(probs, labels)
    from ._compat import import_torchvision
    try:   # torchmetrics imports torchvision when present; the shim lets the CUDA-only wheel load on CPU torch
        import_torchvision()
    except ImportError:
        pass
    from torchmetrics.classification import MulticlassCalibrationError

    metric = MulticlassCalibrationError(num_classes=p.shape[-1], n_bins=n_bins, norm="l1").to(p.device)
    return float(metric(p, y))


def calibration_bins(probs: Tensor, labels: Tensor, n_bins: int = N_BINS) -> dict:
    """The confidence bins behind ``ece``, binned exactly as torchmetrics bins them: float32 confidences (max
    probability), ``n_bins`` bins [e_i, e_{i+1}) with e = linspace(0, 1, n_bins + 1), and one more bin holding the
    confidences equal to 1.

    Returns float64 tensors of n_bins + 1 entries on the CPU: ``accuracy`` and ``confidence`` (means per bin, 0 in
    an empty bin), ``fraction`` (of the examples), plus ``edges`` (the n_bins + 1 edges) and ``ece`` = Σ fraction ·
    |accuracy − confidence|, which equals ``ece(probs, labels, n_bins)``.
    """
    n_bins = _n_bins(n_bins)
    p, y = _check_probs(probs, labels)
    conf, pred = p.max(-1)
    conf32 = conf.float().cpu()
    correct = (pred.cpu() == y.cpu()).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    idx = torch.bucketize(conf32, edges, right=True) - 1          # conf = 1 falls in slot n_bins
    count = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, idx, torch.ones_like(correct))
    acc = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, idx, correct) / count.clamp_min(1)
    cbin = torch.zeros(n_bins + 1, dtype=torch.float64).index_add_(0, idx, conf32.double()) / count.clamp_min(1)
    frac = count / count.sum().clamp_min(1)
    return {"accuracy": acc, "confidence": cbin, "fraction": frac, "edges": edges.double(),
            "ece": float((frac * (acc - cbin).abs()).sum())}


def reliability_report(logits: Tensor, labels: Tensor, n_bins: int = N_BINS) -> dict:
    """Reliability of an ensemble from its logits [n_members, N, classes] on held-out ``labels`` [N].

    Returns floats (float64 math; entropies in nats, averaged over examples):

    * ``accuracy``: of the predictive mean p̄ = (1/n) Σ_j softmax(logits_j);
    * ``predictive_entropy`` H[p̄], ``expected_entropy`` (1/n) Σ_j H[p_j] and ``mutual_information`` = their
      difference (the epistemic part; 0 for one member or identical members);
    * ``ece`` (``ece(p̄, labels, n_bins)``), ``nll`` = −mean log p̄(y), ``brier`` (multi-class, in [0, 2]);
    * ``accuracy_mean``, ``accuracy_std`` (sample std, ddof 1; 0 for one member) and ``accuracy_ci95``: the 2.5 %
      and 97.5 % quantiles (linear interpolation) of the members' accuracies;
    * ``n_particles`` (members), ``n_examples``.
    """
    n_bins = _n_bins(n_bins)
    logits, labels = _check_logits(logits, labels)
    n, N, _ = logits.shape
    mean = predictive_mean(logits)
    mi = mutual_information(logits)
    h_pred = entropy(mean)
    logp = torch.log_softmax(logits, -1)
    acc_p = (logp.argmax(-1) == labels).double().mean(1)                   # [n]
    ci = torch.quantile(acc_p, torch.tensor([0.025, 0.975], dtype=torch.float64, device=acc_p.device))
    # NLL from log p̄ directly: p̄ may underflow to 0 where log p̄ is finite
    log_mean = torch.logsumexp(logp, 0) - math.log(n)
    return {
        "n_particles": n, "n_examples": N,
        "accuracy": float((mean.argmax(-1) == labels).double().mean()),
        "accuracy_mean": float(acc_p.mean()),
        "accuracy_std": float(acc_p.std(correction=1)) if n > 1 else 0.0,
        "accuracy_ci95": [float(ci[0]), float(ci[1])],
        "ece": ece(mean, labels, n_bins),
        "nll": float(-log_mean.gather(1, labels[:, None]).mean()), "brier": brier(mean, labels),
        "predictive_entropy": float(h_pred.mean()), "expected_entropy": float((h_pred - mi).mean()),
        "mutual_information": float(mi.mean()),
    }


def plot_reliability_diagram(probs, labels: Tensor, path, n_bins: int = N_BINS, title: Optional[str] = None) -> Path:
    """Reliability diagram (accuracy against confidence per bin of ``calibration_bins``, with the diagonal of perfect
    calibration) above a histogram of the confidences, written as a PNG to ``path``.

    ``probs`` is a predictive distribution [N, classes] (e.g. ``predictive_mean(logits)``) or {name: [N, classes]}
    to overlay several models.  The legend gives each model's ``ece`` (the same number as the bars)."""
    n_bins = _n_bins(n_bins)
    series = probs if isinstance(probs, Mapping) else {"model": probs}
    if not series:
        raise ValueError("probs must be a tensor [N, classes] or a non-empty dict of them")
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be an integer tensor, got {type(labels).__name__}")
    labels = labels.detach().cpu().long()
    bins = {}
    for name, p in series.items():
        if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[0] != labels.shape[0]:
            raise ValueError(f"probs[{name!r}] must be a tensor [N, classes] with N = len(labels) = {len(labels)}")
        bins[name] = calibration_bins(p.detach().cpu(), labels, n_bins)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    ax.plot([0, 1], [0, 1], "--", color="#888888", lw=1, label="perfect calibration")
    colors = ["#3a7bd5", "#c0392b", "#27ae60", "#8e44ad", "#e67e22", "#16a085"]
    for k, (name, b) in enumerate(bins.items()):
        w = width / len(series)
        # the last slot (confidence exactly 1) is drawn as one more, thin bar at 1
        centers = torch.cat([b["edges"][:-1] + w * (k + 0.5), torch.tensor([1.0 + w * (k + 0.5) / 4])])
        widths = [w] * n_bins + [w / 4]
        c = colors[k % len(colors)]
        ax.bar(centers.numpy(), b["accuracy"].numpy(), width=widths, color=c, alpha=0.75, edgecolor="black", lw=0.3,
               label=f"{name} (ECE {b['ece']:.4f})")
        axh.bar(centers.numpy(), b["fraction"].numpy(), width=widths, color=c, alpha=0.75)
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"reliability diagram ({n_bins} bins)")
    ax.legend(fontsize=8, loc="upper left")
    axh.set_xlabel("confidence (max predicted probability)")
    axh.set_ylabel("fraction")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
