"""The op registry: each backend registers its implementations where they are defined; dispatch resolves from it."""
import json
import subprocess
import sys

import pytest
import torch

import fastbayes as fb
from fastbayes import backends
from fastbayes.cli import info


def test_every_op_has_a_reference_implementation():
    ref = set(backends.ops_of("reference"))
    assert {"lognormal_noise", "lognormal_noise_backward", "gate_stats", "gate_stats_backward", "bernoulli_gate",
            "bernoulli_gate_backward", "scale_mixture_prior", "scale_mixture_prior_backward", "svgd_kernel_matrix",
            "svgd_apply"} <= ref
    for name in ("cpu", "triton", "cuda"):
        missing = set(backends.ops_of(name)) - ref
        assert not missing, f"{name} implements ops without a reference: {missing}"


def test_registry_holds_no_hand_kept_table():
    import fastbayes.ops._dispatch as d
    assert not hasattr(d, "_REFERENCE_MODULE")


def test_register_refuses_compiled_backends():
    with pytest.raises(ValueError, match="TORCH_LIBRARY_IMPL"):
        backends.register("cpu")


def test_resolve_follows_use_and_automatic_choice():
    dev = torch.device("cpu")
    with backends.use("reference"):
        name, fn = backends.resolve("lognormal_noise", dev)
    assert name == "reference" and fn is backends.ops_of("reference")["lognormal_noise"]
    assert backends.resolve("lognormal_noise", dev)[0] == backends.default("cpu")


def test_info_reports_each_backends_ops():
    d = info()
    assert set(d["ops"]) == set(backends.NAMES)
    for name, ops in d["ops"].items():
        assert ops == sorted(backends.ops_of(name))
    assert "lognormal_noise" in d["ops"]["reference"]
    out = subprocess.run([sys.executable, "-m", "fastbayes.cli", "info", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ops"]["reference"] == d["ops"]["reference"]


@pytest.mark.parametrize("op,kwargs", [("lognormal", {"granularity": "sample"}), ("lognormal", {"granularity": "element"}),
                                       ("bernoulli", {})])
def test_eager_fast_path_matches_custom_op_path(op, kwargs):
    """The eager autograd.Function and the torch.library custom op (what torch.compile traces) agree bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, 3, requires_grad=True)
    if op == "lognormal":
        p = (torch.randn(5).mul(0.5).requires_grad_(), torch.full((5,), -1.0, requires_grad=True))
        fast = lambda: fb.ops.lognormal_noise(x, *p, seed=11, offset=3, **kwargs)  # noqa: E731
        slow = lambda: torch.ops.fastbayes.lognormal_noise(x, *p, None, -20.0, 0.0, 1, kwargs["granularity"],  # noqa: E731
                                                           torch.tensor(11), 3)
    else:
        p = (torch.rand(5).requires_grad_(),)
        fast = lambda: fb.ops.bernoulli_gate(x, *p, seed=11, offset=3)  # noqa: E731
        slow = lambda: torch.ops.fastbayes.bernoulli_gate(x, *p, None, 1, torch.tensor(11), 3)  # noqa: E731
    g = torch.randn(6, 5, 3)
    outs = []
    for fn in (fast, slow):
        y = fn()
        grads = torch.autograd.grad(y, (x, *p), g)
        outs.append((y.detach(), *grads))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
