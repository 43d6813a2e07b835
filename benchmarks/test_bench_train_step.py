"""Headline: training-step overhead of gates — the same model and batch with and without gates, interleaved in one run.

For each (model, granularity) one test builds three copies of the model from the same seed and times their training
steps round-robin (plain, fastbayes, plain, fastbayes, ...), so that the machine's drift hits every provider alike:

* ``plain``: the model without gates (the baseline every ratio divides by);
* ``fastbayes``: ``fb.add_gates(model, granularity=...)`` and the loss ``CE + fb.kl_loss(model, reduction)``;
* ``floor`` ("batch", BMRS configs): the cheapest gate eager PyTorch expresses with the same structure, for scale:
  fastbayes' own sites and hooks with each gate swapped for ``y = x·(μ·s)`` (two parameters per unit, as a
  log-normal gate has) and a two-op penalty per gate — what the per-tensor Adam, the hooks and autograd charge any
  two-parameter gate before it draws anything;
* ``packed`` ("batch", BMRS configs, compiled backend): fastbayes' own training op and KL node with each gate's μ
  and log σ as the two rows of one [2, C] parameter: what one optimiser tensor per gate instead of two would buy
  (DESIGN.md's gates hold ``mu`` and ``log_sigma`` as separate Parameters, so this is a measurement, not an option);
* ``peer`` ("element" only): a plain-PyTorch per-element noise layer written like the papers' layers (BMRS's
  ``util.reparameterize`` and per-layer mean KL: one uniform per element, clamp γ into [1e-5, 1 - 1e-5], Φ⁻¹ by
  ``erfinv``, KL from ``ndtr``), placed where BMRS places it (after the activation).

The BMRS configurations are the paper's own: its Fashion-MNIST MLP 1024-150-150-10 (tanh) at batch 128 and its
Lenet5 (6-16-120-84, 32×32 input) at batch 32, with BMRS's KL weighting (``reduction="mean"``).  fastbayes gates
sit on the layer outputs (before tanh/ReLU); placed after the activation they would cost the same.  LeNet5-Caffe
(batch 128) and a CIFAR ResNet-18 (batch 64) use the ELBO weighting (``reduction="sum"`` / N).

Medians and ratios go into ``extra_info`` (``interleaved_ms``, ``ratio_vs_plain``); pytest-benchmark's own timing
is of the fastbayes step.  Goal: fastbayes/plain <= 1.10 for every granularity.  Timed assertions stay out.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbayes as fb
from fastbayes._compat import import_torchvision
from fastbayes.benchtools import interleaved
from fastbayes.apps.models import LeNet5BMRS
from fastbayes.nn.sites import GATE_ATTR
from fastbayes.reference.gate_stats import LOG_SIGMA_MAX, LOG_SIGMA_MIN
from models import LeNet5

A, B = -20.0, 0.0


class PeerNoise(nn.Module):
    """BMRS's noise layer in plain PyTorch (modules/layers.py + util.reparameterize): θ per element, y = x·θ·mask."""

    def __init__(self, units: int, dim: int = 1):
        super().__init__()
        self.dim = dim
        self.mu = nn.Parameter(torch.zeros(units))
        self.log_sigma = nn.Parameter(torch.full((units,), -5.0))
        self.register_buffer("mask", torch.ones(units))

    def _view(self, t, x):
        shape = [1] * x.dim()
        shape[self.dim] = -1
        return t.reshape(shape)

    def forward(self, x):
        mu, sigma = self._view(self.mu, x), self._view(self.log_sigma.clamp(-20, 5).exp(), x)
        alpha, beta = (A - mu) / sigma, (B - mu) / sigma
        pa, pb = torch.special.ndtr(alpha), torch.special.ndtr(beta)
        gamma = (pa + torch.rand_like(x) * (pb - pa)).clamp(1e-5, 1 - 1e-5)
        z = mu + sigma * math.sqrt(2.0) * torch.erfinv(2.0 * gamma - 1.0)
        return x * z.clamp(A, B).exp() * self._view(self.mask, x)

    def kl(self):
        sigma = self.log_sigma.clamp(-20, 5).exp()
        alpha, beta = (A - self.mu) / sigma, (B - self.mu) / sigma
        z = torch.special.ndtr(beta) - torch.special.ndtr(alpha)
        pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
        entropy = torch.log(math.sqrt(2 * math.pi * math.e) * sigma * z) + (alpha * pdf(alpha) - beta * pdf(beta)) / (2 * z)
        return (math.log(B - A) - entropy).mean()      # BMRS: mean over the layer's units


