"""Reliability metrics of a classifier or an ensemble: ECE (torchmetrics), NLL, Brier, entropy, mutual information.

One implementation of each, used by ``fastbayes.dllp``, the demo and the examples.  ``probs`` is a predictive
distribution [N, classes]; ``logits`` an ensemble's logits [n_members, N, classes] (a single model is
``logits[None]``).  Everything is computed in float64 except the ECE's binning, which follows torchmetrics
(confidences in float32): ``calibration_bins`` reproduces those bins exactly, so a reliability diagram drawn from
them and ``ece`` give the same number.

Uncertainty as a detector: ``auroc`` (Mann–Whitney, ties at average ranks), ``misclassification_auroc`` and
``ood_auroc`` (both score by predictive entropy), the selective-prediction curve ``accuracy_coverage``, and
``fit_temperature`` (one scalar T for post-hoc temperature scaling, fitted on a validation split).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

N_BINS = 15

__all__ = ["N_BINS", "accuracy_coverage", "auroc", "brier", "calibration_bins", "ece", "entropy", "fit_temperature",
           "misclassification_auroc", "mutual_information", "nll", "ood_auroc", "plot_accuracy_coverage",
           "plot_ood_entropy", "plot_reliability_diagram", "predictive_mean", "reliability_report",
           "uncertainty_report"]


def _n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return n_bins


def _check_probs(probs: Tensor, labels: Optional[Tensor] = None, name: str = "probs"
                 ) -> tuple[Tensor, Optional[Tensor]]:
    if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"{name} must be a floating tensor [N, classes >= 2], got "
                         f"{tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__}")
    p = probs.detach().double()
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or bool((p > 1 + 1e-6).any()):
        raise ValueError(f"{name} must be probabilities in [0, 1]")
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
    return _entropy(p)


def _entropy(p: Tensor) -> Tensor:
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


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve of ``scores`` [N] (higher = more likely positive) for binary ``labels`` [N] (1 or
    True = positive): the Mann–Whitney U / (n_pos · n_neg), tied scores at their average rank (so a tie counts ½).

    1 for a perfect detector, 0 for a reversed one, 0.5 for constant scores.  ValueError unless both classes occur."""
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError("scores must be a real tensor [N], got "
                         f"{tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
    s = scores.detach().double()
    if bool(torch.isnan(s).any()):
        raise ValueError("scores must not be NaN")
    if (not isinstance(labels, Tensor) or labels.shape != s.shape
            or not (labels.dtype == torch.bool or not (labels.is_floating_point() or labels.is_complex()))):
        raise ValueError(f"labels must be a bool or integer tensor of shape ({s.shape[0]},), got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    y = labels.detach().long().to(s.device)
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels must hold both classes for an AUROC, got {n_pos} positive and {n_neg} negative")
    sorted_s, order = torch.sort(s, stable=True)
    _, counts = torch.unique_consecutive(sorted_s, return_counts=True)
    ends = counts.cumsum(0).double()                          # 1-based rank of each tie group's last member
    avg = ends - (counts.double() - 1) / 2                     # the group's average rank
    ranks = torch.empty_like(s).scatter_(0, order, avg.repeat_interleave(counts))
    u = float(ranks[y == 1].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def misclassification_auroc(probs: Tensor, labels: Tensor) -> float:
    """How well uncertainty flags the errors of the prediction argmax ``probs`` [N, classes] (first of tied classes):
    ``auroc`` with the errors as positives, scored by the predictive entropy H[p] (higher = more likely wrong).

    Entropy rather than 1 − max p: it reads the whole distribution, and it is the score ``ood_auroc`` uses, so the
    two numbers rank by one uncertainty.  ValueError unless some predictions are right and some wrong."""
    p, y = _check_probs(probs, labels)
    wrong = p.argmax(-1) != y
    n_wrong = int(wrong.sum())
    if n_wrong in (0, wrong.numel()):
        raise ValueError(f"labels: misclassification_auroc needs right and wrong predictions, got {n_wrong} wrong "
                         f"of {wrong.numel()}")
    return auroc(_entropy(p), wrong)


def ood_auroc(probs_in: Tensor, probs_out: Tensor) -> float:
    """How well the predictive entropy tells out-of-distribution inputs (``probs_out`` [M, classes], the positives)
    from in-distribution ones (``probs_in`` [N, classes]): ``auroc`` of H[p], higher = more likely OOD."""
    p_in, _ = _check_probs(probs_in, name="probs_in")
    p_out, _ = _check_probs(probs_out, name="probs_out")
    if p_out.shape[1] != p_in.shape[1]:
        raise ValueError(f"probs_out must have the classes of probs_in ({p_in.shape[1]}), got {p_out.shape[1]}")
    if p_in.shape[0] == 0 or p_out.shape[0] == 0:
        raise ValueError(f"probs_in and probs_out must each hold an example, got {p_in.shape[0]} and {p_out.shape[0]}")
    return _separation_auroc(_entropy(p_in), _entropy(p_out).to(p_in.device))


def _separation_auroc(neg: Tensor, pos: Tensor) -> float:
    """``auroc`` of telling the scores ``pos`` (positives) from ``neg``, both [·] on one device."""
    labels = torch.cat([torch.zeros(len(neg), dtype=torch.bool), torch.ones(len(pos), dtype=torch.bool)])
    return auroc(torch.cat([neg, pos]), labels.to(neg.device))


def accuracy_coverage(probs: Tensor, labels: Tensor) -> dict:
    """Selective prediction: keep the k most confident examples (confidence = max probability, float64) and report
    the accuracy of the argmax prediction on them, for k = 1 … N.

    Tied confidences are kept or dropped together in expectation: inside a tie group the accuracy is that of a
    uniformly random order of the group (the cumulative count of right predictions is interpolated linearly across
    the group), so the curve does not depend on the order of the examples.

    Returns float64 CPU tensors [N] ``coverage`` (k / N), ``accuracy`` and ``confidence`` (the k-th largest), plus
    floats ``area`` = mean of ``accuracy`` (the area under the accuracy–coverage curve, higher is better) and
    ``aurc`` = 1 − area (the mean selective risk: area under the risk–coverage curve, lower is better)."""
    p, y = _check_probs(probs, labels)
    N = p.shape[0]
    if N == 0:
        raise ValueError("probs must hold at least one example")
    conf, pred = p.max(-1)
    conf, right = conf.cpu(), (pred == y).double().cpu()
    conf_sorted, order = torch.sort(conf, descending=True, stable=True)
    _, counts = torch.unique_consecutive(conf_sorted, return_counts=True)
    ends = counts.cumsum(0)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), right[order].cumsum(0)])
    right_before = cum[ends - counts]                         # right predictions before each tie group
    per_group = (cum[ends] - right_before) / counts.double()  # the group's accuracy
    k = torch.arange(1, N + 1, dtype=torch.float64)
    g = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    expected_right = right_before[g] + (k - (ends - counts)[g].double()) * per_group[g]
    acc = expected_right / k
    area = float(acc.mean())
    return {"coverage": k / N, "accuracy": acc, "confidence": conf_sorted, "area": area,
            "aurc": float((1 - acc).mean())}


