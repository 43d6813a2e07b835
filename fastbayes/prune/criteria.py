"""Pruning criteria in one table: one decision statistic per unit and the rule that keeps it.

On a ``LogNormalGate`` posterior q(θ) = LogN[a,b](μ, σ²):

* ``snr``:    keep iff SNR(θ) > threshold (SBP, τ = 1).
* ``bmrs_n``: keep iff ΔF_N < 0, reduced prior TruncatedLogNormal(a, 1e-6) on [a, b] (BMRS_N, METHODS.md §2.3).
* ``bmrs_u``: keep iff ΔF_U < 0, reduced prior LogUniform(log 2^-p2, log 2^-p1) (BMRS_U-p1, §2.4);
  ``code_clamp=True`` evaluates it as the released code does (μ clamped into [a, b], log σ not clamped above).  With the paper's
  a' = 2^-23 a unit whose posterior sits below a' (θ < 1e-7, i.e. effectively zero) has ΔF_U → -∞ and is never
  pruned; ``lower="a"`` uses a' = a and closes that blind spot.
* ``etheta``: keep iff E[θ] > threshold (default 0.1; the E[θ] rule of BMRS Table 1).

On a ``BernoulliGate``:

* ``bernoulli``: keep iff θ ≥ ½ and the unit is not masked already (the gate's eval-mode ξ).

On a ``fastbayes.dllp.ParticleEnsemble`` (anything with ``responsibilities() -> {layer: [n, units]}``):

* ``consensus``: keep iff the slab responsibility averaged over the particles is ≥ threshold (default ½).

``CRITERIA[name]`` is a ``Criterion``: call it on what it ``applies_to``; anything else is refused with a ValueError
naming the criterion and the kind of gate.  ``decide`` runs a criterion over a whole model (or ensemble) and
validates everything before returning, so callers can write masks only once every decision is known.
"""
from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..nn.bernoulli import BernoulliGate
from ..nn.gates import LOG_SIGMA_MIN, LogNormalGate
from ..nn.sites import gates as find_gates
from ..reference.gate_stats import delta_f_n, delta_f_u


@dataclass(frozen=True)
class Decision:
    statistic: torch.Tensor   # float64, one per unit
    keep: torch.Tensor        # bool
    threshold: float
    rule: str                 # human-readable rule, e.g. "keep if SNR > 1"
    higher_keeps: bool = True  # a larger statistic is a better unit (False for ΔF)

    def score(self) -> torch.Tensor:
        """The statistic oriented so that higher is better (what ``min_units`` ranks by)."""
        return self.statistic if self.higher_keeps else -self.statistic


def snr(gate, threshold: float = 1.0) -> Decision:
    if not threshold >= 0:
        raise ValueError(f"threshold must be non-negative, got {threshold!r}")
    s = gate.stats()[2].detach().to(torch.float64)
    return Decision(s, s > threshold, float(threshold), f"keep if SNR > {threshold:g}")


def etheta(gate, threshold: float = 0.1) -> Decision:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1) (E[θ] lies in (0, 1]), got {threshold!r}")
    m = gate.stats()[1].detach().to(torch.float64)
    return Decision(m, m > threshold, float(threshold), f"keep if E[θ] > {threshold:g}")


def bmrs_n(gate, scale: float = 1e-6, code_offset: bool = False) -> Decision:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    sigma = gate.clamped_log_sigma().detach().to(torch.float64).exp()
    df = delta_f_n(gate.mu.detach(), sigma, gate.a, gate.b, gate.a, scale, code_offset=code_offset)
    return Decision(df, df < 0, 0.0, "keep if ΔF_N + ½·log 2π < 0 (BMRS code)" if code_offset else "keep if ΔF_N < 0",
                    higher_keeps=False)


def bmrs_u(gate, p1: float = 8, p2: float = 23, lower: str | float | None = None, code_clamp: bool = False) -> Decision:
    a2 = -p2 * math.log(2.0) if lower is None else (gate.a if lower == "a" else float(lower))
    b2 = -p1 * math.log(2.0)
    if not gate.a <= a2 < b2 <= gate.b:
        raise ValueError(f"need a <= a' < b' <= b for BMRS_U, got a={gate.a}, a'={a2:.4g} (p2/lower), "
                         f"b'={b2:.4g} (p1), b={gate.b}")
    mu = gate.mu.detach()
    if code_clamp:   # BMRS's released code: μ clamped into [a, b], log σ clamped from below only
        mu = mu.clamp(gate.a, gate.b)
        sigma = gate.log_sigma.detach().to(torch.float64).clamp_min(LOG_SIGMA_MIN).exp()
    else:
        sigma = gate.clamped_log_sigma().detach().to(torch.float64).exp()
    df = delta_f_u(mu, sigma, gate.a, gate.b, a2, b2)
    return Decision(df, df < 0, 0.0, f"keep if ΔF_U(p1={p1:g}) < 0", higher_keeps=False)