class FloorGate(nn.Module):
    """The ``floor`` provider's gate: y = x·(μ·s) over dim 1, two parameters per unit and no noise."""

    def __init__(self, units: int):
        super().__init__()
        self.mu = nn.Parameter(torch.ones(units))
        self.log_sigma = nn.Parameter(torch.ones(units))

    def forward(self, x):
        v = self.mu * self.log_sigma
        return x * (v.view(-1, 1, 1) if x.dim() == 4 else v)

    def kl(self):
        return (self.mu * self.log_sigma).mean()


class PackedGate(nn.Module):
    """The ``packed`` provider's gate: ``fastbayes_C::lognormal_gate`` on the rows of one [2, C] parameter."""

    def __init__(self, gate):
        super().__init__()
        self.theta = nn.Parameter(torch.stack([gate.mu.detach(), gate.log_sigma.detach()]))
        self.register_buffer("mask", gate.mask.clone())
        self.granularity, self.dim = gate.granularity, gate.dim

    def forward(self, x):
        mu, log_sigma = self.theta.unbind(0)
        return torch.ops.fastbayes_C.lognormal_gate(x, mu, log_sigma, self.mask, A, B, self.dim % x.dim(),
                                                    self.granularity, -1, 0, LOG_SIGMA_MIN, LOG_SIGMA_MAX)

    @staticmethod
    def kl_mean(gates, weights):
        """BMRS's mean KL over all the gates in one ``fastbayes_C::kl_loss`` node, as ``fb.kl_loss(m, "mean")``."""
        rows = [g.theta.unbind(0) for g in gates]
        return torch.ops.fastbayes_C.kl_loss([r[0] for r in rows], [r[1] for r in rows], weights, A, B,
                                             LOG_SIGMA_MIN, LOG_SIGMA_MAX)


class BMRSMLP(nn.Module):
    """BMRS's Fashion-MNIST "1 × 150" MLP: 1024-150-150-10, tanh, noise after each hidden activation."""

    def __init__(self, noise=False):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 150), nn.Linear(150, 150), nn.Linear(150, 10)
        self.n1, self.n2 = (PeerNoise(150), PeerNoise(150)) if noise else (nn.Identity(), nn.Identity())

    def forward(self, x):
        x = self.n1(torch.tanh(self.fc1(x.flatten(1))))
        return self.fc3(self.n2(torch.tanh(self.fc2(x))))


class PeerLeNet5BMRS(LeNet5BMRS):
    """BMRS's Lenet5 with its noise after each ReLU."""

    def __init__(self):
        super().__init__()
        self.n1, self.n2, self.n3, self.n4 = PeerNoise(6), PeerNoise(16), PeerNoise(120), PeerNoise(84)

    def forward(self, x):
        x = F.max_pool2d(self.n1(F.relu(self.conv1(x))), 2)
        x = F.max_pool2d(self.n2(F.relu(self.conv2(x))), 2)
        x = self.n3(F.relu(self.fc1(x.flatten(1))))
        return self.fc3(self.n4(F.relu(self.fc2(x))))


def _cifar_resnet18():
    tv = import_torchvision()
    m = tv.models.resnet18(num_classes=10)
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m


