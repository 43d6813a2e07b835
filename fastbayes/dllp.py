"""SVGD particle pruning with quantified reliability, after DLLP (METHODS.md §4).

Wang et al., "Efficient Stein Variational Inference for Reliable Distribution-lossless Network Pruning" (arXiv
2212.03537).  Only the abstract could be read and no code is public.  It states: the network is re-modelled with
*discrete priors* for the kept sub-network and the redundancy; Stein variational inference approaches the posterior
from scores alone; and, unlike hard (point-estimate) pruning, the result comes with *quantified reliability*.
Everything below that makes this concrete is fastbayes's own design (METHODS.md §4.2), not a reproduction:

* **Particles.**  n copies of a trained network's parameters, jittered by Gaussian noise of 0.1 × each parameter
  tensor's own std (so every layer is perturbed by the same fraction of its weight scale), stacked with
  ``torch.func.stack_module_state`` and run with ``torch.func.functional_call`` under ``torch.vmap``: one batched
  forward for all particles.  The network always runs in eval mode (BatchNorm uses its running statistics, which are
  never updated; dropout is off), which keeps the forward deterministic and vmap-compatible.
* **Units.**  The output neurons / channels of each prunable Conv/Linear (default: all but the final classifier).
  The weight group w_c of unit c is its row of the weight plus its bias entry (k weights).
* **Prior (discrete, two components).**  p(w_c) = π·N(0, s1² I) + (1 − π)·N(0, s0² I) (``fastbayes.distributions.
  SpikeSlab(slab_var=s1², spike_ratio=s0/s1, pi)``, the prior of the Bernoulli gates too): slab = "kept sub-network",
  spike = "redundancy".  Defaults (our choice): s1² = 2/fan_in of the layer (its He-initialisation variance),
  s0 = 1e-2·s1, π = ½.  No truncation: a small-valued unit stays if the data need it.  The other parameters (the
  classifier, normalisation affines) get a flat prior.
* **Score.**  ∇ log p(w_c) = −(r_c/s1² + (1 − r_c)/s0²)·w_c, with r_c the slab responsibility (posterior probability
  of the slab), computed from its logit in log space.  Per particle the SVGD score is (N/(B·T))·∇ log-lik(its
  minibatch) + ∇ log prior, T the likelihood temperature (default 1, the Bayes posterior).
* **Update.**  SVGD with the RBF kernel on the particles' outputs (``fit(kernel="function")``, default; after
  function-space SVGD, Wang et al. 2019): each particle draws its own minibatch every step (independent score noise,
  so the particles do not move in lockstep), the kernel compares their centred logits on 32 shared inputs, and its
  gradient is pulled back through each particle's own Jacobian; any torch optimiser (Adam by default) applies φ.
  ``kernel="weight"`` is SVGD on the weights (``fastbayes.svgd.SVGD``), whose repulsion is ~1e-5 of the driving term
  in ~60,000 dimensions for any bandwidth; the output kernel's is ~3e-4 (docs/RESULTS.md §3.2).  Either way the spread
  is set mostly by the optimiser's step size and the score noise, not by the repulsion — our reading, not DLLP's.
* **Pruning.**  Unit c is redundant in particle j when r_c < ½; the consensus mask prunes c when the mean
  responsibility over particles is below ½ (the "consensus" criterion of ``fastbayes.prune.CRITERIA``).  Outputs: the
  pruned ensemble (every particle, one mask, rows zeroed or physically removed with ``fastbayes.prune.compact(...,
  masks=...)``) and a single compact network (the particle mean).
* **Reliability** (our reading of "quantified reliability": the spread of predictions across particles).  Predictive
  mean, predictive entropy, mutual information (epistemic part), ECE (15 bins), NLL, Brier score (all from
  ``fastbayes.metrics``), the accuracy mean, std and 95 % interval across particles, and misclassification / OOD
  AUROC (``metrics.uncertainty_report``); compared with magnitude pruning of the trained network at the same
  per-layer sparsity (a single model: mutual information 0, std 0), with and without temperature scaling.

    ens = fastbayes.dllp.ParticleEnsemble(trained_model, n_particles=8)
    ens.fit((x_train, y_train), epochs=2, lr=1e-3, batch_size=128)
    masks = ens.consensus_mask()                            # {layer: bool [units]}, True = kept
    logits = ens.pruned(masks).predict(x_test)              # [n_particles, N, classes]
    report = fastbayes.metrics.uncertainty_report(logits, y_test)
    small = ens.compact_mean(x_test[:1], masks)             # one physically smaller network
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import metrics
from .distributions import SpikeSlab
from .layers import CONV
from .nn.sites import default_layers, following_bn, gates as find_gates
from .prune.compact import apply_masks as prune_apply_masks, compact as compact_model
from .prune.criteria import decide


DEFAULT_PI = 0.5
DEFAULT_SPIKE_RATIO = 1e-2
DEFAULT_NOISE = 0.1            # relative: 0.1 × each parameter tensor's std (ParticleEnsemble, noise_scale)
N_BINS = metrics.N_BINS


def _finite(name: str, v, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be positive, got {v!r}")
    if nonnegative and not v >= 0:
        raise ValueError(f"{name} must be non-negative, got {v!r}")
    return float(v)


def _weight_scale(t: Tensor) -> float:
    """The scale of one trained parameter tensor for the relative jitter: its std over its elements (float64), or
    its RMS when it has one element or its elements are all equal (e.g. a BatchNorm weight still at 1)."""
    t = t.detach().double()
    sd = float(t.std()) if t.numel() > 1 else 0.0
    return sd if sd > 0 else float(t.pow(2).mean().sqrt())


def _posint(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


# ------------------------------------------------------------------------------------------------------------------
# the discrete spike-and-slab prior

class SpikeSlabPrior(SpikeSlab):
    """Deprecated alias of ``fastbayes.distributions.SpikeSlab`` (same arguments: slab_var, spike_ratio, pi)."""

    def __init__(self, slab_var: float, spike_ratio: float = DEFAULT_SPIKE_RATIO, pi: float = DEFAULT_PI):
        warnings.warn("fastbayes.dllp.SpikeSlabPrior is deprecated: use fastbayes.distributions.SpikeSlab",
                      DeprecationWarning, stacklevel=2)
        super().__init__(slab_var, spike_ratio, pi)


# ------------------------------------------------------------------------------------------------------------------
# structural units of a model

@dataclass
class _Layer:
    name: str
    units: int
    fan_in: int
    weight: str
    bias: Optional[str]
    bn: Optional[str]          # a BatchNorm right after the layer: its affine entries are zeroed with the unit
    bn_affine: bool
    prior: SpikeSlab


def _find_layers(model: nn.Module, prunable, slab_var, spike_ratio, pi) -> list[_Layer]:
    modules = dict(model.named_modules())
    if prunable is None:
        names = default_layers(model)
    else:
        if isinstance(prunable, str) or not isinstance(prunable, Iterable):
            raise ValueError(f"prunable must be None or a list of layer names, got {prunable!r}")
        names = list(prunable)
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"prunable names not found in the model: {missing}")
    if not names:
        raise ValueError("prunable: the model has no Conv/Linear layer to prune besides the final classifier")
    if len(set(names)) != len(names):
        raise ValueError(f"prunable lists a layer twice: {names}")
    if isinstance(slab_var, Mapping):
        unknown = set(slab_var) - set(names)
        if unknown:
            raise ValueError(f"slab_var names layers that are not prunable: {sorted(unknown)}")
    elif slab_var is not None:
        _finite("slab_var", slab_var, positive=True)
    out = []
    for name in names:
        m = modules[name]
        if not isinstance(m, (nn.Linear, CONV)) or getattr(m, "transposed", False):
            raise ValueError(f"prunable layer {name!r} is a {type(m).__name__}; expected a Linear or a "
                             "(non-transposed) Conv")
        units = m.weight.shape[0]
        fan_in = m.weight[0].numel()
        var = slab_var.get(name) if isinstance(slab_var, Mapping) else slab_var
        prior = SpikeSlab(2.0 / fan_in if var is None else var, spike_ratio, pi)
        bn = following_bn(model, name, units)
        affine = bn is not None and modules[bn].weight is not None
        out.append(_Layer(name, units, fan_in, f"{name}.weight", f"{name}.bias" if m.bias is not None else None,
                          bn, affine, prior))
    return out


def _groups(layer: _Layer, params: Mapping[str, Tensor]) -> Tensor:
    """The unit weight groups [n, units, k] (weight row, then the bias entry) of stacked parameters."""
    w = params[layer.weight]
    g = w.reshape(w.shape[0], layer.units, -1)
    if layer.bias is not None:
        g = torch.cat([g, params[layer.bias].unsqueeze(-1)], -1)
    return g


def _check_masks(layers: list[_Layer], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks must be a dict {{layer name: bool tensor}}, got {type(masks).__name__}")
    names = [l.name for l in layers]
    if set(masks) != set(names):
        raise ValueError(f"masks must have exactly the prunable layers {names} as keys, got {sorted(masks)}")
    out = {}
    for l in layers:
        m = masks[l.name]
        if not isinstance(m, Tensor) or m.dtype != torch.bool or m.shape != (l.units,):
            raise ValueError(f"masks[{l.name!r}] must be a bool tensor of shape ({l.units},) (True = kept), got "
                             f"{m.dtype if isinstance(m, Tensor) else type(m).__name__} "
                             f"{tuple(m.shape) if isinstance(m, Tensor) else ''}")
        out[l.name] = m
    return out


@torch.no_grad()
def _zero_units(layers: list[_Layer], masks: Mapping[str, Tensor], tensors: Mapping[str, Tensor], dim: int) -> None:
    """Zero the pruned units' weights, bias and following BatchNorm affine entries in place (units along ``dim``)."""
    for l in layers:
        drop = (~masks[l.name]).to(tensors[l.weight].device)
        keys = [l.weight] + ([l.bias] if l.bias else []) + ([f"{l.bn}.weight", f"{l.bn}.bias"] if l.bn_affine else [])
        for k in keys:
            t = tensors[k]
            shape = [1] * t.dim()
            shape[dim] = l.units
            t.masked_fill_(drop.reshape(shape), 0.0)


