"""Bernoulli unit gates with a spike-and-slab Gaussian scale-mixture prior, after Guenter & Sideris (METHODS.md §3.2).

Only the abstracts of Guenter & Sideris (arXiv 2205.04650, 2406.04549, 2411.09127) could be read and no code is
public, so this is fastbayes's own design built to satisfy what they state, not a reproduction:

* every unit i (neuron or channel) is multiplied by ξ_i ~ Bern(θ_i), drawn per example (``ops.bernoulli_gate``);
  θ_i is a Parameter kept in [0, 1] by projection after every optimiser step (projected SGD);
* the weights w_i feeding unit i (its row of the gated Linear/Conv weight, plus its bias) are point estimates with
  the prior p(w_i | ξ_i) = N(0, σ1² I) (slab, ξ_i = 1) or N(0, σ0² I) (spike, ξ_i = 0);
* the gate prior Bern(π_i) gets a flat hyper-prior and π_i its type-II optimum θ_i, so KL(q(ξ_i) ‖ p(ξ_i)) = 0 and the
  objective  E_q[−log p(D | W, ξ)] + Σ_i [θ_i·c1(w_i) + (1 − θ_i)·c0(w_i)]  is affine in each θ_i: its minima over
  [0, 1]ⁿ are vertices, so the gates end at exactly 0 or 1 and the final network is deterministic.

Defaults (documented choices, not from the papers): σ1² = 2/fan_in of the gated layer (He initialisation's variance,
set by ``attach`` or, failing that, on the first ``prior_loss``), σ0 = 0.1·σ1, θ initialised to 1.  Train θ by
projected plain SGD (``fastbayes demo`` uses lr 3 with the prior weighted 1/N), not Adam, and do not freeze θ = 1
(``Shrinker(freeze=False)``, its default).

What the defaults do (docs/RESULTS.md §2).  Every unit starts in the slab, so at first only the slab's L2
‖w‖²/(2σ1²N) acts on the weights and θ's prior gradient c1 − c0 = k·log(σ1/σ0) − ‖w‖²(1/σ0² − 1/σ1²)/2 is negative
(θ is held at 1 by the projection).  A unit leaves once the RMS of its k incoming weights falls below
σ0·√(2·log(σ1/σ0)/(1 − σ0²/σ1²)) ≈ 2.2·σ0: c1 − c0 turns positive, θ drops, the spike's decay (1 − θ)/σ0² shrinks
the weights further and θ reaches 0 in a few dozen steps (positive feedback); a unit whose θ gradient stays negative
sits at exactly 1.  The prior thus acts as a weight-norm threshold per unit, set by σ0: on Fashion-MNIST (MLP
784-300-100-10, full 48k split, 5 epochs) it removed most first-layer units (fan-in 784, many near-useless pixel
weights, so their RMS sits near the threshold) and almost no second-layer unit, for 2-5 points of accuracy.  The old
defaults θ = 0.9, σ0 = 0.01·σ1 crushed every weight within ~40 Adam steps (the spike's decay (1 − θ)/σ0² is 1000/σ1²);
θ = 0.5 with σ0 = 0.1·σ1 works on the toy teacher of tests/test_bernoulli.py (Adam lr 2e-2), not on Fashion-MNIST.
A unit is worth keeping at the optimum when it lowers the data term by more than about k·log(σ1/σ0) nats.

Training loop::

    gates = fastbayes.add_gates(model, kind="bernoulli")
    # optimizer: Adam on the weights and plain SGD on the θ (e.g. lr 3), as param groups or two optimisers
    fastbayes.nn.bernoulli.attach_projection(optimizer, model)     # θ clipped to [0, 1] after every step
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + fastbayes.nn.bernoulli.prior_loss(model) / n_train
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        # without attach_projection, the one line:  fastbayes.nn.bernoulli.project_gates(model)
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from ..distributions import SpikeSlab
from ..layers import BATCH_NORMS, WEIGHTED, units
from ..ops import bernoulli as ops   # the module itself: works before fastbayes.ops re-exports it
from .cost import CostPrior, ParamCost  # noqa: F401  (the cost-aware prior; cost.py imports this module lazily)
from .sites import GATE_ATTR, gates


def _positive(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(float(v)) and float(v) > 0):
        raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    return float(v)


class BernoulliGate(nn.Module):
    """y = x · ξ, ξ ~ Bern(θ) per example and unit along ``dim``, with a spike-and-slab prior on the unit's weights.

    Parameter ``theta`` (one keep probability per unit, in [0, 1] after ``project_()``); bool buffers ``mask``
    (False: unit pruned, ξ = 0 and no θ gradient) and ``frozen`` (True: θ held at exactly 1, ξ = 1, no θ gradient);
    float buffers ``log_var1`` = log σ1² and ``log_var0`` = log σ0² of the prior (NaN until set, see
    ``set_slab_var``).  In eval mode ξ = 1[θ ≥ ½]·mask and nothing is drawn.

    Args:
        num_features: number of units (channels or neurons).
        dim: unit axis of the input (1 for NCHW, -1 for [B, T, C]).
        init_theta: initial keep probability, in [0, 1] (default 1: every unit starts in the slab; see the module
            docstring for why not 0.9).
        slab_var: slab variance σ1²; None: 2/fan_in of the gated layer, set by ``add_gates`` or ``prior_loss``.
            (Deprecated form: ``sigma1`` = σ1.)
        spike_ratio: spike-to-slab ratio σ0/σ1 (default 0.1), in (0, 1) (deprecated name: ``sigma0_ratio``).  The
            prior is ``fastbayes.distributions.SpikeSlab(slab_var, spike_ratio)``.  A unit is dropped once the RMS
            of its incoming weights falls below about 2.2·σ0 (for 0.1), so this sets how much is pruned.
        kl_weight: multiplier of this gate's prior in ``prior_loss`` (the name ``add_gates`` passes for every kind).
    """

    def __init__(self, num_features: int, dim: int = 1, init_theta: float = 1.0, slab_var: Optional[float] = None,
                 spike_ratio: float = 0.1, kl_weight: float = 1.0, **deprecated):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise ValueError(f"dim must be a non-zero integer (axis 0 holds the examples), got {dim!r}")
        if isinstance(init_theta, bool) or not isinstance(init_theta, (int, float)) or not 0.0 <= init_theta <= 1.0:
            raise ValueError(f"init_theta must be a number in [0, 1], got {init_theta!r}")
        slab_var, spike_ratio, ratio_name = _deprecated_prior_names(slab_var, spike_ratio, deprecated)
        ratio = _positive(ratio_name, spike_ratio)
        if not ratio < 1.0:
            raise ValueError(f"{ratio_name} must be below 1 (the spike is narrower than the slab), got {ratio}")
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not float(kl_weight) >= 0:
            raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight!r}")
        self.dim, self._spike_ratio, self.kl_weight = dim, ratio, float(kl_weight)
        self.theta = nn.Parameter(torch.full((num_features,), float(init_theta)))
        self.register_buffer("mask", torch.ones(num_features, dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros(num_features, dtype=torch.bool))
        # log σ1², log σ0² of the prior (the fused op's constants; NaN until the slab variance is known)
        self.register_buffer("log_var1", torch.tensor(math.nan))
        self.register_buffer("log_var0", torch.tensor(math.nan))
        self._scale_known = False   # host-side cache of "log_var1 is set" (avoids a device sync per step)
        self._forced: Optional[tuple[torch.Tensor, float]] = None
        if slab_var is not None:
            self.set_slab_var(slab_var)

    @property
    def spike_ratio(self) -> float:
        """σ0/σ1 of the prior (fixed at construction: ``log_var0`` is derived from it)."""
        return self._spike_ratio

    @property
    def sigma0_ratio(self) -> float:
        """Deprecated name of ``spike_ratio``."""
        warnings.warn("BernoulliGate.sigma0_ratio is deprecated: use spike_ratio", DeprecationWarning, stacklevel=2)
        return self._spike_ratio

    @property
    def prior(self) -> Optional[SpikeSlab]:
        """The spike-and-slab prior on each unit's incoming weights as a ``fastbayes.distributions.SpikeSlab`` (None
        until the slab variance is set).  Its π plays no part here: the gate's prior slab probability is θ itself."""
        if not self.prior_scale_set():
            return None
        return SpikeSlab(math.exp(float(self.log_var1)), self._spike_ratio)

    @classmethod
    def from_layer(cls, layer: nn.Module, *, site: nn.Module | None = None, **options) -> "BernoulliGate":
        """A gate for the output units of ``layer`` (a Linear/Conv), hosted on ``site`` (the layer itself or the
        BatchNorm after it): units and dim from the site, and unless ``slab_var`` is given the slab σ1² = 2/fan_in of
        the layer whose weights feed the units (He initialisation's variance)."""
        n, dim = units(site if site is not None else layer)
        gate = cls(n, dim=dim, **options)
        if not gate.prior_scale_set() and isinstance(layer, WEIGHTED):
            gate.set_slab_var(2.0 / _fan_in(layer))
        return gate

    @property
    def num_features(self) -> int:
        return self.theta.numel()

    def penalty(self, layer: nn.Module) -> torch.Tensor:
        """kl_weight · Σ_units [θ·c1(w) + (1 − θ)·c0(w)] with w the incoming weights from ``layer`` (the prior has
        no meaning without the weights it is on); ``fastbayes.nn.penalty(model)`` sums every gate in one launch."""
        return _prior_terms([(self, layer)])

    def set_slab_var(self, slab_var: float) -> None:
        """σ1² = ``slab_var`` (slab) and σ0 = spike_ratio·σ1 (spike), through ``SpikeSlab``."""
        prior = SpikeSlab(slab_var, self._spike_ratio)
        with torch.no_grad():
            self.log_var1.fill_(prior.log_var1)
            self.log_var0.fill_(prior.log_var0)
        self._scale_known = True

    def set_prior_scale(self, sigma1: float) -> None:
        """σ1 = ``sigma1`` (the slab's standard deviation): ``set_slab_var(sigma1²)``."""
        self.set_slab_var(_positive("sigma1", sigma1) ** 2)

    def prior_scale_set(self) -> bool:
        if not self._scale_known:
            self._scale_known = not math.isnan(float(self.log_var1))
        return self._scale_known

    def effective_theta(self) -> torch.Tensor:
        """θ with frozen units at exactly 1 (they get no θ gradient), and an ``exact_theta_grad`` override."""
        th = torch.where(self.frozen, torch.ones_like(self.theta), self.theta)
        if self._forced is not None:
            idx, value = self._forced
            th = th.index_fill(0, idx, value)
        return th

    def effective_mask(self) -> torch.Tensor:
        if self._forced is not None and self._forced[1] == 1.0:
            return self.mask.index_fill(0, self._forced[0], True)
        return self.mask

    @contextlib.contextmanager
    def forced(self, units, value: float):
        """Within the block, ξ of ``units`` (int or index tensor) is ``value`` (0 or 1) for every example."""
        if value not in (0.0, 1.0):
            raise ValueError(f"value must be 0 or 1, got {value!r}")
        idx = torch.as_tensor(units, dtype=torch.long, device=self.theta.device).reshape(-1)
        prev, self._forced = self._forced, (idx, float(value))
        try:
            yield self
        finally:
            self._forced = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 1:            # an unbatched Linear output: a single example
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if not self.training:
            return ops.bernoulli_gate(x, self.effective_theta(), dim=self.dim, mask=self.effective_mask(),
                                      training=False)
        n = x.dim()
        d = self.dim + n if self.dim < 0 else self.dim
        if not x.is_floating_point() or not 0 < d < n or x.shape[d] != self.theta.numel():
            # the full checks, with the message naming what is wrong
            return ops.bernoulli_gate(x, self.effective_theta(), dim=self.dim, mask=self.effective_mask())
        return ops.gate(x, self.effective_theta(), self.effective_mask(), d, None, 0)

    @torch.no_grad()
    def project_(self) -> None:
        """Projected SGD: clip θ into [0, 1] (NaN to 0, so a diverged unit is dropped) and hold frozen units at 1."""
        self.theta.nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
        self.theta.masked_fill_(self.frozen, 1.0)

    @torch.no_grad()
    def freeze_(self, eps: float = 1e-3) -> int:
        """Freeze every kept unit with θ ≥ 1 − eps at θ = 1; returns how many were newly frozen."""
        if not 0.0 < float(eps) < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
        new = (self.theta >= 1.0 - float(eps)) & self.mask & ~self.frozen
        self.frozen |= new
        self.theta.masked_fill_(self.frozen, 1.0)
        return int(new.sum())

    def deterministic(self) -> torch.Tensor:
        """Per unit: True where ξ is no longer random (pruned, frozen, or θ exactly 0 or 1)."""
        th = self.theta.detach()
        return ~self.mask | self.frozen | (th == 0) | (th == 1)

    def extra_repr(self) -> str:
        kept, frozen = int(self.mask.sum()), int(self.frozen.sum())
        return (f"{self.num_features}, kept={kept}, frozen={frozen}, dim={self.dim}, "
                f"spike_ratio={self.spike_ratio}, kl_weight={self.kl_weight}")


