"""Post-training pruning by Bayesian model reduction (BMRS §5): rank, remove progressively, fine-tune, and mark
where BMRS's rule stops.

BMRS prunes a *trained* gated network unit by unit in the order of its criterion (highest ΔF first: the units whose
removal raises the evidence most), fine-tunes one epoch after each step, and stops when no remaining unit has
ΔF ≥ 0, i.e. when the rule itself would prune nothing more.  ``post_training`` records the whole
accuracy–compression curve past that point, so the stop can be set against the knee of the curve.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.penalty import kl_loss
from ..nn.sites import gates as find_gates
from .criteria import CRITERIA, check_options, decide
from .measure import bmrs_compression_pct


@dataclass
class CurvePoint:
    step: int
    kept: int                 # unmasked units, all layers
    kept_per_layer: dict
    compression_pct: float    # counted as BMRS counts it (bmrs_compression_pct)
    val_accuracy: float
    rule_would_prune: int     # remaining units the criterion's own rule would prune


@dataclass
class PostTrainingCurve:
    """The accuracy–compression curve of ``post_training``; ``stop`` indexes the point where the criterion's rule
    stops (no remaining unit it would prune), None if it never did."""
    criterion: str
    points: list[CurvePoint] = field(default_factory=list)
    stop: int | None = None

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "stop": self.stop, "points": [p.__dict__ for p in self.points]}

    def plot(self, path=None, ax=None, label: str | None = None):
        """Validation accuracy against compression, the rule's stopping point marked; saved to ``path`` if given."""
        import matplotlib
        if ax is None:
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(5.5, 4))
        else:
            fig = ax.figure
        xs = [p.compression_pct for p in self.points]
        ys = [100 * p.val_accuracy for p in self.points]
        line, = ax.plot(xs, ys, "o-", ms=3, label=label or self.criterion)
        if self.stop is not None:
            ax.plot(xs[self.stop], ys[self.stop], "*", ms=14, color=line.get_color(),
                    label=f"{label or self.criterion}: rule stops")
        ax.set_xlabel("compression % (BMRS count)")
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if path is not None:
            fig.tight_layout()
            fig.savefig(path, dpi=120)
        return ax


def _default_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y) + kl_loss(model, reduction="mean")


@torch.no_grad()
def _accuracy(model: nn.Module, loader) -> float:
    was = model.training
    model.eval()
    right = total = 0
    try:
        for x, y in loader:
            right += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    finally:
        model.train(was)
    return right / max(total, 1)


def _check(model, criterion, train_loader, val_loader, step_units, finetune_epochs, lr, min_units, max_steps,
           loss_fn, options) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if criterion not in CRITERIA or CRITERIA[criterion].applies_to == "ensemble":
        raise ValueError(f"criterion must be a gate criterion {[c for c, v in CRITERIA.items() if v.applies_to != 'ensemble']}, "
                         f"got {criterion!r}")
    check_options(criterion, CRITERIA[criterion].fn, options)
    for name, v, lo in (("finetune_epochs", finetune_epochs, 0), ("min_units", min_units, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    for name, v in (("step_units", step_units), ("max_steps", max_steps)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be None or a positive integer, got {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if not isinstance(loader, Iterable) or isinstance(loader, torch.Tensor):
            raise TypeError(f"{name} must be an iterable of (inputs, labels) batches, got {type(loader).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (model, x, y) -> loss, got {type(loss_fn).__name__}")


def post_training(model: nn.Module, criterion: str = "bmrs_n", train_loader=None, val_loader=None, *,
                  step_units: int | None = None, finetune_epochs: int = 1, lr: float = 1e-3, min_units: int = 1,
                  max_steps: int | None = None, loss_fn: Callable | None = None, progress: bool = True,
                  restore: str = "stop", **options) -> PostTrainingCurve:
    """Prune a trained gated ``model`` progressively by ``criterion`` and record the accuracy–compression curve.

    Each step masks the ``step_units`` unmasked units the criterion ranks worst, over all layers together (highest
    ΔF for bmrs_n/bmrs_u, lowest SNR/E[θ]/θ otherwise; each layer keeps ``min_units``), then fine-tunes
    ``finetune_epochs`` epochs on ``train_loader`` with Adam(``lr``) and ``loss_fn(model, x, y)`` (default: mean
    cross-entropy + mean KL), and measures validation accuracy.  The first point is the model as given (its masks
    kept).  ``stop`` marks the first point where the criterion's own rule prunes no remaining unit: BMRS's
    stopping rule (for BMRS_N/BMRS_U: every remaining unit has ΔF < 0).  The sweep goes on until ``max_steps`` or
    until nothing is left to remove, so the curve shows what lies past the stop.

    ``restore``: "stop" leaves the model as it was at the stopping point (the last point if the rule never stops),
    "last" as at the end of the sweep.  Options go to the criterion (e.g. ``p1=4`` for bmrs_u).  Everything is
    checked before the model changes.
    """
    _check(model, criterion, train_loader, val_loader, step_units, finetune_epochs, lr, min_units, max_steps,
           loss_fn, options)
    if restore not in ("stop", "last"):
        raise ValueError(f"restore must be 'stop' or 'last', got {restore!r}")
    decide(model, criterion, min_units=0, **options)          # gate kinds and options, before anything changes
    gates = find_gates(model)
    total = sum(g.mask.numel() for g in gates.values())
    step_units = step_units or max(1, round(0.05 * total))
    loss_fn = loss_fn or _default_loss
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    curve = PostTrainingCurve(criterion)
    stop_state = None

    def record(step: int) -> None:
        nonlocal stop_state
        d = decide(model, criterion, min_units=0, **options)
        would = sum(int((~d[n].keep.cpu() & g.mask.bool().cpu()).sum()) for n, g in gates.items())
        kept = {n: int(g.mask.sum()) for n, g in gates.items()}
        curve.points.append(CurvePoint(step, sum(kept.values()), kept, bmrs_compression_pct(model),
                                       _accuracy(model, val_loader), would))
        if curve.stop is None and would == 0:
            curve.stop = len(curve.points) - 1
            stop_state = copy.deepcopy(model.state_dict())

    record(0)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_steps or math.ceil(total / step_units), desc=f"post-training {criterion}", leave=False)
    step = 0
    while max_steps is None or step < max_steps:
        d = decide(model, criterion, min_units=0, **options)
        cand = []        # (score, layer, unit) of the units that may still go
        for n, g in gates.items():
            live = g.mask.bool().cpu()
            if int(live.sum()) <= min_units:
                continue
            score = d[n].score().cpu()
            cand += [(float(score[i]), n, int(i)) for i in live.nonzero().flatten()]
        if not cand:
            break
        cand.sort(key=lambda t: t[0])
        left = {n: int(g.mask.sum()) for n, g in gates.items()}
        removed = 0
        with torch.no_grad():
            for _, n, i in cand:
                if removed == step_units:
                    break
                if left[n] <= min_units:
                    continue
                gates[n].mask[i] = False
                left[n] -= 1
                removed += 1
        if removed == 0:
            break
        step += 1
        model.train()
        for _ in range(finetune_epochs):
            for x, y in train_loader:
                loss = loss_fn(model, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        record(step)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if restore == "stop" and stop_state is not None:
        model.load_state_dict(stop_state)
    return curve
