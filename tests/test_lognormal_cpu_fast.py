"""The vectorised CPU draw paths (csrc/cpu/vec_math.h, philox_simd.h, isa.h): the float32 quantile against scipy,
and every ISA, forced with FASTBAYES_CPU_ISA in a subprocess, against the pure-torch reference."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special as sc
import torch

_C = pytest.importorskip("fastbayes._C", reason="compiled extension fastbayes._C is not built")
ops = torch.ops.fastbayes_C

ISAS = ("base", "avx2", "avx512")


def _ndtri_inputs(logp):
    """float32 (p, tail = -log min(p, 1-p)) as the draw forms them, and the exact quantile of those float inputs."""
    logp = np.asarray(logp, dtype=np.float64)
    p = np.exp(logp).astype(np.float32)
    upper = p.astype(np.float64) > 0.5
    tail = np.where(upper, -np.log(-np.expm1(logp)), -logp).astype(np.float32)
    # exact Φ⁻¹ of what the kernel sees: p itself where it is central, else the tail probability e^-tail
    pt = np.exp(-tail.astype(np.float64))
    central = np.abs(p.astype(np.float64) - 0.5) <= 0.425
    want = np.where(central, sc.ndtri(p.astype(np.float64)), np.where(upper, -sc.ndtri(pt), sc.ndtri(pt)))
    return torch.from_numpy(p), torch.from_numpy(tail), want


def _isa_env(isa):
    env = dict(os.environ)
    env["FASTBAYES_CPU_ISA"] = isa
    return env


@pytest.mark.parametrize("isa", ISAS)
def test_ndtri_f32_against_scipy(isa):
    """PPND7 in float32 over its whole range: central, both tails, p -> 0 down to 1e-294 (tail = 676), p -> 1."""
    logp = np.concatenate([-np.logspace(-8, np.log10(676.0), 20001),            # p -> 1 through p = 1e-294
                           np.log(np.linspace(1e-6, 1 - 1e-6, 20001)),          # uniform in p
                           np.log([0.075, 0.925, 0.5, 1 - 2.0 ** -24])])         # branch edges
    p, tail, want = _ndtri_inputs(logp)
    code = ("import sys, torch, fastbayes._C; p, t = torch.load(sys.argv[1]); "
            "torch.save(torch.ops.fastbayes_C._ndtri_f32(p, t), sys.argv[2])")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.pt"), os.path.join(d, "out.pt")
        torch.save((p, tail), src)
        subprocess.run([sys.executable, "-c", code, src, dst], check=True, env=_isa_env(isa))
        got = torch.load(dst).double().numpy()
    assert np.isfinite(got).all()
    err = np.abs(got - want)
    # AS241 PPND7 is exact to 1.2e-7 relative; float32 evaluation adds a few ulp
    assert np.all(err <= 4e-7 * np.abs(want) + 2e-8), (err.max(), logp[np.argmax(err / (np.abs(want) + 1e-7))])
    assert np.all(np.sign(got) == np.sign(want)) or np.all(np.abs(got[np.sign(got) != np.sign(want)]) < 1e-7)


_SUBPROCESS = r"""
import json, sys, torch
import fastbayes as fb
from fastbayes import _C
from fastbayes.reference import lognormal as ref
from fastbayes.reference import bernoulli as bref
C = torch.ops.fastbayes_C
TOL = {torch.float32: (1e-5, 2e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3),
       torch.float64: (1e-12, 1e-9)}   # tests/test_lognormal.py's, plus float64
out = []
gen = torch.Generator().manual_seed(5)
# μ far outside [a, b] on both sides, σ from 1e-6 to 1e3, the init point, mirrored upper tails, far tail (β' < -16)
mu = torch.tensor([0.0, -60.0, -60.0, 30.0, 30.0, -10.0, -10.0, -20.0, 3.0, -19.5, -0.5, -2.0, 8.0, -100.0, 0.0, -1.0])
ls = torch.log(torch.tensor([6.7e-3, 1e-6, 1e3, 1e-6, 1e3, 1e-6, 1e3, 1e-6, 0.37, 0.05, 3.0, 1.0, 1.0, 5.0, 1e-3, 0.6]))
cases = [((37, 16), 1), ((3, 16, 5, 7), 1), ((2, 3, 16), 2), ((160, 16), 1)]
for shape, dim in cases:
    for gran in ("batch", "sample", "element"):
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for masked in (False, True):
                x = torch.randn(shape, generator=gen).to(dtype)
                g = torch.randn(shape, generator=gen).to(dtype)
                mask = (torch.arange(16) % 3 != 1) if masked else None
                args = (mu, ls, mask, -20.0, 0.0, dim, gran, 99, 1 << 33)
                y = C.lognormal_noise(x, *args)
                dx, dm, dl = C.lognormal_noise_backward(g, x, *args)
                ry = ref.lognormal_noise(x, *args)
                rdx, rdm, rdl = ref.lognormal_noise_backward(g, x, *args)
                fin = all(bool(torch.isfinite(t.float()).all()) for t in (y, dx, dm, dl))
                atol, rtol = TOL[dtype]
                def rel(a, b):   # <= 1 passes torch.testing.assert_close(a, b, atol=atol, rtol=rtol)
                    a, b = a.double(), b.double()
                    return float(((a - b).abs() / (atol + rtol * b.abs())).max())
                out.append(dict(case=[list(shape), gran, str(dtype), masked], finite=fin,
                                y=rel(y, ry), dx=rel(dx, rdx),
                                dmu=float((dm - rdm).abs().max() / max(1.0, float(rdm.abs().max()))),
                                dls=float((dl - rdl).abs().max() / max(1.0, float(rdl.abs().max())))))
    th = torch.rand(16, generator=gen)
    x = torch.randn(shape, generator=gen)
    yb = C.bernoulli_gate(x, th, None, dim, 7, 1 << 33)
    rb = bref.bernoulli_gate(x, th, None, dim, 7, 1 << 33)
    out.append(dict(case=[list(shape), "bernoulli"], equal=bool(torch.equal(yb, rb))))
