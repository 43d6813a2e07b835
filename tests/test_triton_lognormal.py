"""Triton lognormal_noise launchers called directly against the reference (the interpreter on CPU, else a GPU).

tests/test_lognormal.py checks the op through dispatch; this file pins the launchers themselves: every
granularity and tiling mode (per-element sampler, shared draws per unit, shared draws per example), several
program tilings, masks, fp32/bf16/fp64, dim 0 / 1 / last, and the extreme-parameter corner.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # before any kernel module is imported

pytest.importorskip("triton")

import fastbayes as fb  # noqa: E402
from fastbayes.reference import lognormal as ref  # noqa: E402

if fb.backends.triton_mode() == "unavailable":
    pytest.skip("triton can run neither on a GPU nor in the interpreter", allow_module_level=True)
try:
    from fastbayes.kernels import lognormal as K
except ImportError:   # a source checkout whose package_dir mapping (kernels -> fastbayes.kernels) is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels import lognormal as K

# the interpreter evaluates untaken tl.where branches too (log 0, exp overflow): numpy's warnings there are noise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

DEVICE = "cuda" if fb.backends.triton_mode() == "gpu" else "cpu"
GRANS = ("batch", "sample", "element")
# (atol, rtol) against the reference on the same Philox draws; as tests/test_lognormal.py, plus float64
TOL = {torch.float32: (1e-5, 2e-4), torch.bfloat16: (2e-2, 2e-2), torch.float64: (1e-12, 1e-10)}
# (shape, dim): conv-like with S > 1, unit axis last (S = 1, P > 1), plain [B, C], odd sizes, unit axis 0
SHAPES = [((5, 7, 3, 3), 1), ((3, 11, 13), 2), ((6, 17), 1), ((2, 5, 9), 1), ((4, 3, 5), 0)]


def _params(c, gen):
    mu = torch.randn(c, generator=gen) * 3 - 2
    ls = torch.randn(c, generator=gen) - 1.5
    mu[0], ls[0] = 0.0, -5.0            # the init point
    if c > 2:
        mu[1], ls[1] = -19.5, -3.0      # θ ≈ e^-19.5 near the lower bound
        mu[2], ls[2] = 3.0, -1.0        # μ above b: mirrored upper tail
    return mu, ls


def _inputs(shape, dim, dtype, masked, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    mu, ls = _params(shape[dim], gen)
    mask = (torch.rand(shape[dim], generator=gen) > 0.3) if masked else None
    if mask is not None:
        mask[0] = False
    gy = torch.randn(shape, generator=gen).to(dtype)
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    return to(x), to(mu), to(ls), to(mask), to(gy)


def _both(x, mu, ls, mask, gy, dim, gran, a=-20.0, b=0.0, seed=1234, offset=17):
    """(kernel, reference, float64 reference) of (y, dx, dμ, d log σ) on the same draws."""
    args = (mask, a, b, dim, gran, seed, offset)
    got = (K.lognormal_noise(x, mu, ls, *args), *K.lognormal_noise_backward(gy, x, mu, ls, *args))
    want = (ref.lognormal_noise(x, mu, ls, *args), *ref.lognormal_noise_backward(gy, x, mu, ls, *args))
    d = [t.double() for t in (x, mu, ls, gy)]
    truth = (ref.lognormal_noise(*d[:3], *args), *ref.lognormal_noise_backward(d[3], *d[:3], *args))
    return got, want, truth


def _assert_matches(got, want, truth, dtype):
    """y and dx against the reference at the dtype's tolerance.  The parameter gradients sum factors like
    1 - φ(β')/φ(ε')·v that cancel when a draw lies near a bound far out in the tail, so float32 rounding of ε' (1-2
    ulp, which differs between torch, numpy and GPU math) moves them by up to ~1e-3 relative: they are checked
    against the float64 reference on the same draws, allowing twice the float32 reference's own error."""
    atol, rtol = TOL[dtype]
    for label, g, w, t in zip(("y", "dx", "dmu", "dlog_sigma"), got, want, truth):
        assert g.dtype == w.dtype and g.shape == w.shape, label
        g, w, t = g.cpu().double(), w.cpu().double(), t.cpu().double()
        if label in ("y", "dx"):
            torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"{label}: {m}")
            continue
        scale = max(1.0, float(t.abs().max()))   # a sum over the unit's elements: tolerance relative to its size
        bound = 2.0 * (w - t).abs() + atol * scale + rtol * t.abs()
        excess = (g - t).abs() - bound
        assert torch.all(excess <= 0), f"{label}: kernel {g.tolist()}, reference {w.tolist()}, float64 {t.tolist()}"


