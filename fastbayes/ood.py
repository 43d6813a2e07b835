"""Out-of-distribution inputs for an image classifier, built from its in-distribution batch (e.g. Fashion-MNIST).

``ood_sets(x_in)`` returns three OOD sets shaped like ``x_in`` [N, C, H, W], on its device and in its dtype, for
``fastbayes.metrics.ood_auroc`` / ``reliability_report(..., ood_logits=...)``:

* ``"digits"``: scikit-learn's bundled 8×8 digits (1,797 images; needs scikit-learn), resized bilinearly to H×W
  and mapped affinely from [0, 1] onto [x_in.min(), x_in.max()]: the normalisation x_in went through, when x_in is
  an affine transform of [0, 1] pixels that reach both 0 and 1 (Fashion-MNIST's do);
* ``"rotated"``: x_in rotated by ``angle`` degrees (``torch.rot90``, counter-clockwise as displayed; 90 by default);
* ``"noise"``: Gaussian images with x_in's per-pixel mean and std (over the batch, ddof 0), not clipped.

Draws come from CPU ``torch.Generator``s seeded by ``seed`` (one per set, so a set does not depend on which others
are asked for, nor on the device).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

OOD_SETS = ("digits", "rotated", "noise")
N_DIGITS = 1797

__all__ = ["N_DIGITS", "OOD_SETS", "ood_sets"]


def _load_digits() -> Tensor:
    """The 1,797 digits as float32 [1797, 1, 8, 8] in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the 'digits' OOD set needs scikit-learn (pip install scikit-learn, or the fastbayes[test] "
                          "extra); without it ask for sets=('rotated', 'noise')") from e
    return torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0


def ood_sets(x_in: Tensor, *, seed: int = 0, n: Optional[int] = None,
             sets: Union[str, Iterable[str]] = OOD_SETS, angle: int = 90) -> dict[str, Tensor]:
    """OOD sets for the in-distribution batch ``x_in`` [N, C, H, W] (floating, finite), each [n, C, H, W] (n = N by
    default; 1 <= n <= N) in x_in's dtype and device: {name: images} for each name in ``sets`` (of ``OOD_SETS``).

    ``"rotated"`` holds all of x_in in order when n = N, else a random subset of n; ``"digits"`` a random subset of
    the 1,797 digits, each used ⌊n / 1797⌋ or ⌈n / 1797⌉ times when n > 1797.  ``angle`` is 90, 180 or 270; a
    non-square x_in takes only 180 (the others would change its shape).  See the module docstring for the sets."""
    if not isinstance(x_in, Tensor):
        raise TypeError(f"x_in must be a tensor [N, C, H, W], got {type(x_in).__name__}")
    if not x_in.is_floating_point() or x_in.dim() != 4 or 0 in x_in.shape:
        raise ValueError(f"x_in must be a non-empty floating tensor [N, C, H, W], got {x_in.dtype} "
                         f"{tuple(x_in.shape)}")
    if not bool(torch.isfinite(x_in).all()):
        raise ValueError("x_in must be finite")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    N, C, H, W = x_in.shape
    if n is None:
        n = N
    elif isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int or None, got {type(n).__name__}")
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, len(x_in) = {N}], got {n}")
    names = (sets,) if isinstance(sets, str) else tuple(sets)
    if not names or len(set(names)) != len(names) or any(s not in OOD_SETS for s in names):
        raise ValueError(f"sets must be distinct names from {OOD_SETS}, got {sets!r}")
    if isinstance(angle, bool) or angle not in (90, 180, 270):
        raise ValueError(f"angle must be 90, 180 or 270, got {angle!r}")
    if H != W and angle != 180:
        raise ValueError(f"angle must be 180 for non-square images ({H}×{W}), got {angle}")

    # one sub-seed per set, always all three drawn: a set's images do not depend on which others were asked for
    sub = torch.randint(0, 2 ** 62, (len(OOD_SETS),), generator=torch.Generator().manual_seed(seed)).tolist()
    gens = {name: torch.Generator().manual_seed(s) for name, s in zip(OOD_SETS, sub)}
    x = x_in.detach()
    out = {}
    for name in names:
        g = gens[name]
        if name == "digits":
            d = _load_digits()
            reps = math.ceil(n / N_DIGITS)
            idx = torch.cat([torch.randperm(N_DIGITS, generator=g) for _ in range(reps)])[:n]
            d = F.interpolate(d[idx], size=(H, W), mode="bilinear", align_corners=False,
                              antialias=H < 8 or W < 8).clamp(0.0, 1.0)
            lo, hi = float(x.min()), float(x.max())
            out[name] = (lo + (hi - lo) * d.double()).expand(n, C, H, W).to(x.dtype).to(x.device).contiguous()
        elif name == "rotated":
            sel = x if n == N else x[torch.randperm(N, generator=g)[:n].to(x.device)]
            out[name] = torch.rot90(sel, angle // 90, dims=(-2, -1)).contiguous()
        else:
            xd = x.double()
            sd, mu = torch.std_mean(xd, dim=0, correction=0)
            z = torch.randn(n, C, H, W, generator=g, dtype=torch.float64)
            out[name] = (mu.cpu() + sd.cpu() * z).to(x.dtype).to(x.device).contiguous()
    return out