# ------------------------------------------------------------------------------------------------------------------
# masks on ordinary models

def unit_layers(model: nn.Module, prunable=None) -> dict[str, int]:
    """{prunable layer name: number of units} (default: every Conv/Linear except the final classifier)."""
    return {l.name: l.units for l in _find_layers(model, prunable, None, DEFAULT_SPIKE_RATIO, DEFAULT_PI)}


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` with the pruned units (mask False) zeroed: their weight rows, bias entries and, when a
    BatchNorm follows the layer, its affine entries, so the unit outputs exactly 0 after the BatchNorm too
    (``fastbayes.prune.apply_masks`` on the prunable layers; ``compact(model, x, masks=masks)`` equals it)."""
    layers = _find_layers(model, list(masks) if isinstance(masks, Mapping) else masks, None, DEFAULT_SPIKE_RATIO,
                          DEFAULT_PI)
    return prune_apply_masks(model, _check_masks(layers, masks))


def compact_masked(model: nn.Module, masks: Mapping[str, Tensor], example_inputs, *, check: bool = True) -> nn.Module:
    """Deprecated: ``fastbayes.prune.compact(model, example_inputs, masks=masks)`` (the same result)."""
    warnings.warn("fastbayes.dllp.compact_masked is deprecated: use fastbayes.prune.compact(model, example_inputs, "
                  "masks=masks)", DeprecationWarning, stacklevel=2)
    if not isinstance(masks, Mapping):
        raise ValueError(f"masks must be a dict {{layer name: bool tensor}}, got {type(masks).__name__}")
    layers = _find_layers(model, list(masks), None, DEFAULT_SPIKE_RATIO, DEFAULT_PI)
    return compact_model(model, example_inputs, masks=_check_masks(layers, masks), check=check)


@torch.no_grad()
def magnitude_masks(model: nn.Module, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hard magnitude pruning at the sparsity of ``like``: in every layer of ``like``, keep as many units as ``like``
    keeps, those with the largest L2 norm of their incoming weights (the weight row; the bias is not an incoming
    weight).  Same per-layer widths, so the pruned architectures are identical."""
    layers = _find_layers(model, list(like), None, DEFAULT_SPIKE_RATIO, DEFAULT_PI)
    like = _check_masks(layers, like)
    params = dict(model.named_parameters())
    out = {}
    for l in layers:
        norms = params[l.weight].detach().reshape(l.units, -1).double().norm(dim=1).cpu()
        keep = torch.zeros(l.units, dtype=torch.bool)
        keep[torch.topk(norms, int(like[l.name].sum())).indices] = True
        out[l.name] = keep
    return out


def sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of the prunable units that ``masks`` removes."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


# ------------------------------------------------------------------------------------------------------------------
# the particle ensemble

def _repulsion(K: Tensor, h, X: Tensor) -> Tensor:
    """Σ_j ∇_{x_j} k(x_j, x_i) = (2/h) Σ_j k_ij (x_i − x_j) for the rows x_i of ``X`` [n, d] (SVGD's repulsive term
    before its 1/n)."""
    return (2.0 / h) * (K.sum(1, keepdim=True) * X - K @ X)


@torch.no_grad()
def _rms_spread(params: list[Tensor], n: int) -> float:
    """RMS over the parameters of the n particles' std (ddof 1): the average absolute spread per weight."""
    var_sum, count = 0.0, 0
    for p in params:
        X = p.detach().reshape(n, -1).double()
        var_sum += float(X.var(0, correction=1).sum())
        count += X.shape[1]
    return math.sqrt(var_sum / max(count, 1))


def _diagnostics(h, d: Tensor, drive: float, rep: float, rms_spread: float) -> dict:
    """One epoch's SVGD diagnostics from the bandwidth, the n×n squared distances and the squared norms of φ's
    driving and repulsive parts."""
    n = d.shape[0]
    iu = torch.triu_indices(n, n, 1)
    return {"bandwidth": float(h), "median_sq_dist": float(d[iu[0], iu[1]].median()),
            "repulsion_ratio": math.sqrt(rep / drive) if drive > 0 else float("inf"), "rms_spread": rms_spread}


def _xy(data):
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif hasattr(data, "x") and hasattr(data, "y"):
        x, y = data.x, data.y
    else:
        raise ValueError("data must be an (x, y) pair of tensors or have .x and .y (e.g. fastbayes.apps.data.Split)")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y) or len(x) == 0:
        raise ValueError("data must hold tensors x and y with the same, non-zero number of examples")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"data labels must be integer class indices, got dtype {y.dtype}")
    return x, y.long()


class ParticleEnsemble:
    """n particles of a trained network for SVGD pruning after DLLP (module docstring; METHODS.md §4.2).

    Args:
        model: the trained ("vanilla") network, without fastbayes gates.  It is copied, never changed.
        n_particles: number of particles (>= 2; default 8).
        noise: size of the Gaussian jitter added to every parameter of every particle (default 0.1).  With
            ``noise_scale="relative"`` (default) the jitter of a parameter tensor has standard deviation
            ``noise`` × that tensor's own standard deviation in the trained network (its RMS for a one-element
            tensor; an all-zero tensor gets none), so every layer is perturbed by the same fraction of its weight
            scale; with ``noise_scale="absolute"`` ``noise`` is the standard deviation itself, for every tensor.
        noise_scale: "relative" (default) or "absolute", see ``noise``.
        prunable: names of the Conv/Linear layers whose output units can be pruned; default all but the final
            classifier.
        pi, spike_ratio: the prior's slab probability π (default ½) and s0/s1 (default 1e-2).
        slab_var: s1²: None (2/fan_in per layer), one number, or {layer: number}.
        generator: a torch.Generator for the jitter (default: torch's global one).

    Every parameter of the network is part of a particle; the prior acts on the prunable units only.
    ``params`` and ``buffers`` are {name: [n, ...] tensor}; the parameters are leaves that require grad.
    """

    def __init__(self, model: nn.Module, n_particles: int = 8, noise: float = DEFAULT_NOISE, prunable=None, *,
                 noise_scale: str = "relative", pi: float = DEFAULT_PI, spike_ratio: float = DEFAULT_SPIKE_RATIO,
                 slab_var=None, generator: Optional[torch.Generator] = None):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        _posint("n_particles", n_particles, 2)
        noise = _finite("noise", noise, nonnegative=True)
        if noise_scale not in ("relative", "absolute"):
            raise ValueError(f"noise_scale must be 'relative' or 'absolute', got {noise_scale!r}")
        if find_gates(model):
            raise ValueError("model carries fastbayes gates; DLLP takes a plain trained network")
        template = copy.deepcopy(model).eval()
        layers = _find_layers(template, prunable, slab_var, spike_ratio, pi)
        params, buffers = torch.func.stack_module_state([template] * n_particles)
        with torch.no_grad():
            for p in params.values():
                if noise > 0 and p.is_floating_point():
                    eps = torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device)
                    p.add_(eps, alpha=noise * (_weight_scale(p[0]) if noise_scale == "relative" else 1.0))
        self._init(template, layers, params, buffers)

    def _init(self, template, layers, params, buffers):
        for p in template.parameters():
            p.requires_grad_(False)
        self._template = template.eval()
        self.layers: list[_Layer] = layers
        self.params: dict[str, Tensor] = {k: v.detach().requires_grad_(v.is_floating_point())
                                          for k, v in params.items()}
        self.buffers: dict[str, Tensor] = {k: v.detach() for k, v in buffers.items()}
        self.n_particles = next(iter(self.params.values())).shape[0]
        self.history: list[dict] = []

    @classmethod
    def from_modules(cls, modules: list[nn.Module], prunable=None, *, pi: float = DEFAULT_PI,
                     spike_ratio: float = DEFAULT_SPIKE_RATIO, slab_var=None) -> "ParticleEnsemble":
        """An ensemble whose particles are ``modules`` (same architecture, no jitter), e.g. compacted particles."""
        if not isinstance(modules, (list, tuple)) or len(modules) < 2:
            raise ValueError("modules must be a list of at least 2 modules (n_particles >= 2)")
        shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in modules]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("modules must share one architecture (identical state_dict shapes)")
        self = cls.__new__(cls)
        template = copy.deepcopy(modules[0]).eval()
        layers = _find_layers(template, prunable, slab_var, spike_ratio, pi)
        params, buffers = torch.func.stack_module_state(list(modules))
        self._init(template, layers, params, buffers)
        return self

    def _derived(self, params, buffers) -> "ParticleEnsemble":
        new = ParticleEnsemble.__new__(ParticleEnsemble)
        new._init(copy.deepcopy(self._template), copy.deepcopy(self.layers), params, buffers)
        return new

    # -- evaluation -------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def to(self, device) -> "ParticleEnsemble":
        """Move particles and template to ``device`` (in place); returns self."""
        self.params = {k: v.detach().to(device).requires_grad_(v.requires_grad) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self._template.to(device)
        return self

    def _one(self, params, buffers, x):
        return torch.func.functional_call(self._template, (params, buffers), (x,))

    def __call__(self, x: Tensor) -> Tensor:
        """Outputs of all particles on one batch, [n_particles, B, ...], in one vmapped forward (differentiable)."""
        return torch.vmap(self._one, in_dims=(0, 0, None))(self.params, self.buffers, x)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Logits of every particle on ``x``, [n_particles, N, classes], in chunks of ``batch_size`` examples."""
        _posint("batch_size", batch_size)
        return torch.cat([self(x[i:i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)], 1)

    @torch.no_grad()
    def _module(self, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor]) -> nn.Module:
        m = copy.deepcopy(self._template)
        for k, p in m.named_parameters():
            p.copy_(params[k])
            p.requires_grad_(True)
        for k, b in m.named_buffers():
            b.copy_(buffers[k])
        return m.eval()

    def particle(self, i: int) -> nn.Module:
        """Particle ``i`` as an ordinary module (a copy)."""
        if isinstance(i, bool) or not isinstance(i, int) or not -self.n_particles <= i < self.n_particles:
            raise ValueError(f"i must be a particle index in [0, {self.n_particles}), got {i!r}")
        return self._module({k: v[i] for k, v in self.params.items()}, {k: v[i] for k, v in self.buffers.items()})

    def mean_module(self) -> nn.Module:
        """The particle mean (parameters and floating buffers averaged) as an ordinary module."""
        return self._module({k: v.mean(0) for k, v in self.params.items()},
                            {k: v.mean(0) if v.is_floating_point() else v[0] for k, v in self.buffers.items()})

    # -- prior ------------------------------------------------------------------------------------------------------

    def log_prior(self) -> Tensor:
        """log p of the prunable units' weights per particle, [n] (differentiable)."""
        return sum(l.prior.log_prob(_groups(l, self.params)).sum(-1) for l in self.layers)

    @torch.no_grad()
    def responsibilities(self) -> dict[str, Tensor]:
        """{layer: slab responsibilities [n_particles, units]}."""
        return {l.name: l.prior.responsibility(_groups(l, self.params)) for l in self.layers}

    @torch.no_grad()
    def _add_prior_grad(self, scale: float = 1.0) -> None:
        """.grad −= scale · ∇ log prior (closed form), so with scale 1 .grad holds the gradient of the negative
        log-posterior."""
        for l in self.layers:
            score, _ = l.prior.score(_groups(l, self.params))
            w = self.params[l.weight]
            w.grad.sub_(score[..., :l.fan_in].reshape(w.shape), alpha=scale)
            if l.bias is not None:
                self.params[l.bias].grad.sub_(score[..., l.fan_in], alpha=scale)

    # -- SVGD -------------------------------------------------------------------------------------------------------

    def _forward_each(self, x: Tensor) -> Tensor:
        """Outputs of particle j on its own batch x[j], x [n_particles, B, ...] -> [n_particles, B, ...]."""
        return torch.vmap(self._one, in_dims=(0, 0, 0))(self.params, self.buffers, x)

    def fit(self, data, epochs: int = 1, lr: float = 1e-3, batch_size: int = 128, *,
            num_examples: Optional[int] = None, bandwidth: Optional[float] = None,
            optimizer=torch.optim.Adam, seed: Optional[int] = None, kernel: str = "function",
            per_particle_batches: bool = True, temperature: float = 1.0, bandwidth_scale: float = 1.0,
            measurement: Optional[int] = None, repulsion: float = 1.0,
            callback: Optional[Callable[[int, "ParticleEnsemble"], Optional[dict]]] = None,
            progress: bool = False) -> list[dict]:
        """Run SVGD on the particles for ``epochs`` passes over ``data`` (an (x, y) pair or a Split).

        Two kernels (METHODS.md §4.2), with N = ``num_examples`` (default len(data)) and T = ``temperature``:

        * ``kernel="function"`` (default): the RBF kernel on the particles' outputs (after function-space SVGD, Wang
          et al. 2019).  Particle i is represented by its centred logits f_i on common inputs and its kernel's
          gradient is pulled back through its own Jacobian (the f-SVGD approximation Jⱼ ≈ Jᵢ).  With per-particle
          batches (default) the common inputs are a shared batch of ``measurement`` examples per step and each
          particle's score is the weight-space (N/(B·T))·∇ log-lik(own minibatch) + ∇ log prior, smoothed over the
          particles by the function-space kernel: φ_i = (Σ_j k_ij s_j + Jᵢᵀ Σ_j ∇_{f_j} k(f_j, f_i))/n.  With one
          shared batch (``per_particle_batches=False``) it is f-SVGD proper: the likelihood's score in function
          space, ∇_f (N/(B·T)) log p(y | f_i), goes through the fused ``svgd_direction`` on the outputs and the
          prior's score enters each particle's own update with SVGD's 1/n.
        * ``kernel="weight"``: SVGD on the weights: .grad of each particle holds −[(N/(B·T))·∇ log-lik + ∇ log
          prior] and ``fastbayes.svgd.SVGD`` turns it into −φ for ``optimizer`` (lr ``lr``).  Its repulsion is
          ~1e-5 of the driving term on LeNet5 (docs/RESULTS.md §3).

        Args:
            kernel: "function" (default) or "weight", see above.
            per_particle_batches: True (default): every particle draws its own minibatch each step (its own
                permutation of the data per epoch, one vmapped forward over [n, B] inputs — the same cost as a shared
                batch), so each particle's score is an independent unbiased estimate of its full-data score; False:
                all particles share one minibatch (their score noise is then common and does not separate them).
            measurement: function kernel with per-particle batches: the shared inputs per step on which the kernel
                compares the particles (default min(batch_size, 32); one more forward and backward over them).
            temperature: T > 0 of the tempered posterior p(D|w)^(1/T) p(w) (default 1, the Bayes posterior).
            bandwidth: a fixed RBF bandwidth h; None (default): the median heuristic h = med²/log(n + 1).
            bandwidth_scale: multiplies the median-heuristic h (default 1; only with ``bandwidth=None``).
            repulsion: α >= 0, the weight of the kernel's gradient (the repulsive term) in φ; default 1 (SVGD).
                φ = (Σ_j k_ij s_j + α Σ_j ∇k)/n = α·(Σ_j k_ij s_j/α + Σ_j ∇k)/n, so α > 1 runs SVGD towards the
                tempered target (p(D|w) p(w))^(1/α), prior included, and α = 0 switches the interaction off (an
                ensemble of kernel-smoothed particles: the ablation).  Measured on Fashion-MNIST LeNet5
                (docs/RESULTS.md §3.2): the repulsion changes the predictions only from α ~ 600; at α = 2000 the
                particles' mutual information is 1.6–5.7× the α = 0 ensemble's on every seed, at a cost in accuracy,
                NLL and ECE and with no gain in OOD AUROC.  Only with the default function kernel and per-particle
                batches.

        ``callback(epoch, self)`` may return a dict merged into that epoch's history entry.  Returns the history (also
        in ``self.history``): per epoch the mean NLL per example, the mean responsibility, the units the consensus mask
        would keep, and SVGD diagnostics at the epoch's last step: ``bandwidth`` (h), ``median_sq_dist`` (median
        squared distance between particles, in the kernel's space), ``repulsion_ratio`` (‖repulsive part of φ‖ /
        ‖driving part‖ as applied, α included, Frobenius norms over all particles and parameters: for the function
        kernel both parts pulled
        back to the weights, the prior's score counted in the driving part), ``repulsion_ratio_function`` (function
        kernel: the same ratio in function space, before the pull-back) and ``rms_spread`` (RMS over parameters of the
        particles' std, the average absolute spread per weight).
        """
        x, y = _xy(data)
        _posint("epochs", epochs)
        _posint("batch_size", batch_size)
        lr = _finite("lr", lr, positive=True)
        temperature = _finite("temperature", temperature, positive=True)
        bandwidth_scale = _finite("bandwidth_scale", bandwidth_scale, positive=True)
        repulsion = _finite("repulsion", repulsion, nonnegative=True)
        if kernel not in ("function", "weight"):
            raise ValueError(f"kernel must be 'function' or 'weight', got {kernel!r}")
        if not isinstance(per_particle_batches, bool):
            raise ValueError(f"per_particle_batches must be a bool, got {per_particle_batches!r}")
        if measurement is not None and (isinstance(measurement, bool) or not isinstance(measurement, int)
                                        or measurement < 2):
            raise ValueError(f"measurement must be an integer >= 2 or None, got {measurement!r}")
        if repulsion != 1.0 and not (kernel == "function" and per_particle_batches):
            raise ValueError("repulsion weights the function kernel's repulsive term with per-particle batches "
                             "(kernel='function', per_particle_batches=True, the defaults)")
        if measurement is not None and not (kernel == "function" and per_particle_batches):
            raise ValueError("measurement sets the shared inputs of the function kernel with per-particle batches "
                             "(kernel='function', per_particle_batches=True)")
        measurement = min(batch_size, 32) if measurement is None else measurement
        if bandwidth is not None and bandwidth_scale != 1.0:
            raise ValueError("bandwidth_scale applies to the median heuristic only; pass bandwidth=None with it")
        n_data = len(x) if num_examples is None else _posint("num_examples", num_examples)
        with torch.no_grad():     # the class count, before anything changes (cross_entropy would IndexError)
            out = self(x[:1].to(self.device))
        if out.dim() < 3:
            raise ValueError(f"the network must output class scores [batch, classes, ...], got shape "
                             f"{tuple(out.shape[1:])} per particle")
        classes = out.shape[2]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise ValueError(f"data labels must be class indices in [0, {classes}) (the network has {classes} "
                             f"outputs), got labels in [{lo}, {hi}]")
        from .svgd import SVGD
        from .reference.svgd import kernel_from_dists, pairwise_sq_dists

        plist = [p for p in self.params.values() if p.requires_grad]
        if kernel == "weight":
            opt = SVGD(plist, optimizer=optimizer, bandwidth=bandwidth, lr=lr)
        else:
            opt = optimizer(plist, lr=lr)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        n, dev = self.n_particles, self.device
        for epoch in range(epochs):
            if per_particle_batches:
                perm = torch.stack([torch.randperm(len(x), generator=gen) for _ in range(n)])   # [n, N]
                mperm = torch.randperm(len(x), generator=gen)     # the function kernel's shared inputs
            else:
                perm = torch.randperm(len(x), generator=gen)
            starts = range(0, len(x), batch_size)
            # diagnostics on the epoch's last full batch (a short remainder batch would skew the ratio)
            diag_at = starts[-1] if len(x) % batch_size == 0 or len(starts) == 1 else starts[-2]
            steps = starts
            if progress:
                try:
                    from tqdm.auto import tqdm
                    steps = tqdm(starts, desc=f"svgd epoch {epoch + 1}/{epochs}", leave=False)
                except ImportError:
                    pass
            nll_sum, diag = 0.0, {}
            for i in steps:
                for p in plist:
                    p.grad = None
                if per_particle_batches:
                    idx = perm[:, i:i + batch_size]                                  # [n, B]
                    b = idx.shape[1]
                    out = self._forward_each(x[idx].to(dev))
                    yb = y[idx].to(dev).flatten()
                else:
                    idx = perm[i:i + batch_size]
                    b = len(idx)
                    out = self(x[idx].to(dev))
                    yb = y[idx].to(dev).repeat(n)
                last = i == diag_at
                if kernel == "function" and not per_particle_batches:
                    nll, diag_f = self._function_step(out, yb.view(n, b), n_data / (b * temperature), plist,
                                                      bandwidth, bandwidth_scale, last)
                    opt.step()
                    nll_sum += float(nll)
                    if last:
                        diag = diag_f
                    continue
                if kernel == "function":          # own batches drive; the kernel compares shared inputs
                    nll = F.cross_entropy(out.flatten(0, 1), yb, reduction="sum")
                    (nll * (n_data / (b * temperature))).backward()
                    self._add_prior_grad()
                    j = (i // batch_size * measurement) % max(len(x) - measurement + 1, 1)
                    xm = x[mperm[j:j + measurement]].to(dev)
                    diag_f = self._kernel_on_outputs(xm, plist, bandwidth, bandwidth_scale, last, repulsion)
                    opt.step()
                    nll_sum += float(nll.detach())
                    if last:
                        diag = diag_f
                    continue
                nll = F.cross_entropy(out.flatten(0, 1), yb, reduction="sum")       # Σ particles, Σ batch
                (nll * (n_data / (b * temperature))).backward()
                self._add_prior_grad()
                if bandwidth is None and (bandwidth_scale != 1.0 or last):
                    with torch.no_grad():
                        d = pairwise_sq_dists([p.detach() for p in plist if p.grad is not None])
                        _, h_med = kernel_from_dists(d, None)
                    if bandwidth_scale != 1.0:
                        opt.bandwidth = float(h_med) * bandwidth_scale
                if last:
                    diag = self._svgd_diagnostics(plist, opt.bandwidth)
                opt.step()
                nll_sum += float(nll.detach())
            r = self.responsibilities()
            entry = {"epoch": len(self.history) + 1, "nll": nll_sum / (n * len(x)),
                     "mean_responsibility": float(torch.cat([v.flatten() for v in r.values()]).mean()),
                     "kept_units": sum(int(m.sum()) for m in self.consensus_mask().values()),
                     "total_units": sum(l.units for l in self.layers), **diag}
            if callback is not None:
                entry.update(callback(epoch, self) or {})
            self.history.append(entry)
        for p in plist:
            p.grad = None
        return self.history

    def _kernel_on_outputs(self, xm: Tensor, plist: list[Tensor], bandwidth: Optional[float], bandwidth_scale: float,
                           diagnose: bool, alpha: float = 1.0) -> dict:
        """SVGD with the kernel on the particles' outputs over shared inputs ``xm``, each particle's score from its own
        minibatch: with .grad = −s_i (the weight-space scores), .grad becomes −φ_i = −(Σ_j k_ij s_j + Jᵢᵀ r_i)/n,
        k_ij = exp(−‖f_i − f_j‖²/h) on the centred logits f_i = f(w_i; xm) and r_i = (2/h) Σ_j k_ij (f_i − f_j) the
        kernel's gradient, pulled back through particle i's own Jacobian (exact in the driving part: the kernel is a
        function of the weights; the f-SVGD approximation Jⱼ ≈ Jᵢ in the repulsive one), weighted by ``alpha``."""
        from .reference.svgd import kernel_from_dists, pairwise_sq_dists
        n = self.n_particles
        out = self(xm)
        f = out - out.mean(-1, keepdim=True)
        with torch.no_grad():
            fd = f.detach().flatten(1).double()
            d = pairwise_sq_dists([fd])
            h = bandwidth
            if h is None:
                h = float(kernel_from_dists(d, None)[1]) * bandwidth_scale
            K, hh = kernel_from_dists(d, h)
            rep_f = _repulsion(K, hh, fd) * alpha
        rep_w = (torch.autograd.grad(f, plist, rep_f.to(f.dtype).view_as(f), allow_unused=True) if alpha > 0
                 else [None] * len(plist))
        drive = rep = 0.0
        ps = [p for p in plist if p.grad is not None]
        spread = _rms_spread(ps, n) if diagnose else None
        with torch.no_grad():
            for p, r in zip(plist, rep_w):
                if p.grad is None:
                    continue
                G = p.grad.reshape(n, -1)
                kg = K.to(G.dtype) @ G                                # Σ_j k_ij (−s_j)
                r = torch.zeros_like(G) if r is None else r.reshape(n, -1)
                if diagnose:
                    drive += float(kg.double().pow(2).sum())
                    rep += float(r.double().pow(2).sum())
                p.grad = ((kg - r) / n).reshape(p.shape)
        return _diagnostics(hh, d, drive, rep, spread) if diagnose else {}

    def _function_step(self, out: Tensor, y: Tensor, scale: float, plist: list[Tensor], bandwidth: Optional[float],
                       bandwidth_scale: float, diagnose: bool) -> tuple[float, dict]:
        """One function-space SVGD step's gradients: .grad = −(J_iᵀ φ^f_i + ∇ log prior(w_i) / n) for the particles'
        logits ``out`` [n, B, C] on a shared batch with labels ``y`` [n, B] (all rows equal) and likelihood scale
        ``scale`` = N/(B·T).  Returns (Σ NLL over particles and examples, diagnostics if ``diagnose``)."""
        from .reference.svgd import kernel_from_dists, pairwise_sq_dists
        from .svgd import function_space_backward
        n = y.shape[0]
        f = out - out.mean(-1, keepdim=True)                # centred logits: the softmax's invariance removed
        with torch.no_grad():
            logp = torch.log_softmax(out.detach().double(), -1)
            nll = float(-logp.gather(-1, y[..., None]).sum())
            score = (F.one_hot(y, out.shape[-1]).double() - logp.exp()).mul_(scale)    # ∇_f (N/(B·T)) log p(y|f)
            h = bandwidth
            if h is None and bandwidth_scale != 1.0 or diagnose:
                d = pairwise_sq_dists([f.detach().flatten(1)])
                if h is None:
                    h = float(kernel_from_dists(d, None)[1]) * bandwidth_scale
        rep_w = lik_w = None
        if diagnose:      # the two parts of φ^f pulled back on their own (backward passes through the same graph)
            with torch.no_grad():
                K, hh = kernel_from_dists(d, h)
                fd = f.detach().flatten(1).double()
                drive_f = K @ score.flatten(1) / n
                rep_f = _repulsion(K, hh, fd) / n
            rep_w = torch.autograd.grad(f, plist, rep_f.to(f.dtype).view_as(f), retain_graph=True, allow_unused=True)
            lik_w = torch.autograd.grad(f, plist, drive_f.to(f.dtype).view_as(f), retain_graph=True,
                                        allow_unused=True)
        function_space_backward(f, score, h)
        self._add_prior_grad(1.0 / n)
        if not diagnose:
            return nll, {}
        with torch.no_grad():
            # .grad = −(Jᵀ drive_f + Jᵀ rep_f + prior/n): the driving part is −.grad − Jᵀ rep_f
            drive = rep = lik = 0.0
            for p, r, g in zip(plist, rep_w, lik_w):
                if p.grad is None:
                    continue
                r = torch.zeros_like(p) if r is None else r
                drive += float((-p.grad - r).double().pow(2).sum())
                rep += float(r.double().pow(2).sum())
                lik += 0.0 if g is None else float(g.double().pow(2).sum())
            diag = _diagnostics(hh, d, drive, rep, _rms_spread([p for p in plist if p.grad is not None], n))
            diag["repulsion_ratio_function"] = (float(rep_f.norm() / drive_f.norm()) if drive_f.norm() > 0
                                                else float("inf"))
            diag["repulsion_ratio_likelihood"] = math.sqrt(rep / lik) if lik > 0 else float("inf")
        return nll, diag

    @torch.no_grad()
    def _svgd_diagnostics(self, plist: list[Tensor], bandwidth: Optional[float]) -> dict:
        """The two parts of φ = (K·G + (2/h)(diag(K1)·X − K·X))/n for the current .grad (= −scores), in float64."""
        from .reference.svgd import kernel_from_dists, pairwise_sq_dists
        ps = [p for p in plist if p.grad is not None]
        n = self.n_particles
        d = pairwise_sq_dists([p.detach() for p in ps])
        K, h = kernel_from_dists(d, bandwidth)
        drive = rep = 0.0
        for p in ps:
            X = p.detach().reshape(n, -1).double()
            G = -p.grad.reshape(n, -1).double()
            drive += float((K @ G).pow(2).sum())
            rep += float(_repulsion(K, h, X).pow(2).sum())
        return _diagnostics(h, d, drive, rep, _rms_spread(ps, n))

    # -- pruning ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def consensus_mask(self, threshold: float = 0.5, min_units: int = 1) -> dict[str, Tensor]:
        """{layer: bool [units]}, True = kept: the "consensus" criterion of ``fastbayes.prune.CRITERIA`` (a unit is
        pruned when its mean slab responsibility over the particles is below ``threshold``); each layer keeps at
        least ``min_units`` units (those with the highest mean)."""
        return {name: d.keep for name, d in decide(self, "consensus", threshold=threshold,
                                                   min_units=min_units).items()}

    def pruned(self, masks: Optional[Mapping[str, Tensor]] = None, *, compact: bool = False,
               example_inputs=None) -> "ParticleEnsemble":
        """The pruned ensemble: every particle with one mask (default: ``consensus_mask()``).

        ``compact=False`` zeroes the pruned units (``apply_masks``); ``compact=True`` removes them physically from
        every particle with ``fastbayes.prune.compact`` (needs ``example_inputs``), giving an ensemble of smaller
        networks with identical outputs.
        """
        masks = _check_masks(self.layers, self.consensus_mask() if masks is None else masks)
        if compact:
            if example_inputs is None:
                raise ValueError("example_inputs is required with compact=True")
            small = [compact_model(self.particle(i), example_inputs, masks=masks) for i in range(self.n_particles)]
            return ParticleEnsemble.from_modules(small, [l.name for l in self.layers],
                                                 pi=self.layers[0].prior.pi,
                                                 spike_ratio=self.layers[0].prior.spike_ratio,
                                                 slab_var={l.name: l.prior.slab_var for l in self.layers})
        params = {k: v.detach().clone() for k, v in self.params.items()}
        _zero_units(self.layers, masks, params, 1)
        return self._derived(params, {k: v.clone() for k, v in self.buffers.items()})

    def compact_mean(self, example_inputs, masks: Optional[Mapping[str, Tensor]] = None) -> nn.Module:
        """A single compact network: the particle mean with ``masks`` (default ``consensus_mask()``) applied and the
        pruned units removed by ``fastbayes.prune.compact``."""
        masks = _check_masks(self.layers, self.consensus_mask() if masks is None else masks)
        return compact_model(self.mean_module(), example_inputs, masks=masks)


# ------------------------------------------------------------------------------------------------------------------
# reliability (the metrics live in fastbayes.metrics; these names are deprecated aliases)

def predictive_mean(logits: Tensor) -> Tensor:
    """Deprecated alias of ``fastbayes.metrics.predictive_mean``."""
    warnings.warn("fastbayes.dllp.predictive_mean is deprecated: use fastbayes.metrics.predictive_mean",
                  DeprecationWarning, stacklevel=2)
    return metrics.predictive_mean(logits)


def reliability_report(logits: Tensor, labels: Tensor, n_bins: int = N_BINS) -> dict:
    """Deprecated alias of ``fastbayes.metrics.reliability_report``."""
    warnings.warn("fastbayes.dllp.reliability_report is deprecated: use fastbayes.metrics.reliability_report",
                  DeprecationWarning, stacklevel=2)
    return metrics.reliability_report(logits, labels, n_bins)


def plot_reliability_diagram(probs, labels: Tensor, path, n_bins: int = N_BINS, title: Optional[str] = None) -> Path:
    """Deprecated alias of ``fastbayes.metrics.plot_reliability_diagram``."""
    warnings.warn("fastbayes.dllp.plot_reliability_diagram is deprecated: use "
                  "fastbayes.metrics.plot_reliability_diagram", DeprecationWarning, stacklevel=2)
    return metrics.plot_reliability_diagram(probs, labels, path, n_bins, title)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """A single network's logits as a one-particle ensemble, [1, N, classes] (eval mode)."""
    _posint("batch_size", batch_size)
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        return torch.cat([model(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])[None]
    finally:
        model.train(was)


def compare_with_point_estimate(ensemble: ParticleEnsemble, model: nn.Module, x: Tensor, y: Tensor,
                                masks: Optional[Mapping[str, Tensor]] = None, *, batch_size: int = 1000,
                                n_bins: int = N_BINS) -> dict:
    """Reliability of the pruned DLLP ensemble against hard magnitude pruning of the trained ``model`` at the same
    per-layer sparsity (``magnitude_masks``), on held-out (x, y).

    Returns {"sparsity": fraction of prunable units removed, "kept_per_layer", "dllp": reliability_report of the
    ensemble pruned with ``masks`` (default its consensus mask), "point_estimate": reliability_report of the single
    magnitude-pruned network (mutual information 0, accuracy std 0)}.
    """
    masks = _check_masks(ensemble.layers, ensemble.consensus_mask() if masks is None else masks)
    point = apply_masks(model, magnitude_masks(model, masks))
    return {"sparsity": sparsity(masks), "kept_per_layer": {k: int(v.sum()) for k, v in masks.items()},
            "dllp": metrics.reliability_report(ensemble.pruned(masks).predict(x, batch_size), y, n_bins),
            "point_estimate": metrics.reliability_report(predict_logits(point, x, batch_size), y, n_bins)}


__all__ = ["ParticleEnsemble", "SpikeSlabPrior", "apply_masks", "compact_masked", "compare_with_point_estimate",
           "magnitude_masks", "plot_reliability_diagram", "predict_logits", "predictive_mean", "reliability_report",
           "sparsity", "unit_layers"]
