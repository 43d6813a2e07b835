"""GPU check benchmarks (run by tools/gpu_check.sh, rendered by tools/gpu_report.py).

* ``test_copy_bandwidth``: device-to-device ``dst.copy_(src)`` of 1 GiB, bytes read + written over time: the
  memory-bandwidth ceiling every memory-bound op is set against.
* ``test_op``: ``lognormal_noise`` (batch / sample / element), ``bernoulli_gate`` and ``gate_stats``, forward and
  forward+backward, per provider: the eager reference (``use("reference")``) and the kernel backends
  (``cuda``, ``triton``; ``cpu`` and the Triton interpreter in the dry run).  extra_info holds the time per call,
  the bytes the op must move at least (each input read once, each output written once), the achieved GB/s and its
  fraction of the copy bandwidth measured in the same session.
* ``test_op_compiled``: ``torch.compile`` of the reference forward+backward pair, a few cases (each compiles for
  seconds to minutes), so it runs last and alone in the check.
* ``test_train_step``: one optimiser step of LeNet5 (Caffe, SBP's), BMRS's Lenet5 and torchvision's ResNet-50
  at batch 32 (224x224 for ResNet-50), plain and gated; gates as in BMRS Table 3 (ResNet-50: one after every
  BatchNorm, downsample BNs included; Lenet5: on every conv/fc output but the classifier).  gated/plain is the
  number to set against BMRS's 6.9x (ResNet-50) and 4.9x (Lenet5, MNIST) from its Tables 3-4 (arXiv 2406.01345).

Without CUDA the module skips, unless ``FASTBAYES_GPU_CHECK_DRY=1`` (tools/gpu_check.sh --dry-run): then the same
cases run on the CPU at tiny sizes, Triton through its interpreter, to rehearse the check.  With
``FASTBAYES_GPU_CHECK_RECORDS=<file>`` every finished benchmark is also appended to that file as one JSON line, so
a run stopped by its time budget keeps what it measured (pytest-benchmark writes its JSON only at the end).
"""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes.apps.models import LeNet5, LeNet5BMRS
from fastbayes.reference import bernoulli as ref_bern
from fastbayes.reference import gate_stats as ref_gs
from fastbayes.reference import lognormal as ref_ln

DRY = os.environ.get("FASTBAYES_GPU_CHECK_DRY", "0") == "1"
RECORDS = os.environ.get("FASTBAYES_GPU_CHECK_RECORDS")

if not DRY and not torch.cuda.is_available():
    pytest.skip("GPU check benchmarks need CUDA (FASTBAYES_GPU_CHECK_DRY=1 rehearses them on the CPU)",
                allow_module_level=True)

DEVICE = "cpu" if DRY else "cuda"
KERNELS = ("cpu", "triton") if DRY else ("cuda", "triton")
A, B, SEED = -20.0, 0.0, 1234
F32, BF16 = torch.float32, torch.bfloat16

# (activation shape, unit dim); "large" is a ResNet-50 stage-1 activation at batch 256 (822 MB in fp32, far past
# the 60 MB L2), "small" one MLP layer at batch 128 (launch-bound)
ACT = {"large": ((4, 8, 6, 6), 1) if DRY else ((256, 256, 56, 56), 1),
       "small": ((8, 16), 1) if DRY else ((128, 150), 1)}
