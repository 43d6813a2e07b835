"""Bad input is refused before anything changes: the model, its hooks, masks, optimiser state and files stay as they
were, and the error names the argument (issue 2/5, part 3)."""
import copy
import pickle

import pytest
import torch
from torch import nn

import fastbayes as fb
from fastbayes import checkpoint
from models import LeNet5


def _snapshot(model):
    hooks = {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()}
    return {k: v.clone() for k, v in model.state_dict().items()}, hooks, [n for n, _ in model.named_modules()]


def _assert_unchanged(model, snap):
    state, hooks, names = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(torch.equal(now[k], state[k]) for k in state)
    assert [n for n, _ in model.named_modules()] == names
    assert {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()} == hooks


def _mlp():
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))


def test_add_gates_with_wrong_example_inputs_leaves_no_tracing_hooks():
    m = LeNet5()
    snap = _snapshot(m)
    with pytest.raises(RuntimeError, match="example_inputs"):
        fb.add_gates(m, example_inputs=torch.randn(2, 3, 28, 28))      # 3 channels into a 1-channel conv
    _assert_unchanged(m, snap)
    assert not fb.nn.gates(m)
    pickle.dumps(m)                                                     # Torch-Pruning's hooks would not pickle
    y = m(torch.randn(2, 1, 28, 28))
    assert y.grad_fn is not None and not any(m._forward_hooks for m in m.modules())


def test_add_gates_checks_every_layer_before_gating_any():
    m = _mlp()
    snap = _snapshot(m)
    with pytest.raises(ValueError, match="'1'"):
        fb.add_gates(m, layers=["0", "1"])                              # "1" is a ReLU
    _assert_unchanged(m, snap)
    with pytest.raises(TypeError, match="layers"):
        fb.add_gates(m, layers="0")                                     # a bare string, not a list of names
    with pytest.raises(TypeError, match="exclude"):
        fb.add_gates(m, exclude="2")
    with pytest.raises(TypeError, match="granularty"):
        fb.add_gates(m, granularty="batch")                             # a typo in an option
    with pytest.raises(ValueError, match="granularity"):
        fb.add_gates(m, granularity="unit")
    with pytest.raises(ValueError, match="kl_weight"):
        fb.add_gates(m, kl_weight=float("nan"))
    with pytest.raises(ValueError, match="kl_weight"):
        fb.add_gates(m, kl_weight={"0": -1.0})
    with pytest.raises(ValueError, match="kind"):
        fb.add_gates(m, kind="gaussian")
    with pytest.raises(TypeError, match="coupled"):
        fb.add_gates(m, coupled="yes")
    with pytest.raises(ValueError, match="example_inputs"):
        fb.add_gates(m, example_inputs=3)
    with pytest.raises(TypeError, match="model"):
        fb.add_gates("model")
    _assert_unchanged(m, snap)


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "mobilenet_v2", "regnet_x_400mf"])
def test_default_gates_compact_on_the_torchvision_zoo(name):
    from fastbayes._compat import import_torchvision
    torch.manual_seed(0)
    m = getattr(import_torchvision().models, name)(num_classes=10)
    fb.add_gates(m)                                                     # no example_inputs
    gen = torch.Generator().manual_seed(0)
    for g in fb.nn.gates(m).values():
        with torch.no_grad():
            g.mu.uniform_(-6.0, 0.0, generator=gen)
            g.log_sigma.uniform_(-1.5, 1.5, generator=gen)
    fb.prune.update_masks(m, "snr")
    x = torch.randn(1, 3, 32, 32)
    small = fb.prune.compact(m, x)
    n = lambda mod: sum(p.numel() for k, p in mod.named_parameters() if "fastbayes_gate" not in k)  # noqa: E731
    assert n(small) < 0.8 * n(m)