# name: (plain ctor, peer ctor or None, input shape, KL reduction, granularities, interleaved rounds)
CONFIGS = {
    "bmrs-mlp": (BMRSMLP, lambda: BMRSMLP(noise=True), (128, 1, 32, 32), "mean", ("batch", "sample", "element"), 60),
    "bmrs-lenet5": (LeNet5BMRS, PeerLeNet5BMRS, (32, 1, 32, 32), "mean", ("batch", "sample", "element"), 60),
    "lenet5-caffe": (LeNet5, None, (128, 1, 28, 28), "sum", ("batch", "sample", "element"), 15),
    "resnet18-cifar": (_cifar_resnet18, None, (64, 3, 32, 32), "sum", ("sample",), 3),
}
N_TRAIN = 60000


def _step_fn(model, x, y, kl):
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        loss = F.cross_entropy(model(x), y)
        if kl is not None:
            loss = loss + kl()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _providers(name, gran):
    plain_ctor, peer_ctor, shape, reduction, _, _ = CONFIGS[name]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(shape, generator=g), torch.randint(0, 10, (shape[0],), generator=g)
    torch.manual_seed(0)
    plain = plain_ctor()
    torch.manual_seed(0)
    gated = plain_ctor()
    fb.add_gates(gated, granularity=gran)
    # BMRS's weighting adds the KL as it is; the ELBO's scales it by 1/N (no multiply by 1.0: a user would not either)
    kl = (lambda: fb.kl_loss(gated, reduction)) if reduction == "mean" else \
        (lambda: fb.kl_loss(gated, reduction) / N_TRAIN)
    steps = {"plain": _step_fn(plain, x, y, None), "fastbayes": _step_fn(gated, x, y, kl)}
    if peer_ctor is not None and gran == "batch":
        torch.manual_seed(0)
        floor = plain_ctor()
        fb.add_gates(floor, granularity=gran)
        hosts = [m for m in floor.modules() if isinstance(getattr(m, GATE_ATTR, None), fb.nn.LogNormalGate)]
        for m in hosts:
            m._modules[GATE_ATTR] = FloorGate(m._modules[GATE_ATTR].num_features)
        floors = [m._modules[GATE_ATTR] for m in hosts]
        steps["floor"] = _step_fn(floor, x, y, lambda: sum(f.kl() for f in floors) / len(floors))
        if fb.backends.available()["cpu"]:
            torch.manual_seed(0)
            packed = plain_ctor()
            fb.add_gates(packed, granularity=gran)
            pgs = []
            for m in [m for m in packed.modules() if isinstance(getattr(m, GATE_ATTR, None), fb.nn.LogNormalGate)]:
                m._modules[GATE_ATTR] = PackedGate(m._modules[GATE_ATTR])
                pgs.append(m._modules[GATE_ATTR])
            w = torch.cat([torch.full((g.theta.shape[1],), 1.0 / (len(pgs) * g.theta.shape[1])) for g in pgs])
            steps["packed"] = _step_fn(packed, x, y, lambda: PackedGate.kl_mean(pgs, w))
    if peer_ctor is not None and gran == "element":
        torch.manual_seed(0)
        peer = peer_ctor()
        noises = [m for m in peer.modules() if isinstance(m, PeerNoise)]
        steps["peer"] = _step_fn(peer, x, y, lambda: sum(n.kl() for n in noises) / len(noises))
    return steps


@pytest.mark.parametrize("name,gran", [(n, g) for n, c in CONFIGS.items() for g in c[4]])
def test_train_step(benchmark, name, gran):
    steps = _providers(name, gran)
    shape = CONFIGS[name][2]
    benchmark.group = f"train step {name} batch {shape[0]} [{gran}]"
    benchmark.extra_info["provider"] = "fastbayes"
    if getattr(benchmark, "disabled", False):     # CI smoke pass: every provider's step once
        for fn in steps.values():
            fn()
        benchmark(steps["fastbayes"])
        return
    ms = interleaved(steps, CONFIGS[name][5])
    benchmark.extra_info["interleaved_ms"] = ms
    benchmark.extra_info["ratio_vs_plain"] = {p: v / ms["plain"] for p, v in ms.items()}
    benchmark.extra_info["backend"] = fb.backends.default("cpu")
    benchmark.pedantic(steps["fastbayes"], rounds=3, warmup_rounds=1)