print(json.dumps(out))
"""

@pytest.mark.parametrize("isa", ISAS)
def test_each_isa_matches_reference(isa):
    """Every ISA (capped by FASTBAYES_CPU_ISA, read once per process) against the reference, extreme parameters
    included; bernoulli_gate's ξ must be bit-identical (it compares raw Philox uniforms with θ)."""
    res = subprocess.run([sys.executable, "-c", _SUBPROCESS], env=_isa_env(isa), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    for r in rows:
        if r["case"][1] == "bernoulli":
            assert r["equal"], r
            continue
        assert r["finite"], r
        assert r["y"] <= 1.0 and r["dx"] <= 1.0, r
        # low-precision x rounds g·x before the sums; float32 math otherwise (see test_lognormal.py)
        gtol = 2e-2 if r["case"][2] in ("torch.bfloat16", "torch.float16") else 1e-3
        assert r["dmu"] <= gtol and r["dls"] <= gtol, r


@pytest.mark.parametrize("gran", ["batch", "sample", "element"])
def test_cached_tables_bit_identical(gran):
    """The per-thread caches (unit prologue, θ tables, ξ) return exactly what a cold call computes: a backward after
    its forward (hit) equals one after 80 calls with other parameters (evicted), and an in-place change of μ or θ
    is never served stale."""
    gen = torch.Generator().manual_seed(3)
    x, g = torch.randn(24, 40, generator=gen), torch.randn(24, 40, generator=gen)
    mu, ls = torch.randn(40, generator=gen) - 2, torch.randn(40, generator=gen) - 1.5
    args = (None, -20.0, 0.0, 1, gran, 11, 5)
    ops.lognormal_noise(x, mu, ls, *args)
    hit = ops.lognormal_noise_backward(g, x, mu, ls, *args)
    for k in range(80):
        ops.lognormal_noise(x, mu + 1e-3 * (k + 1), ls, *args)
    cold = ops.lognormal_noise_backward(g, x, mu, ls, *args)
    for a, b in zip(hit, cold):
        assert torch.equal(a, b)
    y0 = ops.lognormal_noise(x, mu, ls, *args)
    mu.add_(0.5)   # same tensor, same address, new content
    y1 = ops.lognormal_noise(x, mu, ls, *args)
    torch.testing.assert_close(y1, ref_lognormal(x, mu, ls, *args), atol=1e-5, rtol=2e-4)
    assert not torch.equal(y0, y1)
    th = torch.rand(40, generator=gen)
    from fastbayes.reference import bernoulli as bref
    ops.bernoulli_gate(x, th, None, 1, 3, 0)
    th.mul_(0.5)
    torch.testing.assert_close(ops.bernoulli_gate_backward(g, x, th, None, 1, 3, 0)[0],
                               bref.bernoulli_gate_backward(g, x, th, None, 1, 3, 0)[0], atol=0, rtol=0)


def ref_lognormal(x, mu, ls, *args):
    from fastbayes.reference import lognormal as ref
    return ref.lognormal_noise(x, mu, ls, *args)


_SAVED_SUBPROCESS = r"""
import json, torch
from fastbayes import _C
C = torch.ops.fastbayes_C
gen = torch.Generator().manual_seed(8)
mu = torch.tensor([0.0, -60.0, 30.0, -10.0, -20.0, 3.0, -19.5, -0.5, -2.0, 8.0, -100.0, -1.0])
ls = torch.log(torch.tensor([6.7e-3, 1e3, 1e-6, 1e3, 1e-6, 0.37, 0.05, 3.0, 1.0, 1.0, 5.0, 0.6]))
out = []
for shape, dim in [((37, 12), 1), ((300, 12), 1), ((3, 12, 5, 7), 1), ((2, 3, 12), 2), ((4, 12, 11000), 1)]:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for masked in (False, True):
            mask = (torch.arange(12) % 4 != 1) if masked else None
            args = (mask, -20.0, 0.0, dim, "element", 77, 1 << 20)
            x = torch.randn(shape, generator=gen).to(dtype)
            g = torch.randn(shape, generator=gen).to(dtype)
            # through the C++ autograd node (the forward leaves its draws, the backward takes them) ...
            xs, ms, lss = x.clone().requires_grad_(), mu.clone().requires_grad_(), ls.clone().requires_grad_()
            y = C.lognormal_noise(xs, ms, lss, *args)
            y.backward(g, retain_graph=True)
            saved = (y.detach(), xs.grad.clone(), ms.grad.clone(), lss.grad.clone())
            xs.grad = ms.grad = lss.grad = None
            y.backward(g)   # the tables were taken: this one draws again
            again = (xs.grad, ms.grad, lss.grad)
            # ... against the ops called directly, which draw again
            direct = (C.lognormal_noise(x, mu, ls, *args), *C.lognormal_noise_backward(g, x, mu, ls, *args))
            # x = g = 1: y is θ and dx is θ, so the forward's and the backward's draws must be the same bits
            one = torch.ones(shape, dtype=dtype)
            o = one.clone().requires_grad_()
            yo = C.lognormal_noise(o, mu, ls, *args)
            yo.backward(one)
            dxo = C.lognormal_noise_backward(one, one, mu, ls, *args)[0]
            out.append(dict(case=[list(shape), str(dtype), masked],
                            saved=all(torch.equal(a, b) for a, b in zip(saved, direct)),
                            again=all(torch.equal(a, b) for a, b in zip(again, direct[1:])),
                            theta=bool(torch.equal(yo.detach(), o.grad) and torch.equal(yo.detach(), dxo))))
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", ISAS)
def test_element_saved_draws_bit_identical(isa):
    """A differentiated per-element forward leaves its draws (θ and the two gradient factors) for its backward, which
    then streams instead of drawing again: through autograd the results equal the ops called directly (which draw
    again) bit for bit, masks, extreme parameters and a shape past the saving limit included; a second backward
    (the tables taken) equals them too; and the forward's θ is the backward's θ (x = g = 1: y = dx)."""
    res = subprocess.run([sys.executable, "-c", _SAVED_SUBPROCESS], env=_isa_env(isa), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 30
    for r in rows:
        assert r["saved"] and r["again"] and r["theta"], r


_PROLOGUE = r"""
import sys, torch
from fastbayes import _C
C = torch.ops.fastbayes_C
mu, ls = torch.load(sys.argv[1])
x = torch.ones(32, mu.numel())
args = (mu, ls, None, -20.0, 0.0, 1, "sample", 5, 123)
torch.save((C.lognormal_noise(x, *args),) + tuple(C.lognormal_noise_backward(x, x, *args)[1:]), sys.argv[2])
"""


def test_vector_prologue_matches_reference_and_scalar(tmp_path):
    """The per-unit prologue runs in float64 vectors on AVX2/AVX-512 (csrc/cpu/vec_f64.h, SLEEF's libm) and in
    scalar code on the baseline ISA: on each, θ (32 per-sample draws a unit) and its gradients agree with the
    reference over 1,003 units (a short last vector group) with μ in [-60, 30] and σ in [1e-6, 1e3]: mirrored and
    not, r underflowed or not, upper-tail and far-tail units, log Φ's continued fraction, and the init point."""
    from fastbayes.reference import lognormal as ref
    g = torch.Generator().manual_seed(17)
    mu = torch.cat([torch.empty(900).uniform_(-60, 30, generator=g), torch.linspace(-21, 1, 100), torch.zeros(3)])
    ls = torch.cat([torch.empty(900).uniform_(-13.8, 6.9, generator=g), torch.empty(100).uniform_(-6, 1, generator=g),
                    torch.full((3,), -5.0)])
    torch.save((mu, ls), tmp_path / "in.pt")
    got = {}
    for isa in ISAS:
        out = tmp_path / f"{isa}.pt"
        res = subprocess.run([sys.executable, "-c", _PROLOGUE, str(tmp_path / "in.pt"), str(out)], env=_isa_env(isa),
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        got[isa] = [t.double() for t in torch.load(out)]
    x = torch.ones(32, mu.numel())
    args = (mu, ls, None, -20.0, 0.0, 1, "sample", 5, 123)
    want = [ref.lognormal_noise(x, *args)] + list(ref.lognormal_noise_backward(x, x, *args)[1:])
    for isa, (y, dm, dl) in got.items():
        assert torch.isfinite(y).all() and torch.isfinite(dm).all() and torch.isfinite(dl).all(), isa
        torch.testing.assert_close(y, want[0].double(), atol=1e-5, rtol=2e-4, msg=lambda m: f"{isa} θ: {m}")
        for name, a, b in (("dmu", dm, want[1]), ("dls", dl, want[2])):
            # float32 sums over the samples: relative to the largest, as test_each_isa_matches_reference
            err = float((a - b.double()).abs().max()) / max(1.0, float(b.abs().max()))
            assert err <= 1e-3, (isa, name, err)
