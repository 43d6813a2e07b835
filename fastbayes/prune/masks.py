"""Turning criteria into masks, the report that explains them, and BMRS's every-P-epochs schedule."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn.sites import gates as find_gates
from .criteria import CRITERIA, check_options, decide


@dataclass
class LayerReport:
    name: str
    kept: int
    total: int
    statistic_min: float
    statistic_median: float
    statistic_max: float


@dataclass
class PruneReport:
    """What ``update_masks`` decided, per gated layer; prints as a table."""
    criterion: str
    rule: str
    layers: list[LayerReport] = field(default_factory=list)
    statistics: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def kept(self) -> int:
        return sum(r.kept for r in self.layers)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.layers)

    @property
    def kept_per_layer(self) -> dict[str, int]:
        return {r.name: r.kept for r in self.layers}

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "rule": self.rule, "kept": self.kept, "total": self.total,
                "layers": [r.__dict__ for r in self.layers]}

    def __str__(self) -> str:
        w = max([len(r.name) for r in self.layers] + [5])
        head = f"{'layer':<{w}}  {'kept':>6} / {'total':<6} {'min':>10} {'median':>10} {'max':>10}"
        lines = [f"{self.criterion}: {self.rule}", head, "-" * len(head)]
        for r in self.layers:
            lines.append(f"{r.name:<{w}}  {r.kept:>6} / {r.total:<6} {r.statistic_min:>10.4g} "
                         f"{r.statistic_median:>10.4g} {r.statistic_max:>10.4g}")
        lines.append("-" * len(head))
        pct = 100.0 * self.kept / max(self.total, 1)
        lines.append(f"{'total':<{w}}  {self.kept:>6} / {self.total:<6} ({pct:.1f}% of units kept)")
        return "\n".join(lines)


@torch.no_grad()
def update_masks(model: nn.Module, criterion: str = "bmrs_n", *, min_units: int = 1, **options) -> PruneReport:
    """Recompute every gate's mask from scratch with ``criterion`` (a name in ``fastbayes.prune.CRITERIA``: "snr",
    "bmrs_n", "bmrs_u", "etheta" for log-normal gates, "bernoulli" for Bernoulli gates).

    Options go to the criterion: ``threshold`` (snr, default 1; etheta, default 0.1); ``scale``, ``code_offset``
    (bmrs_n); ``p1`` (default 8), ``p2`` (23), ``lower`` (bmrs_u).  ``min_units`` keeps at least that many units per
    layer (those with the best statistic), so no layer is cut through.  Masks are not monotone for log-normal gates:
    a unit pruned earlier comes back if its posterior recovers (BMRS Algorithm 1).  Every decision is made before
    the first mask is written, so a criterion that does not apply to a gate's kind, or a bad option, raises a
    ValueError and leaves every mask as it was.
    """
    decisions = decide(model, criterion, min_units=min_units, **options)   # raises before anything is written
    gates = find_gates(model)
    for name, d in decisions.items():
        gates[name].mask.copy_(d.keep.to(gates[name].mask.device))
    return _report(criterion, decisions, gates)


def _report(criterion: str, decisions: dict, gates: dict) -> PruneReport:
    report = PruneReport(criterion, next(iter(decisions.values())).rule)
    for name, d in decisions.items():
        s = d.statistic
        report.layers.append(LayerReport(name, int(gates[name].mask.bool().sum()), d.keep.numel(), float(s.min()),
                                         float(s.median()), float(s.max())))
        report.statistics[name] = s.cpu()
    return report


@torch.no_grad()
def report(model: nn.Module, criterion: str = "bmrs_n", **options) -> PruneReport:
    """The criterion's statistics beside the masks the gates hold now (kept = unmasked units); writes nothing."""
    return _report(criterion, decide(model, criterion, min_units=0, **options), find_gates(model))


class PruneSchedule:
    """BMRS Algorithm 1 as one call per epoch: masks every ``every`` epochs until ``prune_epochs``, then frozen.

    ``permanent=True`` keeps a pruned unit pruned (mask = new decision AND old mask), as BMRS's released code does in
    effect by zeroing a pruned unit's weights every epoch; by default masks are recomputed from scratch.

        schedule = fb.prune.PruneSchedule(model, "bmrs_n", prune_epochs=50, every=1)
        for epoch in range(50 + 10):              # 10 fine-tune epochs with masks frozen
            train_one_epoch(...)
            report = schedule.step(epoch)         # a PruneReport when masks changed, else None
    """

    def __init__(self, model: nn.Module, criterion: str = "bmrs_n", *, prune_epochs: int, every: int = 1,
                 permanent: bool = False, **options):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if isinstance(prune_epochs, bool) or not isinstance(prune_epochs, int) or prune_epochs < 1:
            raise ValueError(f"prune_epochs must be a positive integer, got {prune_epochs!r}")
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r}")
        if not isinstance(permanent, bool):
            raise TypeError(f"permanent must be True or False, got {permanent!r}")
        opts = {k: v for k, v in options.items() if k != "min_units"}
        check_options(criterion, CRITERIA[criterion].fn, opts)   # now, not after the first epoch
        self.model, self.criterion, self.every, self.prune_epochs = model, criterion, every, prune_epochs
        self.permanent = permanent
        self.options = options
        self.last_report: PruneReport | None = None

    def frozen(self, epoch: int) -> bool:
        return epoch >= self.prune_epochs

    def step(self, epoch: int) -> PruneReport | None:
        """Call after training epoch ``epoch`` (0-based)."""
        if self.frozen(epoch):
            return None
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.prune_epochs:
            before = {n: g.mask.clone() for n, g in find_gates(self.model).items()} if self.permanent else None
            report = update_masks(self.model, self.criterion, **self.options)
            if before is not None:     # a pruned unit stays pruned (BMRS's code zeroes its weights)
                with torch.no_grad():
                    for name, g in find_gates(self.model).items():
                        g.mask.copy_(g.mask.bool() & before[name].bool().to(g.mask.device))
                for r in report.layers:
                    r.kept = int(find_gates(self.model)[r.name].mask.bool().sum())
            self.last_report = report
            return report
        return None