def _gated(tmp_path):
    torch.manual_seed(0)
    m = LeNet5(widths=(4, 6, 8))
    fb.add_gates(m)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    m(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    path = tmp_path / "gated.pt"
    checkpoint.save(path, m, opt)
    return m, opt, path


def test_checkpoint_load_names_the_file_kind_and_loader(tmp_path):
    m, opt, gated = _gated(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("epoch 3: loss 0.1\n")
    with pytest.raises(ValueError, match="not a torch.save file"):
        checkpoint.load(text, LeNet5)
    compact_path = tmp_path / "small.pt"
    checkpoint.save_compact(compact_path, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="load_compact"):
        checkpoint.load(compact_path, LeNet5)
    with pytest.raises(ValueError, match=r"checkpoint\.load\b"):
        checkpoint.load_compact(gated)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(gated.read_bytes()[: len(gated.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated|damaged|not a torch.save"):
        checkpoint.load(truncated, LeNet5)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="not one written by fastbayes"):
        checkpoint.load(other, LeNet5)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing.pt", LeNet5)


def test_failed_checkpoint_load_leaves_model_and_optimizer_as_they_were(tmp_path):
    m, opt, path = _gated(tmp_path)
    wrong = LeNet5(widths=(4, 6, 9))                                    # fc1 has another width
    snap = _snapshot(wrong)
    with pytest.raises(RuntimeError, match="size mismatch"):
        checkpoint.load(path, wrong)
    _assert_unchanged(wrong, snap)
    assert not fb.nn.gates(wrong)
    # an optimiser over other parameters: the model gets its gates and state, then the optimiser fails
    fresh = LeNet5(widths=(4, 6, 8))
    other_opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), 0.1)
    before = copy.deepcopy(other_opt.state_dict())
    snap = _snapshot(fresh)
    with pytest.raises(ValueError, match="parameters"):
        checkpoint.load(path, fresh, other_opt)
    _assert_unchanged(fresh, snap)
    assert other_opt.state_dict() == before


def test_lazy_subpackages_are_attributes():
    assert fb.dllp.ParticleEnsemble is not None
    with pytest.raises(AttributeError, match="nonsense"):
        fb.nonsense


def test_loss_terms_and_param_groups_refuse_bad_arguments():
    m = LeNet5(widths=(4, 6, 8))
    fb.add_gates(m)
    for bad in (float("inf"), float("nan"), 0.0, True, "1e-3"):
        with pytest.raises(ValueError, match="lr"):
            fb.nn.param_groups(m, bad)
    with pytest.raises(TypeError, match="model"):
        fb.kl_loss([m])
    with pytest.raises(TypeError, match="model"):
        fb.nn.penalty(None)
    with pytest.raises(ValueError, match="reduction"):
        fb.nn.penalty(m, "max")
    with pytest.raises(TypeError, match="bound a"):
        fb.ops.lognormal_noise(torch.ones(2, 3), torch.zeros(3), torch.zeros(3), a="-20")


def test_penalty_sums_every_kind_of_gate():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    fb.add_gates(m, layers=["0"])
    fb.add_gates(m, kind="bernoulli", layers=["2"])
    want = fb.kl_loss(m) + fb.nn.prior_loss(m)
    torch.testing.assert_close(fb.nn.penalty(m), want)
    g = fb.nn.gates(m)
    torch.testing.assert_close(g["0"].penalty(), g["0"].kl_weight * g["0"].kl())
    torch.testing.assert_close(g["2"].penalty(m[2]), fb.nn.prior_loss(m))


def test_criteria_options_checked_by_name_before_anything():
    m = LeNet5(widths=(4, 6, 8))
    fb.add_gates(m)
    snap = _snapshot(m)
    with pytest.raises(ValueError, match="threshold"):
        fb.prune.update_masks(m, "snr", threshold="1")
    with pytest.raises(TypeError, match="thresh"):
        fb.prune.update_masks(m, "snr", thresh=1.0)
    with pytest.raises(TypeError, match="thresh"):
        fb.prune.PruneSchedule(m, "snr", prune_epochs=3, thresh=1.0)     # at construction, not after an epoch
    _assert_unchanged(m, snap)


def test_more_entry_points_name_their_bad_argument(tmp_path):
    with pytest.raises(TypeError, match="path"):
        checkpoint.save(123, LeNet5())
    with pytest.raises(TypeError, match="model"):
        checkpoint.save(tmp_path / "x.pt", "model")
    with pytest.raises(TypeError, match="model"):
        fb.prune.measure("model", torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="init_mu"):
        fb.nn.LogNormalGate(3, init_mu=float("nan"))
    with pytest.raises(ValueError, match="init_log_sigma"):
        fb.nn.LogNormalGate(3, init_log_sigma="x")
