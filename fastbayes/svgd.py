"""Stein variational gradient descent as a wrapper around any torch optimiser (Liu & Wang 2016; METHODS.md §4.3).

    particles = torch.nn.Parameter(torch.randn(64, 2))          # n = 64 particles in the leading dimension
    opt = fastbayes.svgd.SVGD([particles], lr=0.05)              # Adam by default
    for step in range(500):
        opt.zero_grad()
        (-log_posterior(particles)).sum().backward()             # the negative log-posterior summed over particles
        opt.step()                                               # .grad <- −φ, then Adam's step

Every parameter carries the n particles in its leading dimension, and all parameters together form one particle
vector: the kernel distance ‖x_i − x_j‖² sums over all of them.  ``step()`` reads the scores ∇ log p(x_i) = −.grad
(the sum over particles of the loss decouples, so particle i's slice of .grad is its own score), replaces each .grad
by −φ(x_i) from ``fastbayes.ops.svgd_direction`` and calls the wrapped optimiser's step, which therefore moves the
particles along +φ.  As in DartML and pyro the bandwidth is a constant of each step (no gradient flows through the
median).  Parameters whose .grad is None are skipped, as torch optimisers skip them, and do not enter the kernel.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from .ops.svgd import apply_kernel, check_bandwidth, check_particles, direction_and_bandwidth
from .reference.svgd import kernel_from_dists, pairwise_sq_dists

__all__ = ["SVGD", "function_space_backward", "sharded_direction"]


def function_space_backward(outputs: Tensor, scores: Tensor, bandwidth: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """Function-space SVGD (Wang et al. 2019, "Function space particle optimization"): accumulate −Jᵢᵀ φ^f_i into the
    .grad of whatever ``outputs`` depends on.

    ``outputs`` [n, ...] are the n particles' function values on common inputs (differentiable: a network's outputs
    on one batch, the particle dimension first), ``scores`` the same shape: ∇ of the log target density with respect
    to those function values (e.g. the likelihood's (N/B)·∇_f log p(y | f)).  φ^f = ``svgd_direction(outputs,
    scores)``: the RBF kernel on the function values (median bandwidth unless ``bandwidth``), through the fused op.
    Its pull-back through each particle's own Jacobian Jᵢ = ∂f_i/∂w_i is one backward pass; it is exact when the
    Jacobians agree (a linear model) and the f-SVGD approximation Jⱼ ≈ Jᵢ otherwise.  .grad then holds −φ as for
    ``SVGD``, so any torch optimiser's step moves the parameters along +φ.  Returns (φ^f as float64 [n, d], h).
    """
    if not isinstance(outputs, Tensor) or not isinstance(scores, Tensor):
        raise TypeError("outputs and scores must be tensors")
    if scores.shape != outputs.shape:
        raise ValueError(f"scores must have the shape of outputs {tuple(outputs.shape)}, got {tuple(scores.shape)}")
    if outputs.dim() < 1 or outputs.shape[0] < 2:
        raise ValueError(f"outputs must carry n >= 2 particles in dim 0, got shape {tuple(outputs.shape)}")
    if not outputs.requires_grad:
        raise ValueError("outputs must require grad (the particles' function values, with their graph)")
    n = outputs.shape[0]
    with torch.no_grad():
        (phi,), h = direction_and_bandwidth([outputs.detach().reshape(n, -1).double()],
                                            [scores.detach().reshape(n, -1).double()], bandwidth)
    outputs.backward(-phi.to(outputs.dtype).reshape(outputs.shape))
    return phi, h


@torch.no_grad()
def sharded_direction(particles: list[Tensor], scores: list[Tensor], bandwidth: Optional[float] = None,
                      group=None) -> tuple[list[Tensor], Tensor]:
    """φ for this rank's slice of a particle vector that is sharded over the ranks of ``group``.

    Every rank holds all n particles of a disjoint set of tensors (e.g. its share of a model's layers).  Squared
    distances add up over disjoint coordinates, so the only communication is one all-reduce of the n×n distance
    matrix — n² floats instead of the n·d particles — after which every rank forms the same K and h and applies them
    to its own tensors with the fused ``svgd_apply``.  The result equals the single-process ``svgd_direction`` on the
    concatenated particle vector (up to the float64 summation order of the distances).  A rank may hold no tensor.
    Returns (φ for the local tensors, h).
    """
    import torch.distributed as dist
    h_fixed = check_bandwidth(bandwidth)
    xs, ss = list(particles), list(scores)
    if xs:
        n = check_particles(xs, ss)
        d = pairwise_sq_dists([x.detach() for x in xs])
    else:
        raise ValueError("particles must hold at least one tensor on every rank (give an idle rank a 0-width "
                         "[n, 0] tensor)")
    dist.all_reduce(d, op=dist.ReduceOp.SUM, group=group)
    K, h = kernel_from_dists(d, h_fixed)
    dts = [x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32 for x in xs]
    phis = [apply_kernel(K, h, x.detach().reshape(n, -1).to(dt), s.detach().reshape(n, -1).to(dt))
            .reshape(x.shape).to(x.dtype) for x, s, dt in zip(xs, ss, dts)]
    return phis, h


def _flat_params(params) -> list[Tensor]:
    out = []
    for p in params:
        if isinstance(p, dict):
            out.extend(p["params"] if not isinstance(p["params"], Tensor) else [p["params"]])
        else:
            out.append(p)
    return out


class SVGD:
    """SVGD update around ``optimizer`` (a torch.optim.Optimizer class, Adam by default).

    Args:
        params: tensors (or param-group dicts) with the particle dimension n >= 2 first, as for any optimiser.
        optimizer: the optimiser class that applies the update; built as ``optimizer(params, **optimizer_kwargs)``.
        bandwidth: a fixed RBF bandwidth h, or None for the median heuristic recomputed at every step.
        sharded, process_group: with ``sharded=True`` each rank of ``process_group`` passes its own slice of the
            particle vector (disjoint params, all n particles each) and the kernel is formed from the all-reduced
            n×n distance matrix (``sharded_direction``); the update equals the single-process one.
        **optimizer_kwargs: passed to ``optimizer`` (e.g. ``lr``).

    ``zero_grad``, ``state_dict``, ``load_state_dict`` and ``param_groups`` are the wrapped optimiser's.  After a step,
    ``last_bandwidth`` holds the h that step used (a float64 0-d tensor on the particles' device, read without a host
    sync).
    """

    def __init__(self, params: Iterable, optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                 bandwidth: Optional[float] = None, *, process_group=None, sharded: bool = False,
                 **optimizer_kwargs):
        params = list(params)
        if not params:
            raise ValueError("params must hold at least one tensor")
        self.bandwidth = check_bandwidth(bandwidth)
        flat = _flat_params(params)
        n = None
        for k, p in enumerate(flat):
            if not isinstance(p, Tensor):
                raise ValueError(f"params[{k}] must be a tensor, got {type(p).__name__}")
            if not p.is_floating_point():
                raise ValueError(f"params[{k}] must be a floating-point tensor, got dtype {p.dtype}")
            if p.dim() < 1 or p.shape[0] < 2:
                raise ValueError(f"params[{k}] must carry n >= 2 particles in its leading dimension, "
                                 f"got shape {tuple(p.shape)}")
            if n is None:
                n = p.shape[0]
            elif p.shape[0] != n:
                raise ValueError(f"every param must carry the same number of particles n = {n} in dim 0, "
                                 f"params[{k}] has {p.shape[0]}")
        self.n_particles = n
        self._params = flat
        self.optimizer = optimizer(params, **optimizer_kwargs)
        self.last_bandwidth: Optional[Tensor] = None
        # sharded: this rank's params are its slice of the particle vector (see sharded_direction)
        self.sharded, self.process_group = bool(sharded), process_group

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None):
        """Replace every .grad by −φ and take the wrapped optimiser's step; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ps = [p for p in self._params if p.grad is not None]
        if ps:
            if any(p.grad.is_sparse for p in ps):
                raise ValueError("SVGD does not support sparse gradients")
            if self.sharded:
                phis, self.last_bandwidth = sharded_direction(ps, [-p.grad for p in ps], self.bandwidth,
                                                              self.process_group)
            else:
                phis, self.last_bandwidth = direction_and_bandwidth(ps, [-p.grad for p in ps], self.bandwidth)
            for p, phi in zip(ps, phis):
                p.grad = phi.neg_()  # a fresh tensor of p's shape: no extra pass to copy it into the old .grad
        self.optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        h = "median" if self.bandwidth is None else self.bandwidth
        return f"SVGD(n_particles={self.n_particles}, bandwidth={h}, optimizer={self.optimizer!r})"
