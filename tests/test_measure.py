"""measure(): parameters and FLOPs against hand counts, latency sanity."""
import pytest
import torch
from torch import nn

import fastbayes as fb
from fastbayes.prune.measure import count_flops, count_params, measure
from models import LeNet5


def test_lenet5_flops_and_params_by_hand():
    m = LeNet5()
    # conv1: 24·24 outputs × 20 ch × (1·5·5) MACs; conv2: 8·8 × 50 × (20·5·5); fc1: 800·500; fc2: 500·10
    macs = 24 * 24 * 20 * 25 + 8 * 8 * 50 * 500 + 800 * 500 + 500 * 10
    assert count_flops(m, torch.randn(1, 1, 28, 28)) == 2 * macs
    assert count_params(m) == (20 * 25 + 20) + (50 * 500 + 50) + (800 * 500 + 500) + (500 * 10 + 10)


def test_gates_are_not_counted_and_batch_scales_flops():
    m = nn.Sequential(nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 3))
    fb.add_gates(m)
    assert count_params(m) == 10 * 7 + 7 + 7 * 3 + 3
    assert count_flops(m, torch.randn(4, 10)) == 4 * count_flops(m, torch.randn(1, 10))


def test_measure_reports_latency():
    m = nn.Linear(32, 32)
    r = measure(m, torch.randn(8, 32), warmup=1, repeats=5, min_time=0.0)
    assert r["params"] == 32 * 32 + 32 and r["flops"] == 2 * 8 * 32 * 32
    assert 0 < r["latency_ms"] < 1000 and r["device"].startswith("cpu")


class _Kw(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x, shift=0.0):
        return self.fc(x) + shift


def test_example_inputs_take_compacts_forms():
    m = _Kw()
    x = torch.randn(3, 6)
    flops = 2 * 3 * 6 * 4
    for inputs in (x, (x,), [x], (x, 1.0), {"x": x}, {"x": x, "shift": 1.0}):
        assert count_flops(m, inputs) == flops
        r = measure(m, inputs, warmup=0, repeats=1, min_time=0.0)
        assert r["flops"] == flops and r["params"] == 6 * 4 + 4 and r["latency_ms"] > 0
    with pytest.raises(ValueError, match="example_inputs"):
        measure(m, "x")


@pytest.mark.parametrize("options, name", [({"repeats": 0}, "repeats"), ({"repeats": 1.5}, "repeats"),
                                           ({"warmup": -1}, "warmup"), ({"min_time": -1.0}, "min_time"),
                                           ({"min_time": float("nan")}, "min_time"), ({"repeat": 3}, "repeat")])
def test_bad_latency_options(options, name):
    m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=name):
        measure(m, torch.randn(1, 3), **options)
    if name != "repeat":
        with pytest.raises(ValueError, match=name):
            fb.prune.latency_ms(m, torch.randn(1, 3), **options)