# gate_stats: every unit of a model in one call; 26560 = ResNet-50's BatchNorm channels, 2**24 for bandwidth
UNITS = {"large": 64 if DRY else 2 ** 24, "small": 16 if DRY else 26560}
COPY_NUMEL = 2 ** 12 if DRY else 2 ** 28


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _record(request, benchmark, per_call_s, extra):
    """extra_info + one JSON line per benchmark; returns nothing (records only, no timing assertions)."""
    if getattr(benchmark, "disabled", False):
        return
    extra = dict(extra, median_s=per_call_s, device=DEVICE, dry_run=DRY,
                 device_name=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu")
    benchmark.extra_info.update(extra)
    if RECORDS:
        st = benchmark.stats.stats
        rec = {"name": request.node.name, "group": benchmark.group, "extra_info": benchmark.extra_info,
               "stats": {k: getattr(st, k) for k in ("min", "max", "mean", "median", "stddev", "rounds")}}
        with open(RECORDS, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def _time(benchmark, fn, calls: int, rounds: int, warmup: int) -> float:
    """Median seconds per call: each round runs ``calls`` calls back to back, then synchronises once (a training
    step queues its launches the same way, so launch-bound ops are timed by their throughput)."""
    def body():
        for _ in range(calls):
            fn()
        _sync()

    benchmark.pedantic(body, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if getattr(benchmark, "disabled", False):
        return float("nan")
    return benchmark.stats.stats.median / calls


# --------------------------------------------------------------------------------------------------------------
# copy bandwidth

def _copy_pair():
    src = torch.rand(COPY_NUMEL, device=DEVICE)  # random data, not zeros (METHOD.md)
    return src, torch.empty_like(src)


@pytest.fixture(scope="session")
def copy_gbps():
    """The session's copy bandwidth (median of 10 copies), for the fraction in every op's extra_info."""
    src, dst = _copy_pair()
    times = []
    for i in range(13):
        if DEVICE == "cuda":
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            dst.copy_(src)
            t1.record()
            t1.synchronize()
            dt = t0.elapsed_time(t1) / 1e3
        else:
            import time
            s = time.perf_counter()
            dst.copy_(src)
            dt = time.perf_counter() - s
        if i >= 3:
            times.append(dt)
    del src, dst
    return 2 * COPY_NUMEL * 4 / sorted(times)[len(times) // 2] / 1e9


def test_copy_bandwidth(benchmark, request):
    src, dst = _copy_pair()
    benchmark.group = "device copy"
    per_call = _time(benchmark, lambda: dst.copy_(src), calls=5, rounds=20 if not DRY else 3, warmup=2)
    torch.testing.assert_close(dst, src, rtol=0, atol=0)
    nbytes = 2 * src.numel() * src.element_size()
    _record(request, benchmark, per_call, dict(kind="copy", provider="copy", bytes=nbytes,
                                               gbps=nbytes / per_call / 1e9))


# --------------------------------------------------------------------------------------------------------------
# ops

def _op_cases():
    for size in ("large", "small"):
        for dtype in ((F32, BF16) if size == "large" else (F32,)):
            for gran in ref_ln.GRANULARITIES:
                yield "lognormal_noise", size, dtype, gran
            yield "bernoulli_gate", size, dtype, None
        yield "gate_stats", size, F32, None


def _case_id(case):
    op, size, dtype, gran = case
    return "-".join(s for s in (op, size, str(dtype).replace("torch.", ""), gran) if s)


OP_CASES = list(_op_cases())
# torch.compile cases, most wanted first (each compile costs seconds to minutes; the check gives them a budget)
COMPILE_CASES = [("lognormal_noise", "large", F32, "sample"), ("lognormal_noise", "large", F32, "element"),
                 ("bernoulli_gate", "large", F32, None), ("gate_stats", "small", F32, None),
                 ("lognormal_noise", "large", F32, "batch"), ("gate_stats", "large", F32, None),
                 ("lognormal_noise", "small", F32, "sample")]


class _Case:
    """Inputs, the op through fastbayes.ops, the reference fwd/bwd pair, and the bytes each must move."""

    def __init__(self, op, size, dtype, gran):
        self.op, self.gran = op, gran
        # drawn on the device: 2 x 205M normals take seconds on the host
        g = torch.Generator(DEVICE).manual_seed(0)

        def randn(*shape):
            return torch.randn(shape, generator=g, device=DEVICE)

        if op == "gate_stats":
            n = UNITS[size]
            self.shape, self.dim = (n,), 0
            self.mu, self.ls = (randn(n) * 4 - 8).to(dtype), (randn(n) * 0.5 - 1.0).to(dtype)
            self.grad = randn(n).to(dtype)
            es = self.mu.element_size()
            # fwd reads mu, log σ and writes kl, E[θ], SNR; bwd reads grad_kl, mu, log σ and writes two grads
            self.bytes_fwd, self.bytes_fwdbwd = 5 * n * es, 10 * n * es
            self.leaves = [self.mu, self.ls]
            return
        shape, dim = ACT[size]
        self.shape, self.dim = shape, dim
        c = shape[dim]
        self.x, self.grad = randn(*shape).to(dtype), randn(*shape).to(dtype)
        if op == "lognormal_noise":
            self.mu, self.ls = randn(c) * 2 - 3, randn(c) * 0.5 - 1.5
            self.leaves = [self.x, self.mu, self.ls]
        else:
            self.theta = torch.rand(c, generator=g, device=DEVICE).clamp(0.05, 0.95)
            self.leaves = [self.x, self.theta]
        n, es = self.x.numel(), self.x.element_size()
        # fwd reads x, writes y; bwd reads grad and x, writes dx (the per-unit vectors are negligible)
        self.bytes_fwd, self.bytes_fwdbwd = 2 * n * es, 5 * n * es

    def call(self):
        if self.op == "lognormal_noise":
            return fb.ops.lognormal_noise(self.x, self.mu, self.ls, a=A, b=B, dim=self.dim, granularity=self.gran,
                                          seed=SEED)
        if self.op == "bernoulli_gate":
            return fb.ops.bernoulli_gate(self.x, self.theta, dim=self.dim, seed=SEED)
        return fb.ops.gate_stats(self.mu, self.ls, a=A, b=B)[0]

    def ref_pair(self):
        """The reference forward and backward as one function of tensors (what torch.compile gets)."""
        if self.op == "lognormal_noise":
            dim, gran = self.dim, self.gran

            def pair(x, mu, ls, g):
                y = ref_ln.lognormal_noise(x, mu, ls, None, A, B, dim, gran, SEED, 0)
                return y, ref_ln.lognormal_noise_backward(g, x, mu, ls, None, A, B, dim, gran, SEED, 0)
            return pair, (self.x, self.mu, self.ls, self.grad)
        if self.op == "bernoulli_gate":
            dim = self.dim

            def pair(x, theta, g):
                y = ref_bern.bernoulli_gate(x, theta, None, dim, SEED, 0)
                return y, ref_bern.bernoulli_gate_backward(g, x, theta, None, dim, SEED, 0)
            return pair, (self.x, self.theta, self.grad)

        def pair(mu, ls, g):
            out = ref_gs.gate_stats(mu, ls, A, B)
            return out, ref_gs.gate_stats_backward(g, mu, ls, A, B)
        return pair, (self.mu, self.ls, self.grad)


def _calls_rounds(size, provider):
    if DRY:
        return 1, 2
    if size == "small":
        return 20, 20
    return 1, (5 if provider.startswith("reference") else 15)


def _op_extra(case, mode, provider, per_call, copy_gbps, size, dtype):
    nbytes = case.bytes_fwdbwd if mode == "fwd+bwd" else case.bytes_fwd
    gbps = nbytes / per_call / 1e9 if per_call > 0 else float("nan")
    return dict(kind="op", op=case.op, size=size, shape=list(case.shape), dtype=str(dtype).replace("torch.", ""),
                granularity=case.gran, mode=mode, provider=provider, bytes=nbytes, gbps=gbps,
                copy_gbps=copy_gbps, frac_of_copy=gbps / copy_gbps)


def _free():
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


_CACHE: dict = {}


def _cached_case(case) -> _Case:
    """One case's inputs shared by its providers and modes (pytest runs them back to back): the previous case
    is dropped first, so at most one large case is on the device."""
    if case not in _CACHE:
        _CACHE.clear()
        _free()
        _CACHE[case] = _Case(*case)
    c = _CACHE[case]
    for t in c.leaves:
        t.requires_grad_(False)
        t.grad = None
    return c


@pytest.mark.parametrize("provider", ("reference",) + KERNELS)
@pytest.mark.parametrize("mode", ("fwd", "fwd+bwd"))
@pytest.mark.parametrize("case", OP_CASES, ids=_case_id)
def test_op(benchmark, request, copy_gbps, case, mode, provider):
    if not fb.backends.available()[provider]:
        pytest.skip(f"{provider}: {fb.backends.why_not()[provider]}")
    op, size, dtype, gran = case
    c = _cached_case(case)
    if mode == "fwd+bwd":
        for t in c.leaves:
            t.requires_grad_()

        def fn():
            for t in c.leaves:
                t.grad = None
            with fb.backends.use(provider):   # inside: the backward picks its backend when it runs
                c.call().backward(c.grad)
    else:
        def fn():
            with torch.no_grad(), fb.backends.use(provider):
                c.call()

    fn()  # compile / load outside the timing; a failing backend fails here, before the timing
    with torch.no_grad(), fb.backends.use(provider):
        out = c.call()
    assert torch.isfinite(out.float()).all(), f"{provider} {op} gave non-finite outputs"
    del out
    benchmark.group = f"{op} {mode} {tuple(c.shape)} {str(dtype)[6:]}" + (f" {gran}" if gran else "")
    calls, rounds = _calls_rounds(size, provider)
    per_call = _time(benchmark, fn, calls, rounds, warmup=1 if DRY else 2)
    _record(request, benchmark, per_call, _op_extra(c, mode, provider, per_call, copy_gbps, size, dtype))


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out if o is not None for t in _flat(o)]


@pytest.mark.parametrize("case", COMPILE_CASES[:1] if DRY else COMPILE_CASES, ids=_case_id)
def test_op_compiled(benchmark, request, copy_gbps, case):
    """torch.compile of the reference forward+backward pair (one graph per case, compiled before the timing)."""
    op, size, dtype, gran = case
    _CACHE.clear()
    c = _Case(*case)
    pair, args = c.ref_pair()
    torch._dynamo.reset()   # a fresh cache per case: no recompile limit reached, no silent eager fallback
    cf = torch.compile(pair, dynamic=False)
    with torch.no_grad():
        got = [t for t in _flat(cf(*args))]
        want = [t for t in _flat(pair(*args))]
    # norm-wise relative error per output (fusion reorders sums; an element-wise check trips on cancellations)
    errs = [float((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-300)) for g, w in zip(got, want)]
    assert len(got) == len(want) and max(errs) < 1e-3, f"torch.compile differs from eager: {errs}"
    del got, want

    def fn():
        with torch.no_grad():
            cf(*args)

    benchmark.group = f"{op} fwd+bwd {tuple(c.shape)} {str(dtype)[6:]}" + (f" {gran}" if gran else "")
    calls, rounds = _calls_rounds(size, "reference+compile")
    per_call = _time(benchmark, fn, calls, rounds, warmup=1 if DRY else 2)
    _record(request, benchmark, per_call,
            dict(_op_extra(c, "fwd+bwd", "reference+compile", per_call, copy_gbps, size, dtype),
                 max_rel_err_vs_eager=max(errs)))
    del c, cf
    _free()


# --------------------------------------------------------------------------------------------------------------
# training step, plain and gated

def _resnet50():
    from fastbayes._compat import import_torchvision
    return import_torchvision().models.resnet50(num_classes=1000)


# name: (constructor, input shape, classes, training-set size for the KL scale)
MODELS = {
    "lenet5": (LeNet5, (4 if DRY else 32, 1, 28, 28), 10, 60000),
    "lenet5-bmrs": (LeNet5BMRS, (4 if DRY else 32, 1, 32, 32), 10, 60000),
    "resnet50": (_resnet50, (2, 3, 32, 32) if DRY else (32, 3, 224, 224), 1000, 50000),
}
BMRS_RATIO = {"lenet5": 11.39 / 2.31, "lenet5-bmrs": 11.39 / 2.31, "resnet50": 329.84 / 47.78}


def _train_cases():
    for model in MODELS:
        yield model, "plain", None
        for gran in ("element", "sample"):   # element: BMRS's code; sample: one θ per example and unit
            for backend in ("reference",) + KERNELS:
                if gran == "sample" and backend == "reference":
                    continue
                yield model, backend, gran


@pytest.mark.parametrize("model_name,provider,gran", list(_train_cases()),
                         ids=lambda v: str(v) if v is not None else "none")
def test_train_step(benchmark, request, model_name, provider, gran):
    gated = provider != "plain"
    if gated and not fb.backends.available()[provider]:
        pytest.skip(f"{provider}: {fb.backends.why_not()[provider]}")
    if DRY and model_name == "resnet50" and provider == "triton":
        pytest.skip("the Triton interpreter takes minutes per ResNet-50 step; the Lenet5 cases rehearse it")
    torch.manual_seed(0)
    _CACHE.clear()
    _free()
    ctor, shape, classes, n_train = MODELS[model_name]
    model = ctor().to(DEVICE).train()
    n_gates = 0
    if gated:
        # placement="bn": a gate on the BatchNorm after each conv (BMRS's ResNet-50 recipe, downsample BNs
        # included); models without BatchNorm keep the gate on the conv/fc output
        gates = fb.add_gates(model, placement="bn", granularity=gran)
        n_gates = len(gates)
        if model_name == "resnet50":
            n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
            assert n_gates == n_bn == 53, (n_gates, n_bn)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(DEVICE)
    y = torch.randint(0, classes, (shape[0],), generator=g).to(DEVICE)

    def step():
        loss = F.cross_entropy(model(x), y)
        if gated:
            loss = loss + fb.kl_loss(model) / n_train
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def fn():
        if gated:
            with fb.backends.use(provider):
                return step()
        return step()

    loss = fn()
    _sync()
    assert math.isfinite(float(loss)), f"{model_name} {provider} {gran}: loss {float(loss)}"
    benchmark.group = f"train step {model_name} batch {shape[0]} {'x'.join(map(str, shape[2:]))}"
    if DRY:   # the Triton interpreter takes seconds per ResNet-50 step even at 32x32
        calls, rounds = 1, 1
    elif model_name == "resnet50":
        calls, rounds = 1, (5 if provider == "reference" else 10)
    else:
        calls, rounds = 10, 20
    per_call = _time(benchmark, fn, calls, rounds, warmup=0 if DRY else 2)
    _record(request, benchmark, per_call, dict(kind="train", model=model_name, batch=shape[0],
                                               input=list(shape[1:]), provider=provider, granularity=gran,
                                               gates=n_gates, bmrs_ratio=BMRS_RATIO[model_name],
                                               cudnn_tf32=bool(torch.backends.cudnn.allow_tf32)))
    del model, opt
    _free()