# ------------------------------------------------------------------------------------------------------------------
# the weights feeding each unit

def _rows(layer: nn.Module) -> torch.Tensor:
    """The weight as [units, fan_in]: one row of incoming weights per output unit."""
    w = layer.weight
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        if layer.groups != 1:
            raise ValueError(f"cannot attach a prior to a grouped {type(layer).__name__} (groups={layer.groups})")
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


def _sources(model: nn.Module) -> dict[str, tuple[BernoulliGate, nn.Module]]:
    """{gated module name: (gate, the Linear/Conv whose weights feed its units)}.  A gate on a BatchNorm (placement
    "bn") takes the Linear/Conv that runs right before that BatchNorm in module order."""
    mods = dict(model.named_modules())
    out: dict[str, tuple[BernoulliGate, nn.Module]] = {}
    leaves = None
    for name, gate in gates(model).items():
        if not isinstance(gate, BernoulliGate):
            continue
        mod = mods[name]
        if isinstance(mod, WEIGHTED):
            out[name] = (gate, mod)
            continue
        if isinstance(mod, BATCH_NORMS):
            if leaves is None:
                # leaves in module order, a gate child not counting as a child
                leaves = [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] != GATE_ATTR
                          and all(cn == GATE_ATTR for cn, _ in m.named_children())]
            pos = next(i for i, (n, _) in enumerate(leaves) if n == name)
            prev = leaves[pos - 1][1] if pos > 0 else None
            if isinstance(prev, WEIGHTED) and _rows(prev).shape[0] == gate.num_features:
                out[name] = (gate, prev)
                continue
        raise ValueError(f"cannot find the weights feeding the units of the gate on {name!r} "
                         f"({type(mod).__name__}): gate a Linear/Conv, or a BatchNorm right after one")
    return out


