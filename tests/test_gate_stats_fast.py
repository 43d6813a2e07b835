"""The fast path of the compiled gate statistics (csrc/include/fastbayes/math.h, ``fast_kind``) against the
far-tail-exact path (its line-by-line twin fastbayes.reference.gate_stats) and against mpmath.

The fast path serves the units whose lower end a is far from the mass of q (α² - min(β, 0)² >= FAR_END²) in three
kinds: deep (β >= FAR_END + 2σ, the log-normal limit), near (-TAIL_S <= β < FAR_END + 2σ; Δ² directly, by its
Taylor series in σ below TAYLOR_SIGMA, or by quadrature in between) and tail (β < -TAIL_S; Δ² from three continued fractions above
TAIL_SIGMA_MIN, by quadrature below).  A fourth, interior, serves windows not in a tail with both ends in reach
(s0 <= TAIL_S, T >= INTERIOR_MIN_T, σ >= QUAD_SIGMA·max(1, s0), every shifted window in the lower tail with
T(s + T/2) >= INTERIOR_MIN_TAIL); its sub-kinds count the shifted windows in the tail (interior-0/1/2).  Every switch is probed exactly at and within 1e-12 / 1e-9 relative on
both sides; ``_fast_kind`` mirrors the C++ classification only to check that both sides are really exercised.
"""
from __future__ import annotations

import math

import pytest
import torch

_C = pytest.importorskip("fastbayes._C", reason="compiled extension fastbayes._C is not built")

import fastbayes as fb  # noqa: E402
from fastbayes.reference import gate_stats as ref  # noqa: E402

ops = torch.ops.fastbayes_C
F64 = torch.float64
A, B = -20.0, 0.0
DEVICES = ["cpu"] + (["cuda"] if _C.has_cuda() and torch.cuda.is_available() else [])
NAMES = ("kl", "mean", "snr", "dmu", "dlog_sigma")
# math.h constants (FAR_END, TAYLOR_SIGMA, TAIL_SIGMA_MIN, INTERIOR_MIN_T, INTERIOR_MIN_TAIL); TAIL_S and QUAD_SIGMA
# are the reference's
FAR_END, TAYLOR_SIGMA, TAIL_SIGMA_MIN = 10.0, 0.1, 0.02
INTERIOR_MIN_T, INTERIOR_MIN_TAIL = 0.1, 1.0
# the tolerances of tests/test_csrc.py: the fast path must be as close to the exact path as the exact path is
TOL64 = {"kl": (1e-18, 1e-11), "mean": (0.0, 1e-13), "snr": (0.0, 1e-11), "dmu": (1e-15, 1e-11),
         "dlog_sigma": (1e-15, 1e-11)}
DEVICE_FACTOR = {"cpu": 1.0, "cuda": 10.0}
D = (-1e-9, -1e-12, 0.0, 1e-12, 1e-9)


def _fast_kind(al: float, be: float, sigma: float, T: float | None = None) -> str:
    """Python mirror of math.h fast_kind plus the Δ² switches inside near and tail (test bookkeeping only)."""
    T = (B - A) / sigma if T is None else T
    bm = min(be, 0.0)
    if not (sigma > 0 and al < 0 and al * al - bm * bm >= FAR_END ** 2):
        s0 = -be if al + be < 0 else al
        if s0 <= ref.TAIL_S and T >= INTERIOR_MIN_T and sigma >= ref.QUAD_SIGMA * max(1.0, s0):
            shifted = [k * sigma - be for k in (1, 2)]
            if all(s <= ref.TAIL_S or T * (s + T / 2) >= INTERIOR_MIN_TAIL for s in shifted):
                return f"interior-{sum(s > ref.TAIL_S for s in shifted)}"
        return "exact"
    if be >= FAR_END + 2 * sigma:
        return "deep"
    if be >= -ref.TAIL_S:
        if sigma >= ref.QUAD_SIGMA * max(-be, 1.0):
            return "near-direct"
        return "near-taylor" if sigma < TAYLOR_SIGMA else "near-quad"
    return "tail-cf" if sigma >= TAIL_SIGMA_MIN else "tail-quad"