def _check_any_logits(logits: Tensor) -> Tensor:
    """[N, classes] or [n_members, N, classes] floating, finite -> float64 [n_members, N, classes]."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() not in (2, 3):
        raise ValueError("logits must be a floating tensor [N, classes] or [n_members, N, classes], got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    return _check_logits(logits if logits.dim() == 3 else logits[None])[0]


def _nll_at(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """−mean log p̄(y) of the ensemble softmax(logits_j / T) (float64 logits [n, N, C])."""
    logp = torch.log_softmax(logits / temperature, -1)
    log_mean = torch.logsumexp(logp, 0) - math.log(logp.shape[0])
    return float(-log_mean.gather(1, labels[:, None]).mean())


def fit_temperature(logits: Tensor, labels: Tensor, *, bounds: tuple[float, float] = (1e-2, 1e2),
                    tol: float = 1e-7) -> float:
    """Temperature scaling: the scalar T in ``bounds`` minimising the NLL of softmax(logits / T) on ``labels``.

    Fit it on a validation split, then divide the test logits by it.  ``logits`` is [N, classes] or an ensemble's
    [n_members, N, classes] (then the NLL is that of the mean of the members' softmax(logits_j / T)).  The search is
    over log T in float64 and deterministic: the best of 49 log-spaced temperatures, then a golden-section search
    between its neighbours down to ``tol`` in log T.  (For one model the NLL is convex in 1/T, so this is the global
    minimum; a minimum at a bound, e.g. for separable data, returns the bound.)"""
    lg = _check_any_logits(logits)
    y = _check_labels(labels, lg.shape[1], lg.shape[2], lg.device)
    if (not isinstance(bounds, (tuple, list)) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not (0 < bounds[0] < bounds[1] < math.inf)):
        raise ValueError(f"bounds must be (low, high) with 0 < low < high < inf, got {bounds!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < math.inf:
        raise ValueError(f"tol must be a positive float, got {tol!r}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    cache: dict = {}

    def f(u: float) -> float:
        if u not in cache:
            cache[u] = _nll_at(lg, y, math.exp(u))
        return cache[u]

    grid = [lo + (hi - lo) * i / 48 for i in range(49)]
    i = min(range(49), key=lambda j: (f(grid[j]), j))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, 48)]
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    while b - a > tol:
        if f(c) <= f(d):
            b, d = d, c
            c = b - r * (b - a)
        else:
            a, c = c, d
            d = a + r * (b - a)
    best = min([grid[i], a, b, (a + b) / 2], key=lambda u: (f(u), u))
    return math.exp(best)


def reliability_report(logits: Tensor, labels: Tensor, n_bins: int = N_BINS, *, detect_errors: bool = False,
                       ood_logits: Optional[Tensor] = None) -> dict:
    """Reliability of an ensemble from its logits [n_members, N, classes] on held-out ``labels`` [N].

    Returns floats (float64 math; entropies in nats, averaged over examples):

    * ``accuracy``: of the predictive mean p̄ = (1/n) Σ_j softmax(logits_j);
    * ``predictive_entropy`` H[p̄], ``expected_entropy`` (1/n) Σ_j H[p_j] and ``mutual_information`` = their
      difference (the epistemic part; 0 for one member or identical members);
    * ``ece`` (``ece(p̄, labels, n_bins)``), ``nll`` = −mean log p̄(y), ``brier`` (multi-class, in [0, 2]);
    * ``accuracy_mean``, ``accuracy_std`` (sample std, ddof 1; 0 for one member) and ``accuracy_ci95``: the 2.5 %
      and 97.5 % quantiles (linear interpolation) of the members' accuracies;
    * ``n_particles`` (members), ``n_examples``;
    * only with ``detect_errors=True``: ``misclassification_auroc`` = ``misclassification_auroc(p̄, labels)``, or
      None when every prediction is right or every one wrong (None, not NaN: reports compare equal and stay JSON);
    * only when ``ood_logits`` (the same members' logits [n_members, M, classes] on out-of-distribution inputs) is
      given: ``ood_auroc`` = ``ood_auroc(p̄, p̄_ood)`` and ``n_ood_examples``.
    """
    n_bins = _n_bins(n_bins)
    if not isinstance(detect_errors, bool):
        raise ValueError(f"detect_errors must be a bool, got {detect_errors!r}")
    logits, labels = _check_logits(logits, labels)
    n, N, C = logits.shape
    if ood_logits is not None:
        if (not isinstance(ood_logits, Tensor) or not ood_logits.is_floating_point() or ood_logits.dim() != 3
                or ood_logits.shape[0] != n or ood_logits.shape[2] != C or ood_logits.shape[1] < 1):
            got = tuple(ood_logits.shape) if isinstance(ood_logits, Tensor) else type(ood_logits).__name__
            raise ValueError(f"ood_logits must be a floating tensor [n_members = {n}, M >= 1, classes = {C}], got {got}")
        if not bool(torch.isfinite(ood_logits).all()):
            raise ValueError("ood_logits must be finite")
    mean = predictive_mean(logits)
    mi = mutual_information(logits)
    h_pred = entropy(mean)
    logp = torch.log_softmax(logits, -1)
    acc_p = (logp.argmax(-1) == labels).double().mean(1)                   # [n]
    ci = torch.quantile(acc_p, torch.tensor([0.025, 0.975], dtype=torch.float64, device=acc_p.device))
    # NLL from log p̄ directly: p̄ may underflow to 0 where log p̄ is finite
    log_mean = torch.logsumexp(logp, 0) - math.log(n)
    rep = {
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
    if detect_errors:
        wrong = mean.argmax(-1) != labels
        rep["misclassification_auroc"] = auroc(h_pred, wrong) if 0 < int(wrong.sum()) < N else None
    if ood_logits is not None:
        rep["ood_auroc"] = ood_auroc(mean, predictive_mean(ood_logits.to(logits.device)))
        rep["n_ood_examples"] = int(ood_logits.shape[1])
    return rep


def uncertainty_report(logits: Tensor, labels: Tensor, ood: Optional[Mapping[str, Tensor]] = None,
                       n_bins: int = N_BINS) -> dict:
    """``reliability_report(logits, labels, detect_errors=True)`` plus out-of-distribution detection: for each
    {name: logits [n_members, M, classes]} of ``ood`` (the same members on inputs the model never saw)
    ``ood_auroc_per_set[name]`` = ``ood_auroc`` of the predictive entropy, and ``ood_auroc`` their mean (None without
    ``ood``).  One report shape for an ensemble, a point estimate ([1, N, classes]) or MC-dropout passes."""
    rep = reliability_report(logits, labels, n_bins, detect_errors=True)
    per_set = {}
    if ood:
        mean = predictive_mean(logits)
        for name, lg in ood.items():
            lg, _ = _check_logits(lg)
            if lg.shape[0] != logits.shape[0] or lg.shape[2] != logits.shape[2]:
                raise ValueError(f"ood[{name!r}] must be logits [n_members = {logits.shape[0]}, M, classes = "
                                 f"{logits.shape[2]}], got {tuple(lg.shape)}")
            per_set[name] = ood_auroc(mean, predictive_mean(lg.to(mean.device)))
    rep["ood_auroc_per_set"] = per_set
    rep["ood_auroc"] = sum(per_set.values()) / len(per_set) if per_set else None
    return rep


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
    plt = _pyplot()
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    ax.plot([0, 1], [0, 1], "--", color="#888888", lw=1, label="perfect calibration")
    for k, (name, b) in enumerate(bins.items()):
        w = width / len(series)
        # the last slot (confidence exactly 1) is drawn as one more, thin bar at 1
        centers = torch.cat([b["edges"][:-1] + w * (k + 0.5), torch.tensor([1.0 + w * (k + 0.5) / 4])])
        widths = [w] * n_bins + [w / 4]
        c = _COLORS[k % len(_COLORS)]
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
    return _save(fig, path)


_COLORS = ["#3a7bd5", "#c0392b", "#27ae60", "#8e44ad", "#e67e22", "#16a085"]


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _named_pairs(arg: str, d, parts: str) -> list:
    """The items of ``d``, checked to be a non-empty {name: (a, b)}; ``parts`` names a and b in the messages."""
    if not isinstance(d, Mapping) or not d:
        raise ValueError(f"{arg} must be a non-empty dict {{name: ({parts})}}")
    for name, pair in d.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{arg}[{name!r}] must be a pair ({parts})")
    return list(d.items())


def plot_accuracy_coverage(curves: Mapping, path, title: Optional[str] = None) -> Path:
    """Accuracy against coverage (``accuracy_coverage``) of several models on one axes, written as a PNG to ``path``.

    ``curves`` is {name: (probs [N, classes], labels [N])}; the legend gives each model's ``area`` (mean selective
    accuracy), and a dotted line each model's accuracy at full coverage."""
    res = {}
    for name, (p, y) in _named_pairs("curves", curves, "probs, labels"):
        if not isinstance(p, Tensor) or not isinstance(y, Tensor):
            raise ValueError(f"curves[{name!r}] must be a pair of tensors (probs, labels)")
        res[name] = accuracy_coverage(p.detach().cpu(), y.detach().cpu())
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    lo = 1.0
    for k, (name, r) in enumerate(res.items()):
        c = _COLORS[k % len(_COLORS)]
        ax.plot(r["coverage"].numpy(), r["accuracy"].numpy(), color=c, lw=1.5, label=f"{name} (area {r['area']:.4f})")
        ax.axhline(float(r["accuracy"][-1]), color=c, lw=0.8, ls=":")
        lo = min(lo, float(r["accuracy"].min()))
    ax.set_xlim(0, 1)
    ax.set_ylim(max(0.0, lo - 0.02), 1.005)
    ax.set_xlabel("coverage (fraction kept, most confident first)")
    ax.set_ylabel("accuracy on the kept examples")
    ax.set_title(title or "accuracy–coverage")
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_ood_entropy(hist: Mapping, path, n_bins: int = 30, title: Optional[str] = None) -> Path:
    """Histograms of the predictive entropy on in-distribution and out-of-distribution inputs, one small panel per
    model, written as a PNG to ``path``.

    ``hist`` is {name: (entropy_in [N], entropy_out [M])} (e.g. ``entropy(p_in)``, ``entropy(p_out)``); each panel's
    title gives the ``auroc`` of telling them apart by entropy (the ``ood_auroc``)."""
    n_bins = _n_bins(n_bins)
    data = {}
    for name, pair in _named_pairs("hist", hist, "entropy_in, entropy_out"):
        for t in pair:
            if (not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 1 or t.numel() == 0
                    or not bool(torch.isfinite(t).all())):
                raise ValueError(f"hist[{name!r}] must hold two non-empty finite floating tensors [N] of entropies")
        h_in, h_out = (t.detach().double().cpu() for t in pair)
        data[name] = (h_in, h_out, _separation_auroc(h_in, h_out))
    plt = _pyplot()
    k = len(data)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.0), squeeze=False, sharey=False)
    for ax, (name, (h_in, h_out, score)) in zip(axes[0], data.items()):
        low = min(float(h_in.min()), float(h_out.min()), 0.0)
        top = max(float(h_in.max()), float(h_out.max()), low + 1e-12)
        edges = torch.linspace(low, top, n_bins + 1).numpy()
        ax.hist(h_in.numpy(), bins=edges, density=True, alpha=0.6, color=_COLORS[0], label="in-distribution")
        ax.hist(h_out.numpy(), bins=edges, density=True, alpha=0.6, color=_COLORS[1], label="OOD")
        ax.set_title(f"{name} (AUROC {score:.3f})", fontsize=9)
        ax.set_xlabel("predictive entropy (nats)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("density", fontsize=8)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
