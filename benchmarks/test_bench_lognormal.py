"""lognormal_noise forward + backward, providers side by side per (shape, granularity).

Providers: ``reference`` (eager reference through the autograd op), ``reference+compile`` (torch.compile of the
reference forward and backward functions, called as a pair), ``cpu`` (the compiled C++ op), ``triton`` / ``cuda``
(where a GPU is present), and ``copy`` (y = x.clone() forward, dx = g.clone() backward: one read+write pass each
way, the memory-bandwidth yardstick).  "batch"/"sample" move the bytes of ~1.25 copies (forward reads x and writes
y; backward reads g and x and writes dx), so cpu/copy ≈ 1.25 is the memory-bound floor; "element" draws and
inverts a truncated normal per element and is compute-bound.
"""
import pytest
import torch

import fastbayes as fb
from fastbayes.benchtools import best_seconds
from fastbayes.reference import lognormal as ref

SHAPES = [((128, 64, 32, 32), 1), ((256, 4096), 1)]
GRANS = ("batch", "sample", "element")
PROVIDERS = ["copy", "reference", "reference+compile", "cpu", "triton", "cuda"]
A, B, SEED, OFFSET = -20.0, 0.0, 1234, 0


class _Copy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.clone()


def _device(provider):
    if provider in ("cpu", "triton", "cuda"):
        avail = fb.backends.available()[provider]
        if not avail or (provider == "triton" and fb.backends.triton_mode() != "gpu"):
            pytest.skip(f"{provider} not available for timing here")
    return "cuda" if provider in ("triton", "cuda") else "cpu"


def _inputs(shape, dim, device):
    g = torch.Generator().manual_seed(0)
    c = shape[dim]
    x = torch.randn(shape, generator=g)
    mu = torch.randn(c, generator=g) * 2 - 3
    ls = torch.randn(c, generator=g) * 0.5 - 1.5
    grad = torch.randn(shape, generator=g)
    return [t.to(device) for t in (x, mu, ls, grad)]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("shape,dim", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"dim{v}")
def test_lognormal_fwd_bwd(benchmark, shape, dim, gran, provider):
    smoke = getattr(benchmark, "disabled", False)  # --benchmark-disable: run each body once as a plain test
    if smoke and provider == "reference+compile":
        pytest.skip("compiling the reference takes minutes per shape on a 2-core machine; timed runs only")
    device = _device(provider)
    x, mu, ls, grad = _inputs(shape, dim, device)
    leaves = [t.requires_grad_() for t in (x, mu, ls)]

    def clear():
        for t in leaves:
            t.grad = None

    if provider == "copy":
        def fn():
            clear()
            _Copy.apply(x).backward(grad)
    elif provider == "reference+compile":
        args = (None, A, B, dim, gran, SEED, OFFSET)
        xd, mud, lsd = x.detach(), mu.detach(), ls.detach()
        cf = torch.compile(ref.lognormal_noise)
        cb = torch.compile(ref.lognormal_noise_backward)

        def fn():
            cf(xd, mud, lsd, *args)
            cb(grad, xd, mud, lsd, *args)

        try:
            fn()  # compiles
        except Exception as e:  # inductor needs a working C++ toolchain; report rather than fail the suite
            pytest.skip(f"torch.compile of the reference failed: {type(e).__name__}: {str(e)[:200]}")
    else:
        backend = provider

        def fn():
            clear()
            # the backward must run inside use(): the backend is chosen when the op runs, not when y was made
            with fb.backends.use(backend):
                y = fb.ops.lognormal_noise(x, mu, ls, a=A, b=B, dim=dim, granularity=gran, seed=SEED, offset=OFFSET)
                y.backward(grad)

    if not smoke:
        fn()
    benchmark.group = f"lognormal_noise fwd+bwd {tuple(shape)} dim={dim} {gran}"
    benchmark.extra_info.update(provider=provider, granularity=gran, numel=x.numel(),
                                bytes_per_pass=x.numel() * x.element_size(), threads=torch.get_num_threads())
    if device == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
        benchmark.pedantic(timed, rounds=20, warmup_rounds=3)
    else:
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


# the raw CPU kernels (no autograd or dispatch layer): a (128, 150) activation (per-call overheads) and a large
# conv activation (throughput); μ = 0, log σ = -5 is the training's initial point
KERNEL_SHAPES = [((128, 150), 1), ((256, 64, 32, 32), 1)]


@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("shape,dim", KERNEL_SHAPES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"dim{v}")
def test_lognormal_cpu_kernel(benchmark, shape, dim, gran):
    """torch.ops.fastbayes_C.lognormal_noise + _backward; extra_info has ns per element of each pass."""
    if not fb.backends.available()["cpu"]:
        pytest.skip("cpu kernels not built")
    from fastbayes import _C  # noqa: F401  (registers torch.ops.fastbayes_C)
    C = torch.ops.fastbayes_C
    smoke = getattr(benchmark, "disabled", False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    c = shape[dim]
    # fresh μ each step, as in training (the kernels cache per-unit work keyed by content): more sets than they keep
    mus = [torch.full((c,), 1e-6 * k) for k in range(101)]
    ls = torch.full((c,), -5.0)
    grad = torch.randn(shape, generator=g)
    step = [0]
    rest = (None, A, B, dim, gran, SEED, OFFSET)

    def fwd():
        step[0] = (step[0] + 1) % len(mus)
        return C.lognormal_noise(x, mus[step[0]], ls, *rest)

    def bwd():   # the backward of the last forward
        return C.lognormal_noise_backward(grad, x, mus[step[0]], ls, *rest)

    def fn():
        fwd()
        bwd()

    n = x.numel()
    benchmark.group = f"lognormal_noise CPU kernel {tuple(shape)} {gran}"
    info = dict(provider="cpu-kernel", granularity=gran, numel=n, threads=torch.get_num_threads())
    if not smoke:
        reps = max(1, int(2e6 // n))
        t_fwd, t_pair = best_seconds(fwd, reps), best_seconds(fn, reps)
        info.update(fwd_ns_per_element=t_fwd / n * 1e9, bwd_ns_per_element=(t_pair - t_fwd) / n * 1e9)
    benchmark.extra_info.update(info)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