def _deprecated_prior_names(slab_var, spike_ratio, deprecated: dict):
    """(slab_var, spike_ratio, the name spike_ratio was given as) from the constructor's keywords, accepting the old
    names ``sigma1`` (σ1, not σ1²) and ``sigma0_ratio`` (= spike_ratio) that older code and checkpoints use."""
    extra = set(deprecated) - {"sigma1", "sigma0_ratio"}
    if extra:
        raise TypeError(f"BernoulliGate got unexpected keyword arguments {sorted(extra)}")
    name = "spike_ratio"
    if deprecated.get("sigma1") is not None:
        warnings.warn("BernoulliGate(sigma1=...) is deprecated: use slab_var=sigma1**2", DeprecationWarning,
                      stacklevel=3)
        if slab_var is not None:
            raise ValueError("give slab_var or its deprecated form sigma1, not both")
        slab_var = _positive("sigma1", deprecated["sigma1"]) ** 2
    if "sigma0_ratio" in deprecated:
        warnings.warn("BernoulliGate(sigma0_ratio=...) is deprecated: use spike_ratio (the same σ0/σ1)",
                      DeprecationWarning, stacklevel=3)
        if spike_ratio != 0.1:
            raise ValueError("give spike_ratio or its deprecated form sigma0_ratio, not both")
        spike_ratio, name = deprecated["sigma0_ratio"], "sigma0_ratio"
    return slab_var, spike_ratio, name


