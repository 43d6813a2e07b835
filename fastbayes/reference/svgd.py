"""Reference of the SVGD direction (Liu & Wang 2016; METHODS.md §4.3), the oracle of every ``svgd_direction`` backend.

φ_i = (1/n) Σ_j [k_ij g_j + (2/h)(x_i − x_j) k_ij],  k_ij = exp(−‖x_i − x_j‖² / h),  i.e. in matrix form
Φ = (K·G + (2/h)(diag(K1)·X − K·X)) / n.  A particle may be split over several tensors (all parameters of a
model): each tensor is [n, ...] and ‖x_i − x_j‖² sums over all of them.

Two stages, the split every backend follows so that the expensive pass over the particles can be fused:

* ``svgd_kernel_matrix(particles, bandwidth) -> (K, h)``: the n×n Gram matrix accumulated tensor by tensor with
  matmuls (never an n×n×d tensor), the squared distances D, the bandwidth h and K = exp(−D/h).  K and h are
  float64 on the particles' device.  The Gram matrix is taken in float64 after subtracting each column's mean
  over the particles: distances do not change under a shift, and the shift removes the cancellation of
  ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j when the particles sit close together far from the origin (SVGD particles
  spawned from one trained network).  D is clamped at 0 and its diagonal is exactly 0.
* ``svgd_apply(K, h, x, score) -> φ`` for one tensor of the particle vector, in x's dtype (computed in
  float32 for 16-bit x, float64 for float64 x).

Bandwidth (``bandwidth=None``): h = med / log(n + 1), med the median of the n(n−1)/2 pairwise squared distances,
the median of an even count being the mean of the two middle values (numpy's convention).  When med is 0 (more
than half of the pairs coincide) the largest squared distance takes its place, and when that is 0 too (all
particles equal, where K ≡ 1 for every h) h = 1.  These fallbacks are ours; DartML and pyro divide by zero.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor
from ..backends import register

# columns per float64 chunk of the Gram accumulation: bounds the float64 copy to ~32 MB whatever d is
_CHUNK_ELEMS = 1 << 22


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def median_bandwidth(d: Tensor) -> Tensor:
    """h from an n×n matrix of squared distances (float64, zero diagonal), without a host sync."""
    n = d.shape[0]
    iu = torch.triu_indices(n, n, 1, device=d.device)
    v = torch.sort(d[iu[0], iu[1]]).values
    m = v.numel()
    med = 0.5 * (v[(m - 1) // 2] + v[m // 2])
    med = torch.where(med > 0, med, v[-1])
    return torch.where(med > 0, med / math.log(n + 1), torch.ones_like(med))


def pairwise_sq_dists(particles: Sequence[Tensor]) -> Tensor:
    """The n×n matrix of squared distances ‖x_i − x_j‖² summed over the tensors (float64, zero diagonal).

    Distances add up over disjoint blocks of coordinates, so ranks that each hold a slice of the particle vector can
    sum their partial matrices (``fastbayes.svgd.sharded_direction``)."""
    n = particles[0].shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=particles[0].device)
    for x in particles:
        x = x.reshape(n, -1)
        step = max(1, _CHUNK_ELEMS // n)
        for c in range(0, x.shape[1], step):
            xc = x[:, c:c + step].to(torch.float64)
            xc = xc - xc.mean(0)
            gram += xc @ xc.T
    sq = gram.diagonal()
    d = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return d


def kernel_from_dists(d: Tensor, bandwidth: Optional[float]) -> tuple[Tensor, Tensor]:
    """(K, h) from squared distances: the median heuristic when ``bandwidth`` is None."""
    if bandwidth is None:
        h = median_bandwidth(d)
    else:
        h = torch.tensor(float(bandwidth), dtype=torch.float64, device=d.device)
    return torch.exp(-d / h), h


@register("reference")
def svgd_kernel_matrix(particles: Sequence[Tensor], bandwidth: Optional[float]) -> tuple[Tensor, Tensor]:
    """(K, h): the n×n RBF kernel matrix and its bandwidth, both float64, for particles [n, ...] tensors."""
    return kernel_from_dists(pairwise_sq_dists(particles), bandwidth)


@register("reference")
def svgd_apply(K: Tensor, h: Tensor, x: Tensor, score: Tensor) -> Tensor:
    """φ = (K·S + (2/h)(diag(K1)·X − K·X)) / n for one [n, ...] tensor of the particles and its scores."""
    n = x.shape[0]
    dt = compute_dtype(x.dtype)
    X, S = x.reshape(n, -1).to(dt), score.reshape(n, -1).to(dt)
    k = K.to(dt)
    phi = (k @ S + (2.0 / h.to(dt)) * (k.sum(1, keepdim=True) * X - k @ X)) / n
    return phi.reshape(x.shape).to(x.dtype)


def svgd_direction(particles, scores, bandwidth: Optional[float] = None):
    """The two stages composed, without argument checks (``fastbayes.ops.svgd_direction`` checks and dispatches):
    a tensor for a tensor, a list for a list."""
    if isinstance(particles, Tensor):
        return svgd_direction([particles], [scores], bandwidth)[0]
    K, h = svgd_kernel_matrix(list(particles), bandwidth)
    return [svgd_apply(K, h, x, s) for x, s in zip(particles, scores)]
