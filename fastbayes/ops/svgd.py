"""``svgd_direction``: the Stein variational gradient direction φ of n particles (METHODS.md §4.3).

φ_i = (1/n) Σ_j [k_ij g_j + (2/h)(x_i − x_j) k_ij],  k_ij = exp(−‖x_i − x_j‖² / h).  Two custom ops, one per pass
over the particles (``fastbayes/reference/svgd.py`` specifies both):

* ``fastbayes::svgd_kernel_matrix(particles, bandwidth) -> (K, h)`` reads every particle tensor once to accumulate
  the n×n Gram matrix, then forms the distances, the (median) bandwidth and K on the device (float64, no host sync);
* ``fastbayes::svgd_apply(K, h, x, score) -> φ`` reads x and its scores once and writes φ once, per tensor.

φ is an update direction, not a differentiable function of its inputs: the ops have no autograd formula and the
public function detaches its inputs.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._dispatch import run

_KERNEL_DTYPES = (torch.float32, torch.float64)


@torch.library.custom_op("fastbayes::svgd_kernel_matrix", mutates_args=())
def _svgd_kernel_matrix(particles: list[Tensor], bandwidth: Optional[float]) -> tuple[Tensor, Tensor]:
    K, h = run("svgd_kernel_matrix", particles[0].device, [p.contiguous() for p in particles], bandwidth)
    return K, h


@_svgd_kernel_matrix.register_fake
def _(particles, bandwidth):
    n = particles[0].shape[0]
    p = particles[0]
    return p.new_empty((n, n), dtype=torch.float64), p.new_empty((), dtype=torch.float64)


@torch.library.custom_op("fastbayes::svgd_apply", mutates_args=())
def _svgd_apply(K: Tensor, h: Tensor, x: Tensor, score: Tensor) -> Tensor:
    return run("svgd_apply", x.device, K, h, x.contiguous(), score.contiguous())


@_svgd_apply.register_fake
def _(K, h, x, score):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def check_bandwidth(bandwidth) -> Optional[float]:
    if bandwidth is None:
        return None
    ok = isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, bool)
    ok = ok or isinstance(bandwidth, Tensor) and bandwidth.numel() == 1 and bandwidth.dtype != torch.bool
    if not ok:
        raise ValueError(f"bandwidth must be None or a positive finite number, got {bandwidth!r}")
    h = float(bandwidth)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be None or a positive finite number, got {h}")
    return h


def _as_list(name: str, v) -> list:
    if isinstance(v, Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        if not v:
            raise ValueError(f"{name} must be a tensor or a non-empty list of tensors, got an empty {type(v).__name__}")
        return list(v)
    raise ValueError(f"{name} must be a tensor or a list of tensors, got {type(v).__name__}")


def check_particles(xs: list, ss: list) -> int:
    if len(ss) != len(xs):
        raise ValueError(f"scores must have one tensor per particle tensor ({len(xs)}), got {len(ss)}")
    n = None
    for k, (x, s) in enumerate(zip(xs, ss)):
        px, ps = (f"particles[{k}]", f"scores[{k}]") if len(xs) > 1 else ("particles", "scores")
        for name, t in ((px, x), (ps, s)):
            if not isinstance(t, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if x.dim() < 1:
            raise ValueError(f"{px} must have a leading particle dimension [n, ...], got a 0-d tensor")
        if s.shape != x.shape:
            raise ValueError(f"{ps} must have the shape of {px} {tuple(x.shape)}, got {tuple(s.shape)}")
        if s.device != x.device or x.device != xs[0].device:
            raise ValueError(f"{px} and {ps} must be on the device of particles[0] ({xs[0].device}), "
                             f"got {x.device} and {s.device}")
        if n is None:
            n = x.shape[0]
        elif x.shape[0] != n:
            raise ValueError(f"every particle tensor must have the same number of particles n = {n} in dim 0, "
                             f"{px} has {x.shape[0]}")
    if n < 2:
        raise ValueError(f"particles must hold at least n = 2 particles along dim 0, got n = {n}")
    return n


def apply_kernel(K: Tensor, h: Tensor, x: Tensor, score: Tensor) -> Tensor:
    """φ of one [n, d] particle tensor from the kernel matrix K and bandwidth h of ``svgd_kernel_matrix``."""
    return _svgd_apply(K, h, x, score)


def direction_and_bandwidth(xs: Sequence[Tensor], ss: Sequence[Tensor], bandwidth: Optional[float]
                            ) -> tuple[list[Tensor], Tensor]:
    """Checked lists in, (list of φ, h as a float64 0-d tensor on the device) out; used by ``fastbayes.svgd``."""
    xs, ss = list(xs), list(ss)
    n = check_particles(xs, ss)
    h_fixed = check_bandwidth(bandwidth)
    # kernels take float32/float64 rows; 16-bit particles are computed in float32 and φ is cast back
    dts = [x.dtype if x.dtype in _KERNEL_DTYPES else torch.float32 for x in xs]
    x2 = [x.detach().reshape(n, -1).to(dt) for x, dt in zip(xs, dts)]
    s2 = [s.detach().reshape(n, -1).to(dt) for s, dt in zip(ss, dts)]
    K, h = _svgd_kernel_matrix(x2, h_fixed)
    phis = [_svgd_apply(K, h, x, s).reshape(x0.shape).to(x0.dtype) for x, s, x0 in zip(x2, s2, xs)]
    return phis, h


def svgd_direction(particles: Union[Tensor, Sequence[Tensor]], scores: Union[Tensor, Sequence[Tensor]],
                   bandwidth: Optional[float] = None) -> Union[Tensor, list[Tensor]]:
    """The SVGD update direction φ of n particles with the RBF kernel.

    Args:
        particles: a [n, d] (or [n, ...]) tensor, or a list of [n, ...] tensors that together form one particle
            vector (e.g. all parameters of n copies of a network); every tensor has the same n >= 2.
        scores: ∇ log p at the particles, the same structure and shapes as ``particles``.
        bandwidth: h of k(x, y) = exp(−‖x − y‖² / h); None takes the median heuristic
            h = median of the n(n−1)/2 pairwise squared distances / log(n + 1) (numpy's median).

    Returns:
        φ with the structure of ``particles`` (a tensor for a tensor, a list for a list), in each tensor's dtype.
        Move the particles by ``x += lr * φ``.  φ carries no gradient.
    """
    single = isinstance(particles, Tensor)
    if single != isinstance(scores, Tensor):
        raise ValueError("scores must have the structure of particles (a tensor for a tensor, a list for a list)")
    phis, _ = direction_and_bandwidth(_as_list("particles", particles), _as_list("scores", scores), bandwidth)
    return phis[0] if single else phis