def _fan_in(layer: nn.Module) -> int:
    return _rows(layer).shape[1]


def bernoulli_gates(model: nn.Module) -> dict[str, BernoulliGate]:
    """{name of the gated module: gate} for every BernoulliGate in ``model``."""
    return {n: g for n, g in gates(model).items() if isinstance(g, BernoulliGate)}


def prior_loss(model: nn.Module) -> torch.Tensor:
    """Σ over every BernoulliGate of kl_weight · Σ_units [θ·c1(w) + (1 − θ)·c0(w)], in ONE ``scale_mixture_prior``.

    The analogue of ``fastbayes.kl_loss`` for Bernoulli gates: add ``prior_loss(model) / n_train`` to the mean task
    loss (the per-example ELBO).  w are the incoming weights of each unit (its row of the gated Linear/Conv weight and
    its bias entry); pruned units (mask False) contribute nothing, frozen ones their slab term c1 with no θ gradient.
    A gate whose σ1 was never set gets σ1² = 2/fan_in of its layer here.
    """
    found = _sources(model)
    if not found:
        raise ValueError("model has no BernoulliGate: call fastbayes.add_gates(model, kind='bernoulli') first")
    return _prior_terms(list(found.values()))


def _prior_terms(found: list) -> torch.Tensor:
    """The weighted prior cost of (gate, layer) pairs, in ONE ``scale_mixture_prior`` launch."""
    th, sq, kk, lv0, lv1, wt = [], [], [], [], [], []
    for gate, layer in found:
        rows = _rows(layer)
        if rows.shape[0] != gate.num_features:
            raise ValueError(f"a gate has {gate.num_features} units but its layer {type(layer).__name__} has "
                             f"{rows.shape[0]} output units")
        if not gate.prior_scale_set():
            gate.set_slab_var(2.0 / rows.shape[1])
        t = gate.effective_theta()
        s = rows.pow(2).sum(1)
        k = rows.shape[1]
        if getattr(layer, "bias", None) is not None:
            s = s + layer.bias.pow(2)
            k += 1
        c = gate.num_features
        th.append(t)
        sq.append(s.to(t.dtype))
        kk.append(torch.full((c,), float(k), dtype=t.dtype, device=t.device))
        lv0.append(gate.log_var0.to(t.dtype).expand(c))
        lv1.append(gate.log_var1.to(t.dtype).expand(c))
        wt.append(gate.mask.to(t.dtype) * gate.kl_weight)
    cost = ops.scale_mixture_prior(torch.cat(th), torch.cat(sq), torch.cat(kk), torch.cat(lv0), torch.cat(lv1))
    return (cost * torch.cat(wt)).sum()


