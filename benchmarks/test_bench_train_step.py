"""Headline: training-step overhead of gates — the same model and batch with and without gates, in one run.

Providers: ``plain`` (no gates), ``gates:<backend>`` with the backend forced, for each granularity.  The ratio
gates/plain is the overhead (goal: <= 1.10x for LeNet5 on 2 CPU cores; BMRS's reference layers cost 4.5–8.5x).
"""
import pytest
import torch
import torch.nn.functional as F

import fastbayes as fb
from fastbayes._compat import import_torchvision
from models import LeNet5


def _cifar_resnet18():
    tv = import_torchvision()
    m = tv.models.resnet18(num_classes=10)
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m


MODELS = {
    "lenet5": (LeNet5, (128, 1, 28, 28)),
    "resnet18-cifar": (_cifar_resnet18, (64, 3, 32, 32)),
}


def _cases():
    for model in MODELS:
        for gran in ("batch", "sample", "element"):
            if model == "resnet18-cifar" and gran != "sample":
                continue   # keep the CPU sweep short: one ResNet configuration
            yield model, "plain", gran
            for backend in ("cpu", "reference"):
                if model == "resnet18-cifar" and backend == "reference":
                    continue
                yield model, f"gates:{backend}", gran


@pytest.mark.parametrize("model_name,provider,gran", list(_cases()))
def test_train_step(benchmark, model_name, provider, gran):
    backend = provider.split(":")[1] if ":" in provider else None
    if backend and not fb.backends.available()[backend]:
        pytest.skip(fb.backends.why_not()[backend])
    torch.manual_seed(0)
    ctor, shape = MODELS[model_name]
    model = ctor()
    if backend:
        fb.add_gates(model, granularity=gran)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    n_train = 60000

    def step():
        out = model(x)
        loss = F.cross_entropy(out, y)
        if backend:
            loss = loss + fb.kl_loss(model) / n_train
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.group = f"train step {model_name} batch {shape[0]} [{gran}]"
    benchmark.extra_info["provider"] = provider
    rounds = 3 if backend == "reference" else 9   # the per-element reference takes seconds per step
    if backend:
        with fb.backends.use(backend):
            step()
            benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
    else:
        step()
        benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