@pytest.mark.parametrize("gran,shape,dim", [(g, s, d) for g in GRANS for s, d in SHAPES if (g, d) != ("sample", 0)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(gran, shape, dim, masked, dtype):
    x, mu, ls, mask, gy = _inputs(shape, dim, dtype, masked, seed=len(shape) * 100 + dim * 10 + masked)
    got, want, truth = _both(x, mu, ls, mask, gy, dim, gran)
    _assert_matches(got, want, truth, dtype)
    if masked:   # pruned units: y, dx, dμ, d log σ exactly 0
        off = ~mask
        ix = [slice(None)] * x.dim()
        ix[dim] = off
        for t in got[:2]:
            assert torch.all(t[tuple(ix)] == 0)
        assert torch.all(got[2][off] == 0) and torch.all(got[3][off] == 0)


@pytest.mark.parametrize("gran", GRANS)
def test_float64_matches_reference_to_rounding(gran):
    x, mu, ls, mask, gy = _inputs((4, 6, 5), 1, torch.float64, True, seed=7)
    got, want, truth = _both(x, mu.double(), ls.double(), mask, gy, 1, gran)
    _assert_matches(got, want, truth, torch.float64)


def test_bf16_parameters_and_bounds():
    """bf16 μ, log σ (gradients come back in bf16) and bounds that are not float32 numbers."""
    x, mu, ls, mask, gy = _inputs((3, 8, 4), 1, torch.float32, False, seed=3)
    got, want, truth = _both(x, mu.bfloat16(), ls.bfloat16(), mask, gy, 1, "sample", a=-7.3, b=-0.1)
    _assert_matches(got, want, truth, torch.bfloat16)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=2e-4)


@pytest.mark.parametrize("tiles", ["gpu", "tiny"])
@pytest.mark.parametrize("gran", GRANS)
def test_many_programs(monkeypatch, tiles, gran):
    """The interpreter normally runs one program; force the GPU tiling and a tiny one so the partial sums of
    several row blocks and column blocks (and several draw blocks) are exercised."""
    if tiles == "gpu":
        monkeypatch.setattr(K, "_interpreting", lambda: False)
    else:
        monkeypatch.setattr(K, "_tiles", lambda m, k, mode, backward: (2, 4, 4))
        monkeypatch.setattr(K, "_draw_block", lambda t: 8)
    shape = (5, 6, 37) if tiles == "gpu" else (5, 3, 7)
    for dim in (1, 2):
        x, mu, ls, mask, gy = _inputs(shape, dim, torch.float32, True, seed=11 + dim)
        got, want, truth = _both(x, mu, ls, mask, gy, dim, gran)
        _assert_matches(got, want, truth, torch.float32)


def test_deterministic_and_seeded():
    x, mu, ls, mask, gy = _inputs((4, 9, 5), 1, torch.float32, False, seed=5)
    args = (mask, -20.0, 0.0, 1, "element")
    g1 = K.lognormal_noise_backward(gy, x, mu, ls, *args, 99, 0)
    g2 = K.lognormal_noise_backward(gy, x, mu, ls, *args, 99, 0)
    g3 = K.lognormal_noise_backward(gy, x, mu, ls, *args, 100, 0)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert not torch.equal(g1[0], g3[0])
    # a large 64-bit seed and offset reach the high Philox counter and key words
    big = (mask, -20.0, 0.0, 1, "element", 2 ** 62 + 12345, 2 ** 40 + 3)
    torch.testing.assert_close(K.lognormal_noise(x, mu, ls, *big), ref.lognormal_noise(x, mu, ls, *big),
                               atol=1e-5, rtol=2e-4)


@pytest.mark.parametrize("gran", GRANS)
def test_extreme_parameters_finite(gran):
    """μ far outside [a, b] and σ from 1e-6 to 1e3 (tests/test_lognormal.py): finite, θ in (0, 1], as the reference."""
    mu = torch.tensor([-60.0, -60.0, 30.0, 30.0, -10.0, -10.0, -20.0, 0.0], device=DEVICE)
    ls = torch.log(torch.tensor([1e-6, 1e3, 1e-6, 1e3, 1e-6, 1e3, 1e-6, 1e-6], device=DEVICE))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=gen).to(DEVICE)
    gy = torch.ones_like(x)
    got, want, truth = _both(x, mu, ls, None, gy, 1, gran, seed=7, offset=0)
    for t in got:
        assert torch.isfinite(t).all()
    assert torch.all(got[0].abs() <= x.abs() * (1 + 1e-6))
    _assert_matches(got, want, truth, torch.float32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=2), "dim"),
    (dict(dim=-1), "dim"),
    (dict(granularity="pixel"), "granularity"),
    (dict(dim=0, granularity="sample"), "dim"),
    (dict(mu=torch.zeros(5)), "mu"),
    (dict(log_sigma=torch.zeros(3)), "log_sigma"),
    (dict(mask=torch.ones(4)), "mask"),
    (dict(a=0.0, b=-1.0), "bound"),
])
def test_bad_arguments(kwargs, match):
    args = dict(x=torch.randn(2, 4), mu=torch.zeros(4), log_sigma=torch.zeros(4), mask=None, a=-20.0, b=0.0, dim=1,
                granularity="sample", seed=0, offset=0)
    args.update(kwargs)
    args = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        K.lognormal_noise(**args)
