"""bernoulli_gate forward + backward, providers side by side per shape; and the fused scale-mixture prior.

Providers: ``reference`` (eager reference through the autograd op), ``reference+compile`` (torch.compile of the
reference forward and backward functions, called as a pair), ``cpu`` (the compiled C++ op), ``triton`` / ``cuda``
(where a GPU is present), and ``copy`` (y = x.clone() forward, dx = g.clone() backward: one read+write pass each
way, the memory-bandwidth yardstick).  The gate moves the bytes of ~1.25 copies (forward reads x and writes y;
backward reads g and x and writes dx) plus N·C Philox draws per pass, so cpu/copy ≈ 1.25 is the memory-bound floor.
"""
import pytest
import torch

import fastbayes as fb
from fastbayes.benchtools import best_seconds
from fastbayes.ops.bernoulli import bernoulli_gate, scale_mixture_prior
from fastbayes.reference import bernoulli as ref

SHAPES = [((128, 64, 32, 32), 1), ((256, 4096), 1)]
PROVIDERS = ["copy", "reference", "reference+compile", "cpu", "triton", "cuda"]
SEED, OFFSET = 1234, 0


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
        from fastbayes.ops._dispatch import has_op
        if not has_op("bernoulli_gate", provider):
            pytest.skip(f"{provider} does not implement bernoulli_gate in this build")
    if provider in ("reference", "reference+compile", "copy") and torch.cuda.is_available():
        return "cuda"
    return "cuda" if provider in ("triton", "cuda") else "cpu"


def _timed(benchmark, fn, device):
    fn()
    if device == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
        benchmark.pedantic(timed, rounds=20, warmup_rounds=3)
    else:
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape,dim", SHAPES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"dim{v}")
def test_bernoulli_gate_fwd_bwd(benchmark, shape, dim, provider):
    device = _device(provider)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device).requires_grad_()
    theta = torch.rand(shape[dim], generator=g).to(device).requires_grad_()
    grad = torch.randn(shape, generator=g).to(device)

    def clear():
        x.grad = theta.grad = None

    if provider == "copy":
        def fn():
            clear()
            _Copy.apply(x).backward(grad)
    elif provider == "reference+compile":
        xd, td = x.detach(), theta.detach()
        cf = torch.compile(ref.bernoulli_gate)
        cb = torch.compile(ref.bernoulli_gate_backward)

        def fn():
            cf(xd, td, None, dim, SEED, OFFSET)
            cb(grad, xd, td, None, dim, SEED, OFFSET)

        try:
            fn()
        except Exception as e:  # inductor needs a working C++ toolchain; report rather than fail the suite
            pytest.skip(f"torch.compile of the reference failed: {type(e).__name__}: {str(e)[:200]}")
    else:
        backend = provider

        def fn():
            clear()
            # the backward must run inside use(): the backend is chosen when the op runs, not when y was made
            with fb.backends.use(backend):
                bernoulli_gate(x, theta, dim=dim, seed=SEED, offset=OFFSET).backward(grad)

    benchmark.group = f"bernoulli_gate fwd+bwd {tuple(shape)} dim={dim}"
    benchmark.extra_info.update(provider=provider, numel=x.numel(), bytes_per_pass=x.numel() * x.element_size(),
                                threads=torch.get_num_threads(), device=device)
    _timed(benchmark, fn, device)


@pytest.mark.parametrize("provider", ["reference", "reference+compile", "cpu", "triton", "cuda"])
def test_scale_mixture_prior_fwd_bwd(benchmark, provider):
    """The prior of ~26,560 units (ResNet-50's conv widths) in one fused launch, forward + backward."""
    device = _device(provider)
    n = 26560
    g = torch.Generator().manual_seed(0)
    th = torch.rand(n, generator=g).to(device).requires_grad_()
    sq = (torch.rand(n, generator=g) * 4).to(device).requires_grad_()
    k = torch.randint(27, 4608, (n,), generator=g).float().to(device)
    lv1 = (torch.randn(n, generator=g) - 6).to(device)
    lv0 = lv1 + 2 * torch.log(torch.tensor(1e-2)).to(device)

    if provider == "reference+compile":
        def _ref(a, b):
            return ref.scale_mixture_prior(a, b, k, lv0, lv1).sum()
        cf = torch.compile(_ref)

        def fn():
            th.grad = sq.grad = None
            cf(th, sq).backward()
        try:
            fn()
        except Exception as e:
            pytest.skip(f"torch.compile of the reference failed: {type(e).__name__}: {str(e)[:200]}")
    else:
        def fn():
            th.grad = sq.grad = None
            with fb.backends.use(provider):
                scale_mixture_prior(th, sq, k, lv0, lv1).sum().backward()

    benchmark.group = f"scale_mixture_prior fwd+bwd, {n} units"
    benchmark.extra_info.update(provider=provider, device=device)
    _timed(benchmark, fn, device)


@pytest.mark.parametrize("shape,dim", [((128, 150), 1), ((256, 64, 32, 32), 1)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else f"dim{v}")
def test_bernoulli_gate_cpu_kernel(benchmark, shape, dim):
    """torch.ops.fastbayes_C.bernoulli_gate + _backward (no autograd layer); extra_info has ns per element."""
    if not fb.backends.available()["cpu"]:
        pytest.skip("cpu kernels not built")
    from fastbayes import _C  # noqa: F401  (registers torch.ops.fastbayes_C)
    C = torch.ops.fastbayes_C
    smoke = getattr(benchmark, "disabled", False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    # fresh θ each step, as in training (the kernel caches ξ keyed by content): more sets than it keeps
    thetas = [torch.rand(shape[dim], generator=g) for _ in range(101)]
    grad = torch.randn(shape, generator=g)
    step = [0]

    def fwd():
        step[0] = (step[0] + 1) % len(thetas)
        return C.bernoulli_gate(x, thetas[step[0]], None, dim, SEED, OFFSET)

    def bwd():   # the backward of the last forward
        return C.bernoulli_gate_backward(grad, x, thetas[step[0]], None, dim, SEED, OFFSET)

    def fn():
        fwd()
        bwd()

    n = x.numel()
    benchmark.group = f"bernoulli_gate CPU kernel {tuple(shape)}"
    info = dict(provider="cpu-kernel", numel=n, threads=torch.get_num_threads())
    if not smoke:
        reps = max(1, int(2e6 // n))
        t_fwd, t_pair = best_seconds(fwd, reps), best_seconds(fn, reps)
        info.update(fwd_ns_per_element=t_fwd / n * 1e9, bwd_ns_per_element=(t_pair - t_fwd) / n * 1e9)
    benchmark.extra_info.update(info)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