def _kinds(pairs, a=A, b=B):
    return {_fast_kind((a - m) / s, (b - m) / s, s, (b - a) / s) for m, s in pairs}


def _units(pairs):
    """(μ, log σ) float64 tensors from (μ, σ) pairs."""
    mu = torch.tensor([p[0] for p in pairs], dtype=F64)
    sigma = torch.tensor([p[1] for p in pairs], dtype=F64)
    return mu, sigma.log()


def _at_beta(be, sigma):
    return B - be * sigma, sigma


def _at_alpha(al, sigma):
    return A - al * sigma, sigma


def _boundaries():
    """name -> (μ, σ) pairs at and around one switch of fast_kind."""
    out = {}
    sig = (1e-6, 1e-3, 0.05, 0.3, 1.0)
    # far end: α = -FAR_END with β >= 0 (σ small enough that β >= 0 there) ...
    out["far_end_beta_pos"] = [_at_alpha(-FAR_END * (1 + d), s) for s in (1e-3, 0.05, 0.5, 1.5) for d in D]
    # ... and α² - β² = FAR_END² with β < 0 (μ beyond b; a narrow window in σ units)
    pairs = []
    for s in (0.3, 1.0, 1.9):
        T = (B - A) / s
        for d in D:
            # α = β - T, (β - T)² - β² = FAR_END²  =>  β = (T² - FAR_END²)/(2T), which is < 0 for T < FAR_END
            be = (T * T - FAR_END ** 2 * (1 + d)) / (2 * T)
            pairs.append(_at_beta(be, s))
    out["far_end_beta_neg"] = pairs
    out["deep"] = [_at_beta((FAR_END + 2 * s) * (1 + d), s) for s in sig for d in D]
    out["near_tail"] = [_at_beta(-ref.TAIL_S * (1 + d), s) for s in sig + (0.02, 0.6) for d in D]
    out["taylor_sigma"] = [_at_beta(be, TAYLOR_SIGMA * (1 + d)) for be in (-1.0, -0.3, 0.0, 2.0, 9.5) for d in D]
    out["direct_sigma"] = [_at_beta(be, ref.QUAD_SIGMA * -be * (1 + d)) for be in (-1.5, -3.0, -4.99) for d in D]
    out["near_quad_sigma"] = [_at_beta(be, TAYLOR_SIGMA * (1 + d)) for be in (-1.5, -3.0, -4.99) for d in D]
    out["tail_sigma"] = [_at_beta(be, TAIL_SIGMA_MIN * (1 + d)) for be in (-5.5, -20.0, -300.0) for d in D]
    # interior: the window's own tail at s0 = TAIL_S (upper end β = -TAIL_S, α within FAR_END of it) ...
    out["interior_s0"] = [_at_beta(-ref.TAIL_S * (1 + d), s) for s in (5.0, 8.0) for d in D]
    # ... the width T = INTERIOR_MIN_T, centred and off-centre ...
    out["interior_min_t"] = [(m, (B - A) / (INTERIOR_MIN_T * (1 + d))) for m in (-10.0, -25.0) for d in D]
    # ... Δ² direct from σ = QUAD_SIGMA·s0 (s0 = α > 1, q near the lower end) ...
    out["interior_quad_sigma"] = [(A - s0 * ref.QUAD_SIGMA * s0 * (1 + d), ref.QUAD_SIGMA * s0 * (1 + d))
                                  for s0 in (1.5, 3.0, 4.9) for d in D]
    # ... and a shifted window entering the lower tail (σ - β = TAIL_S, then 2σ - β = TAIL_S)
    out["interior_shifted_tail"] = [_at_beta(k * s - ref.TAIL_S * (1 + d), s) for k, s in ((1, 4.0), (1, 6.0), (2, 2.0))
                                    for d in D]
    return out


# a shifted tail window with T(s + T/2) = INTERIOR_MIN_TAIL needs a narrow prior window: [a, b] = [-1, 0], T = 1/σ,
# s = σ - β, so the switch is at β = 1/(2σ)
NARROW = (-1.0, 0.0)
BOUNDARIES_NARROW = {"interior_min_tail": [(NARROW[1] - 0.5 * (1 + d), s) for s in (6.0, 8.0) for d in D]}