# ------------------------------------------------------------------------------------------------------------------
# projection

def project_gates(model: nn.Module) -> int:
    """Clip θ of every BernoulliGate of ``model`` into [0, 1] (call right after ``optimizer.step()``); returns the
    number of gates."""
    n = 0
    for m in model.modules():
        if isinstance(m, BernoulliGate):
            m.project_()
            n += 1
    return n


def attach_projection(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Run ``project_gates(model)`` after every ``optimizer.step()`` (``register_step_post_hook``); returns the hook
    handle (``.remove()`` detaches it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: project_gates(model))


# ------------------------------------------------------------------------------------------------------------------
# insertion

def attach(model: nn.Module, layers: Iterable[str] | Callable | None = None, *, exclude: Iterable[str] = (),
           placement: str = "output", kl_weight: float | dict[str, float] | Callable[[str], float] = 1.0,
           **gate_options) -> dict[str, BernoulliGate]:
    """Deprecated alias of ``fastbayes.add_gates(model, kind="bernoulli", ...)`` (same arguments)."""
    warnings.warn("fastbayes.nn.bernoulli.attach is deprecated: use fastbayes.add_gates(model, kind='bernoulli')",
                  DeprecationWarning, stacklevel=2)
    from .insert import add_gates   # insert imports this module
    return add_gates(model, "bernoulli", layers=layers, exclude=exclude, placement=placement, kl_weight=kl_weight,
                     **gate_options)


# ------------------------------------------------------------------------------------------------------------------
# the exact two-pass estimator

def exact_theta_grad(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], gate: BernoulliGate,
                     units: Optional[Sequence[int] | torch.Tensor] = None) -> torch.Tensor:
    """ℓ(ξ_i = 1) − ℓ(ξ_i = 0) for each unit i in ``units`` of ``gate``: the exact data gradient ∂E_q[ℓ]/∂θ_i.

    Each unit costs two evaluations of ``loss_fn(model)`` (called with no arguments but the model, under no_grad):
    one with ξ_i forced to 1 and one forced to 0 for every example, every other gate drawing the same ξ in both (the
    RNG state of torch's default generators is restored before each evaluation, so ``seed=None`` draws repeat; torch's
    RNG is left as it was).  A single call is an unbiased one-sample estimate of E[ℓ(ξ_i=1) − ℓ(ξ_i=0)], which the
    fused straight-through gradient Σ g·x only approximates to first order (bias (θ_i − ½)·∂²ℓ/∂ξ_i²,
    ``fastbayes/reference/bernoulli.py``).

    When to use it: for a handful of gates whose removal changes the loss far from linearly, such as layer gates, the
    last few units of a layer, or units whose θ hovers near 0 or 1 where the bias is largest; and to audit the
    straight-through estimate.  It is too costly for every unit of a network.  To train with it, replace the data
    part of θ's gradient after ``backward()``:  ``gate.theta.grad[units] = d + prior_grad[units]``  with
    ``prior_grad = torch.autograd.grad(prior_loss(model) / n_train, gate.theta)[0]``.

    Returns a float64 tensor with one entry per requested unit (all units when ``units`` is None), on θ's device.
    """
    if not isinstance(gate, BernoulliGate):
        raise ValueError(f"gate must be a BernoulliGate, got {type(gate).__name__}")
    if not any(m is gate for m in model.modules()):
        raise ValueError("gate is not part of model")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(model) -> scalar tensor")
    dev = gate.theta.device
    if units is None:
        idx = torch.arange(gate.num_features)
    else:
        idx = torch.as_tensor(units, dtype=torch.long).reshape(-1).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= gate.num_features):
            raise ValueError(f"units must index the gate's {gate.num_features} units, got {idx.tolist()}")
    diffs = _forced_differences(model, loss_fn, gate, idx, per_example=False)
    return torch.stack(diffs).to(dev) if diffs else torch.empty(0, dtype=torch.float64, device=dev)


