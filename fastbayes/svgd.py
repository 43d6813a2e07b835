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

from .ops.svgd import _check_bandwidth, direction_and_bandwidth

__all__ = ["SVGD"]


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
        **optimizer_kwargs: passed to ``optimizer`` (e.g. ``lr``).

    ``zero_grad``, ``state_dict``, ``load_state_dict`` and ``param_groups`` are the wrapped optimiser's.  After a step,
    ``last_bandwidth`` holds the h that step used (a float64 0-d tensor on the particles' device, read without a host
    sync).
    """

    def __init__(self, params: Iterable, optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                 bandwidth: Optional[float] = None, **optimizer_kwargs):
        params = list(params)
        if not params:
            raise ValueError("params must hold at least one tensor")
        self.bandwidth = _check_bandwidth(bandwidth)
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