BOUNDARIES = _boundaries()


def _run(device, mu, ls, grad, a=A, b=B):
    dev = [t.to(device) for t in (mu, ls, grad)]
    got = [t.cpu() for t in ops.gate_stats(dev[0], dev[1], a, b) + ops.gate_stats_backward(dev[2], dev[0], dev[1], a, b)]
    want = list(ref.gate_stats(mu, ls, a, b) + ref.gate_stats_backward(grad, mu, ls, a, b))
    return got, want


def _max_rel_err(got, want, name):
    atol, _ = TOL64[name]
    return ((got - want).abs() / (want.abs() + atol / TOL64[name][1] + 1e-300)).max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("boundary", sorted(BOUNDARIES) + sorted(BOUNDARIES_NARROW))
def test_fast_path_matches_exact_path_across_each_switch(device, boundary):
    a, b = NARROW if boundary in BOUNDARIES_NARROW else (A, B)
    pairs = {**BOUNDARIES, **BOUNDARIES_NARROW}[boundary]
    mu, ls = _units(pairs)
    kinds = _kinds(pairs, a, b)
    assert len(kinds) >= 2, (boundary, kinds)   # the set straddles the switch
    grad = torch.linspace(-1.5, 2.0, mu.numel(), dtype=F64)
    got, want = _run(device, mu, ls, grad, a, b)
    for name, k, r in zip(NAMES, got, want):
        atol, rtol = (t * DEVICE_FACTOR[device] for t in TOL64[name])
        assert torch.isfinite(k).all(), name
        torch.testing.assert_close(k, r, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{boundary} {name}: {m}")


def test_every_kind_is_exercised():
    kinds = set().union(*(_kinds(pairs) for pairs in BOUNDARIES.values()),
                        *(_kinds(pairs, *NARROW) for pairs in BOUNDARIES_NARROW.values()))
    assert kinds == {"exact", "deep", "near-direct", "near-taylor", "near-quad", "tail-cf", "tail-quad",
                     "interior-0", "interior-1", "interior-2"}


# ------------------------------------------------------------------------------------------------- mpmath oracle

ORACLE_POINTS = [
    # deep: μ well inside, σ from 1e-6 to 1
    (-10.0, 1e-6), (-5.0, 0.00673794699908547), (-1.0, 0.05), (-3.0, 0.25), (-10.0, 0.8),
    # near, Taylor Δ² (σ < 0.1) and direct Δ² (σ >= 0.1·max(1, -β))
    (0.0, 0.00673794699908547), (-0.01, 0.00673794699908547), (0.02, 0.00673794699908547), (-0.3, 0.05),
    (0.2, 0.09), (-0.05, 0.099), (0.0, 0.5), (-1.0, 0.3), (1.0, 0.4), (-2.0, 1.5),
    # near, quadrature Δ² (-5 <= β < -1, 0.1 <= σ < -β/10)
    (0.3, 0.12), (0.6, 0.15), (1.0, 0.3),
    # tail, three continued fractions (σ >= 0.02) and quadrature (σ < 0.02)
    (0.2, 0.03), (1.0, 0.05), (3.0, 0.1), (5.0, 0.8), (0.5, 0.019), (0.1, 0.005), (2.0, 1e-4), (0.05, 1e-6),
    # interior: posteriors relaxed towards the prior (both ends in reach), no / one / two shifted windows in the tail
    (-21.0, 0.4), (-10.0, 2.0), (-1.5, 3.0), (5.0, 4.0), (-0.5, 20.0), (-2.9, 54.0), (-12.0, 150.0),
]


def _mp_stats(mu, sigma, a=A, b=B):
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp
    mp.dps = 80
    mu, sigma, a, b = (mp.mpf(x) for x in (mu, sigma, a, b))

    def kl(m, s):
        al, be = (a - m) / s, (b - m) / s
        z = mp.ncdf(be) - mp.ncdf(al)
        nz = al * mp.npdf(al) - be * mp.npdf(be)
        return mp.log(b - a) - mp.log(s) - mp.log(z) - mp.log(2 * mp.pi * mp.e) / 2 - nz / (2 * z)

    al, be = (a - mu) / sigma, (b - mu) / sigma
    z = mp.ncdf(be) - mp.ncdf(al)
    e1 = mp.exp(mu + sigma ** 2 / 2) * (mp.ncdf(be - sigma) - mp.ncdf(al - sigma)) / z
    e2 = mp.exp(2 * mu + 2 * sigma ** 2) * (mp.ncdf(be - 2 * sigma) - mp.ncdf(al - 2 * sigma)) / z
    snr = e1 / mp.sqrt(e2 - e1 ** 2)
    dmu = mp.diff(lambda m: kl(m, sigma), mu)
    dls = mp.diff(lambda t: kl(mu, mp.exp(t)), mp.log(sigma))
    return [float(x) for x in (kl(mu, sigma), e1, snr, dmu, dls)]


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_against_mpmath(device):
    assert _kinds(ORACLE_POINTS) == {"deep", "near-direct", "near-taylor", "near-quad", "tail-cf", "tail-quad",
                                     "interior-0", "interior-1", "interior-2"}
    mu, ls = _units(ORACLE_POINTS)
    # log σ as the kernels see it: σ = exp(log σ) rounded, so the oracle uses that σ too
    sig = ls.exp().tolist()
    got = [t.cpu() for t in ops.gate_stats(mu.to(device), ls.to(device), A, B)
           + ops.gate_stats_backward(torch.ones_like(mu).to(device), mu.to(device), ls.to(device), A, B)]
    k = DEVICE_FACTOR[device]
    # (atol, rtol) against 80-digit truth: the reference's own accuracy claim (its module docstring)
    tol = {"kl": (1e-15, 1e-12), "mean": (0.0, 2e-13), "snr": (0.0, 2e-11), "dmu": (1e-14, 3e-12),
           "dlog_sigma": (1e-14, 3e-12)}
    for i, (m, _) in enumerate(ORACLE_POINTS):
        want = _mp_stats(m, sig[i])
        for name, g, w in zip(NAMES, got, want):
            atol, rtol = tol[name]
            err = abs(g[i].item() - w)
            assert err <= k * (atol + rtol * abs(w)), (ORACLE_POINTS[i], name, g[i].item(), w)


# ------------------------------------------------------------------------------------------------------ gradcheck

@pytest.mark.parametrize("pairs", [
    [(-10.0, 0.05), (-4.0, 0.3), (-10.0, 0.8)],                      # deep
    [(0.0, 0.0067), (-0.2, 0.05), (0.1, 0.5), (-1.0, 0.3)],        # near
    [(0.5, 0.05), (2.0, 0.3), (0.3, 0.01)],                         # tail
    [(-21.0, 0.4), (-1.5, 3.0), (5.0, 4.0), (-0.5, 20.0)],         # interior
])
def test_gradcheck_fast_kinds(pairs):
    mu, ls = _units(pairs)
    assert all(_fast_kind((A - m) / s, (B - m) / s, s) != "exact" for m, s in pairs)
    mu, ls = mu.requires_grad_(), ls.requires_grad_()
    with fb.backends.use("cpu"):
        assert torch.autograd.gradcheck(lambda m, l_: fb.ops.gate_stats(m, l_)[0], (mu, ls), eps=1e-7, atol=1e-6,
                                        rtol=1e-6)


def test_ordinary_batch_matches_reference():
    """A ResNet-50-sized batch of the ordinary regime (μ ~ N(0, 1) around b, log σ ~ N(-3, 1)), op vs reference."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(26560, generator=g, dtype=F64)
    ls = torch.randn(26560, generator=g, dtype=F64) - 3.0
    grad = torch.rand(26560, generator=g, dtype=F64)
    got, want = _run("cpu", mu, ls, grad)
    for name, k, r in zip(NAMES, got, want):
        atol, rtol = TOL64[name]
        torch.testing.assert_close(k, r, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