def _forced_differences(model: nn.Module, loss_fn, gate: BernoulliGate, idx: torch.Tensor,
                        per_example: Optional[bool]) -> list[torch.Tensor]:
    """ℓ(ξ_i = 1) − ℓ(ξ_i = 0) (float64, CPU) for each unit i in ``idx``, every other gate drawing the same ξ in both
    evaluations (torch's RNG state restored before each, and left as it was).  ``per_example`` True: ``loss_fn``
    returns one loss per example (``reduction="none"``) and so does the difference; False: a scalar; None: either."""
    dev = gate.theta.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    out = []
    with torch.no_grad(), torch.random.fork_rng(devices=cuda):
        cpu_state = torch.get_rng_state()
        cuda_state = [torch.cuda.get_rng_state(d) for d in cuda]

        def evaluate(i: int, value: float) -> torch.Tensor:
            torch.set_rng_state(cpu_state)
            for d, st in zip(cuda, cuda_state):
                torch.cuda.set_rng_state(st, d)
            with gate.forced(i, value):
                loss = loss_fn(model)
            ok = isinstance(loss, torch.Tensor) and (loss.numel() == 1 if per_example is False else
                                                     loss.dim() == 1 if per_example else loss.dim() <= 1)
            if not ok:
                raise ValueError("loss_fn must return " + {False: "a scalar tensor",
                                                           True: "one loss per example (a 1-d tensor)",
                                                           None: "a scalar or one loss per example"}[per_example])
            return loss.detach().double().cpu().reshape(() if per_example is False else -1)

        for i in idx.tolist():
            out.append(evaluate(i, 1.0) - evaluate(i, 0.0))
    return out