def bernoulli(gate) -> Decision:
    th = gate.effective_theta().detach().to(torch.float64)
    keep = (th >= 0.5) & gate.effective_mask().to(th.device)
    return Decision(th, keep, 0.5, "keep if θ ≥ ½ and not masked")


def consensus(ensemble, threshold: float = 0.5) -> dict[str, Decision]:
    """{layer: Decision} from the particles' slab responsibilities [n_particles, units] per layer."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    out = {}
    for name, r in ensemble.responsibilities().items():
        mean = r.detach().double().mean(0).cpu()
        out[name] = Decision(mean, mean >= threshold, float(threshold),
                             f"keep if mean slab responsibility ≥ {threshold:g}")
    return out


ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class Criterion:
    """A named rule: ``fn(target, **options)`` on a gate of the kinds in ``applies_to`` (a tuple of gate classes)
    or, with ``applies_to == "ensemble"``, on a particle ensemble, returning {layer: Decision}."""
    name: str
    fn: Callable
    applies_to: tuple | str

    def kinds(self) -> str:
        return "a particle ensemble" if self.applies_to == ENSEMBLE else \
            " or ".join(c.__name__ for c in self.applies_to)

    def applies(self, target) -> bool:
        if self.applies_to == ENSEMBLE:
            return callable(getattr(target, "responsibilities", None)) and not isinstance(target, nn.Module)
        return isinstance(target, self.applies_to)

    def check(self, target, where: str = "") -> None:
        if not self.applies(target):
            what = type(target).__name__
            fits = sorted(n for n, c in CRITERIA.items() if c.applies(target))
            raise ValueError(f"criterion {self.name!r} applies to {self.kinds()}, not to a {what}{where}; "
                             f"criteria for {what}: {fits or 'none'}")

    def __call__(self, target, **options):
        self.check(target)
        return self.fn(target, **options)


CRITERIA: dict[str, Criterion] = {c.name: c for c in [
    Criterion("snr", snr, (LogNormalGate,)),
    Criterion("bmrs_n", bmrs_n, (LogNormalGate,)),
    Criterion("bmrs_u", bmrs_u, (LogNormalGate,)),
    Criterion("etheta", etheta, (LogNormalGate,)),
    Criterion("bernoulli", bernoulli, (BernoulliGate,)),
    Criterion("consensus", consensus, ENSEMBLE),
]}


def _min_units(d: Decision, min_units: int) -> Decision:
    need = min(min_units, d.keep.numel())
    if int(d.keep.sum()) >= need:
        return d
    keep = d.keep.clone()
    # keep the units the criterion likes best (high SNR/E[θ]/θ/responsibility, low ΔF); stable for ties
    order = torch.argsort(d.score().cpu(), descending=True, stable=True)
    keep[order[:need].to(keep.device)] = True
    return Decision(d.statistic, keep, d.threshold, d.rule, d.higher_keeps)


def check_options(criterion: str, fn, options: dict) -> None:
    """Option names and number types of a criterion, named in the error, before any decision."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    allowed = {p.name: p.default for p in params}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"criterion {criterion!r} takes the options {sorted(allowed)}, got {unknown}")
    for name, v in options.items():
        default = allowed[name]
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not (
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)):
            raise ValueError(f"{name} (criterion {criterion!r}) must be a finite number, got {v!r}")


def decide(target, criterion: str, *, min_units: int = 1, **options) -> dict[str, Decision]:
    """Every decision of ``criterion`` on ``target``: a model with gates ({first site of each gate: Decision}) or a
    particle ensemble ("consensus": {layer: Decision}).  Each layer keeps at least ``min_units`` units (those with the
    best statistic).  Nothing is written: a wrong criterion, gate kind or option raises before any decision is
    returned, so ``update_masks`` changes all masks or none."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r}")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 0:
        raise ValueError(f"min_units must be a non-negative integer, got {min_units!r}")
    c = CRITERIA[criterion]
    check_options(criterion, c.fn, options)
    if c.applies_to == ENSEMBLE:
        c.check(target)
        found = c.fn(target, **options)
    else:
        if not isinstance(target, nn.Module):
            raise ValueError(f"criterion {criterion!r} applies to the {c.kinds()} gates of a model, got a "
                             f"{type(target).__name__}")
        gates = find_gates(target)
        if not gates:
            raise ValueError("model has no gates: call fastbayes.add_gates(model) first")
        for name, gate in gates.items():     # every gate's kind first: a mixed model fails before any work
            c.check(gate, f" (the gate on {name!r})")
        found = {name: c.fn(gate, **options) for name, gate in gates.items()}
    return {name: _min_units(d, min_units) for name, d in found.items()}
