import os

import torch

# Triton decides between compiler and interpreter when @triton.jit decorates, so this must precede any kernel import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastbayes as fb  # noqa: E402

KERNEL_BACKENDS = ("cpu", "triton", "cuda")
# CI sets FASTBAYES_REQUIRE_BACKENDS=cpu,triton so that a backend which failed to build fails the run instead of skipping.
REQUIRED = {b for b in os.environ.get("FASTBAYES_REQUIRE_BACKENDS", "").split(",") if b}


def backend_device(name: str) -> str:
    if name == "cuda" or (name == "triton" and fb.backends.triton_mode() == "gpu"):
        return "cuda"
    return "cpu"


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """(backend name, device) for every compiled/Triton backend; skips unavailable ones unless required."""
    name = request.param
    if not fb.backends.available()[name]:
        why = fb.backends.why_not()[name]
        if name in REQUIRED:
            pytest.fail(f"required backend {name} unavailable: {why}")
        pytest.skip(f"{name}: {why}")
    return name, backend_device(name)