# ------------------------------------------------------------------------------------------------------------------
# deciding the units in transit

def decide(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
           prior_fn: Optional[Callable[[], torch.Tensor]] = None, *, max_drop: Optional[float] = None,
           z: float = 2.0, max_units: Optional[int] = None, accumulate: bool = False) -> dict[str, int]:
    """Set every kept unit not at θ = 1 (0 ≤ θ < 1, masked units aside) to θ = 0 or 1 by its exact gradient.

    The objective is affine in each θ_i, so its minimum along θ_i sits at 0 when
    ∂/∂θ_i = [ℓ(ξ_i = 1) − ℓ(ξ_i = 0)] + ∂prior/∂θ_i > 0 and at 1 otherwise; the data part is the exact two-pass
    difference (as ``exact_theta_grad``: two evaluations of ``loss_fn(model)`` per unit, the other gates' draws
    shared), the prior part from autograd on ``prior_fn()`` (the prior term as it enters the mean loss, e.g.
    ``lambda: prior() / n_train``; None: no prior).

    ``loss_fn`` returns the loss of each example of one batch (``reduction="none"``): a unit goes to 0 only when its
    gradient exceeds ``z`` standard errors of the batch's mean difference, since a removal is permanent and a
    batch's noise would otherwise prune units at random, a few at every call (a slow erosion of the network).  A
    unit without that evidence goes to 1 and is judged again later.  A scalar loss (no standard error) decides by
    the sign alone.
    The straight-through estimate that trains θ is biased: it can hold a unit inside (0, 1) for good, where it acts
    as dropout, and it can take a unit to θ = 0 whose removal the exact difference shows to be costly (it is a
    first-order estimate; the last channels of a layer are the extreme case).  So θ = 0 reached by training is only
    a candidate: this call judges it like any unit in transit, and a ``Shrinker`` should remove units only after
    it (``Shrinker(every=...)`` large, ``shrink()`` after each call).  Deciding after every epoch, and at the end,
    leaves every gate at exactly 0 or 1 after a run of any length.  A unit set to 0 is masked and removed by the
    next ``shrink()``; one set to 1 stays trainable.  Every decision is computed before any θ changes, so a failing
    ``loss_fn`` leaves the model as it was.

    ``max_drop``: at most this fraction of a gate's kept units goes to 0 in one call, those with the largest
    gradient; the others are set to 1 and judged again later.  Each gradient is taken with every other unit in
    place, so dropping many units at once overshoots when they stand in for each other (a wide layer whose units are
    each dispensable alone but not together); pruning is permanent, so a cap turns one greedy jump into steps that
    training can correct between.  None: no cap.

    ``max_units``: judge at most this many of a gate's units in transit per call, a random subset (torch's
    generator); the others keep their θ until a later call.  Each judged unit costs two evaluations of ``loss_fn``,
    so this bounds a call's cost; leave it None for the last call of a run, so that every gate ends binary.

    ``accumulate=True``: a sequential test.  Each unit's per-example differences are pooled over every call that
    judged it (count, sum and sum of squares kept on the gate, sliced with it when units are removed, not saved in
    checkpoints), and the mean and standard error are those of the pool: a unit whose value sits near its price is
    no longer dropped by one unlucky batch, and evidence against it grows with every epoch it spends in transit.
    Call the last time with ``z=0`` to settle every unit by the sign of its pooled mean.

    Returns {gate name: units decided}.
    """
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not 0 < max_drop <= 1):
        raise ValueError(f"max_drop must be None or a fraction in (0, 1], got {max_drop!r}")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not (math.isfinite(z) and z >= 0):
        raise ValueError(f"z must be a finite non-negative number (standard errors), got {z!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model) -> scalar tensor")
    if prior_fn is not None and not callable(prior_fn):
        raise TypeError("prior_fn must be None or callable as prior_fn() -> scalar tensor")
    found = bernoulli_gates(model)
    if not found:
        raise ValueError("model has no BernoulliGate: call fastbayes.add_gates(model, kind='bernoulli') first")
    if max_units is not None and (isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 1):
        raise ValueError(f"max_units must be None or a positive integer, got {max_units!r}")
    if not isinstance(accumulate, bool):
        raise ValueError(f"accumulate must be a bool, got {accumulate!r}")
    todo = {k: (g.mask & ~g.frozen & (g.theta < 1)).nonzero().flatten() for k, g in found.items()}
    todo = {k: v for k, v in todo.items() if v.numel()}
    if max_units is not None:
        todo = {k: (v if v.numel() <= max_units else v[torch.randperm(v.numel())[:max_units].sort().values])
                for k, v in todo.items()}
    if not todo:
        return {}
    prior_grads = {}
    if prior_fn is not None:
        thetas = [found[k].theta for k in todo]
        value = prior_fn()
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("prior_fn must return a scalar tensor")
        grads = torch.autograd.grad(value, thetas, allow_unused=True)
        prior_grads = {k: g for k, g in zip(todo, grads) if g is not None}
    keep, pools = {}, {}
    for k, idx in todo.items():
        diffs = _forced_differences(model, loss_fn, found[k], idx, per_example=None)
        if accumulate:
            pool = evidence(found[k])[:, idx.cpu()].clone()
            pool += torch.stack([torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64),
                                              x.double().sum().cpu(), x.double().square().sum().cpu()])
                                 for x in diffs], 1)
            pools[k] = pool
            cnt, s1, s2 = pool
            d = s1 / cnt
            var = ((s2 - cnt * d * d) / (cnt - 1).clamp_min(1)).clamp_min(0)
            se = torch.where(cnt > 1, (var / cnt).sqrt(), torch.zeros_like(d))
        else:
            d = torch.stack([x.mean() for x in diffs])
            se = torch.stack([x.std() / math.sqrt(x.numel()) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
                              for x in diffs])
        if k in prior_grads:
            d = d + prior_grads[k][idx].double().cpu()
        keep[k] = ~(d > z * se)
        if max_drop is not None:
            cap = math.ceil(max_drop * int(found[k].mask.sum()))
            drop = (~keep[k]).nonzero().flatten()
            if drop.numel() > cap:      # drop the `cap` with the largest gradient, defer the rest
                worst = drop[d[drop].argsort(descending=True)[:cap]]
                keep[k] = torch.ones_like(keep[k])
                keep[k][worst] = False
    with torch.no_grad():
        for k, idx in todo.items():
            found[k].theta[idx] = keep[k].to(found[k].theta.dtype)
            if k in pools:
                evidence(found[k])[:, idx.cpu()] = pools[k]
    return {k: int(idx.numel()) for k, idx in todo.items()}


def evidence(gate: "BernoulliGate") -> torch.Tensor:
    """The pooled evidence of ``decide(accumulate=True)`` on ``gate``'s units: float64 [3, units] on the CPU (count,
    sum and sum of squares of the per-example differences ℓ(ξ=1) − ℓ(ξ=0)), zeros until a unit is judged.  A plain
    attribute, not a buffer: it is bookkeeping of the deciding, sliced by ``Shrinker`` and not saved in
    checkpoints; a gate whose width changed some other way starts a fresh pool."""
    ev = getattr(gate, "_evidence", None)
    if ev is None or ev.shape != (3, gate.num_features):
        ev = gate._evidence = torch.zeros(3, gate.num_features, dtype=torch.float64)
    return ev
