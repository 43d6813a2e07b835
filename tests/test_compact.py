"""Coupled gates, compact() (nothing lost on a model zoo), checkpoints and export."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastbayes as fb
from fastbayes import checkpoint
from fastbayes.layers import units as _units
from fastbayes.nn.sites import sites
from fastbayes.prune.compact import relative_error
from models import MLP, ConvBN, LeNet5

RTOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # two shared cores: OpenMP spinning across busy cores makes these forwards ~20x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tv_model(name):
    from fastbayes._compat import import_torchvision
    torch.manual_seed(0)
    return getattr(import_torchvision().models, name)(num_classes=10)


class TinyRes(nn.Module):
    """stem -> residual block (shared channels) -> grouped-conv block -> classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 12, 1, bias=False)
        self.bna = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(12, 12, 3, padding=1, groups=3, bias=False)
        self.bnb = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.c2(F.relu(self.bn1(self.c1(x))))))
        x = F.relu(self.bnb(self.b(F.relu(self.bna(self.a(x))))))
        return self.fc(x.mean((2, 3)))


class SigmoidNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.c2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.sigmoid(self.c1(x)))).mean((2, 3)))


class ConcatNet(nn.Module):
    """Inception-style concatenation into a conv, then DenseNet-style concatenation into a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.p = nn.Conv2d(3, 4, 1)
        self.bp = nn.BatchNorm2d(4)
        self.q = nn.Conv2d(3, 6, 3, padding=1)
        self.bq = nn.BatchNorm2d(6)
        self.r = nn.Conv2d(10, 5, 1)
        self.norm = nn.BatchNorm2d(15)
        self.fc = nn.Linear(15, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.bp(self.p(x))), F.relu(self.bq(self.q(x)))], 1)
        z = torch.cat([y, self.r(y)], 1)
        return self.fc(F.relu(self.norm(z)).mean((2, 3)))


class CatIntoConv(ConcatNet):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.bp(self.p(x))), F.relu(self.bq(self.q(x)))], 1)
        return self.fc(F.relu(self.r(y)).mean((2, 3)))


class LayerNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.ln, self.l2, self.l3 = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 12), nn.Linear(12, 4)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.ln(self.l1(x))))))


@torch.no_grad()
def randomize(model, gen, mu=(-6.0, 0.0), log_sigma=(-1.5, 1.5)):
    """Random BN statistics (so a channel gated before BN would not be 0 after it) and random posteriors
    under which the SNR rule prunes about 30-60% of the units."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.normal_(0, 0.2, generator=gen)
    for g in fb.nn.gates(model).values():
        g.mu.uniform_(*mu, generator=gen)
        g.log_sigma.uniform_(*log_sigma, generator=gen)


def masked_and_compact(model, x, seed=0, **options):
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    report = fb.prune.update_masks(model, "snr")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = fb.prune.compact(model, x, **options)
    assert not [w for w in caught if "nwrapped" in str(w.message)]
    return report, small


def n_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if "fastbayes_gate" not in n)


def assert_nothing_lost(gated, small, x):
    gated.eval()
    with torch.no_grad():
        err = relative_error(small(x), gated(x))
    assert err < RTOL, err


def assert_every_decision_removed(gated, small, min_units=1):
    modules = dict(small.named_modules())
    found = sites(gated)
    for name, gate in fb.nn.gates(gated).items():
        tiles = found[name][1]
        kept = max(int(gate.mask.sum()), min_units)
        assert _units(modules[name])[0] == tiles * kept, name


# --------------------------------------------------------------------------------------------- coupled gates

def test_coupled_gates_share_one_gate_per_group():
    m = tv_model("resnet18")
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gates = fb.add_gates(m, example_inputs=x)
        again = fb.add_gates(m, example_inputs=x)           # traced with gates in the model: still no warning
    assert not [w for w in caught if "nwrapped" in str(w.message)]
    assert all(again[k] is gates[k] for k in gates) and list(again) == list(gates)
    # the stem's channels run through the whole first stage: one gate after bn1 and after each block's bn2
    g = m.bn1.fastbayes_gate
    assert g is m.layer1[0].bn2.fastbayes_gate is m.layer1[1].bn2.fastbayes_gate
    assert m.layer2[0].bn2.fastbayes_gate is m.layer2[0].downsample[1].fastbayes_gate
    assert not hasattr(m.conv1, "fastbayes_gate") and not hasattr(m.fc, "fastbayes_gate")
    # 4 stages × (1 residual group + 2 inner bn1 groups) = 12 gates, each named by its first site
    assert len(gates) == 12 and "bn1" in gates and "layer2.0.bn2" in gates
    assert fb.nn.gates(m) == gates
    assert sum(1 for n, _ in m.named_parameters() if "fastbayes_gate" in n) == 24
    assert "layer1.0.bn2.fastbayes_gate.mask" in m.state_dict()
    want = sum(gate.kl_weight * gate.kl() for gate in gates.values())
    torch.testing.assert_close(fb.kl_loss(m), want)
    report = fb.prune.update_masks(m, "snr")
    assert report.total == sum(gate.num_features for gate in gates.values())


def test_default_is_traced_explicit_placement_is_per_layer_and_bad_arguments():
    assert list(fb.add_gates(ConvBN())) == ["bn"]          # traced on an inferred input: the gate sits after BN
    m = ConvBN()
    assert list(fb.add_gates(m, placement="output")) == ["conv"]
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="placement"):
        fb.add_gates(ConvBN(), example_inputs=x, placement="output")
    with pytest.raises(ValueError, match="example_inputs"):
        fb.add_gates(ConvBN(), example_inputs=1)
    with pytest.raises(ValueError, match="already carry gates"):
        fb.add_gates(m, example_inputs=x)          # per-layer gate before BN, coupled one wants to sit after it
    assert list(fb.add_gates(ConvBN(), example_inputs=x)) == ["bn"]


def test_grouped_conv_gate_repeats_over_conv_groups():
    torch.manual_seed(0)
    m = TinyRes()
    x = torch.randn(2, 3, 8, 8)
    gates = fb.add_gates(m, example_inputs=x, kl_weight={"c2": 3.0})
    assert list(gates) == ["bn0", "bn1", "bna", "bnb"]
    assert m.bn0.fastbayes_gate is m.bn2.fastbayes_gate and gates["bn0"].kl_weight == 3.0
    assert gates["bna"].num_features == 4 and sites(m)["bna"][1] == 3     # 12 channels = 3 conv groups × 4
    m.train()
    y = m(x)
    y.sum().backward()
    assert gates["bna"].mu.grad is not None and gates["bna"].mu.grad.shape == (4,)
    with torch.no_grad():
        gates["bna"].mask[1] = False
    m.eval()
    feats = {}
    handle = m.bna.register_forward_hook(lambda mod, i, o: feats.update(a=o))
    m(x)
    handle.remove()
    assert torch.all(feats["a"][:, [1, 5, 9]] == 0) and torch.all(feats["a"][:, [0, 4, 8]] != 0)
    _, small = masked_and_compact(m, x)
    assert_nothing_lost(m, small, x)
    assert_every_decision_removed(m, small)
    assert small.b.groups == 3 and small.b.in_channels % 3 == 0


# --------------------------------------------------------------------------------------------- nothing lost

@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Linear(5, 6), (3, 5)), (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 5, 5)),
    (lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), (2, 4, 5, 5)), (lambda: nn.BatchNorm2d(6), (2, 6, 3, 3)),
    (lambda: nn.BatchNorm1d(6, affine=False), (4, 6))])
def test_fold_matches_gate(make, shape):
    from fastbayes.prune.compact import _fold
    torch.manual_seed(0)
    layer = make().eval()
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2)
    s = torch.rand(6) * (torch.arange(6) % 3 != 0)
    x = torch.randn(shape)
    with torch.no_grad():
        want = layer(x) * s.reshape(-1, *([1] * (len(shape) - 2)))
        _fold(layer, s)
        torch.testing.assert_close(layer(x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make,shape", [(lambda: MLP((64, 32, 16, 10)), (3, 64)), (lambda: LeNet5(), (2, 1, 28, 28)),
                                        (TinyRes, (2, 3, 8, 8))])
def test_compact_small_models(make, shape):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(shape)
    fb.add_gates(m, example_inputs=x)
    report, small = masked_and_compact(m, x)
    assert 0.3 <= 1 - report.kept / report.total <= 0.6
    assert_nothing_lost(m, small, x)
    assert_every_decision_removed(m, small)
    assert n_params(small) < n_params(m)
    assert not any("fastbayes" in k for k in small.state_dict())
    assert not any(h for mod in small.modules() for h in mod._forward_hooks.values())


def test_groups_that_cannot_be_removed_stay_ungated():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    m = ConcatNet()
    with pytest.warns(UserWarning, match="norm holds channels of several groups"):
        gates = fb.add_gates(m, example_inputs=x)
    assert not gates          # every group reaches the BatchNorm after the second concatenation
    m = LayerNormNet()
    with pytest.warns(UserWarning, match="LayerNorm"):
        gates = fb.add_gates(m, example_inputs=torch.randn(3, 8))
    assert list(gates) == ["l2"]
    _, small = masked_and_compact(m, torch.randn(3, 8))
    assert_nothing_lost(m, small, torch.randn(3, 8))
    assert small.l1.out_features == 16 and small.l2.out_features == int(gates["l2"].mask.sum())


def test_concatenation_into_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    m = CatIntoConv()
    gates = fb.add_gates(m, example_inputs=x)
    assert list(gates) == ["bp", "bq", "r"]
    _, small = masked_and_compact(m, x)
    assert_nothing_lost(m, small, x)
    assert_every_decision_removed(m, small)
    assert small.r.in_channels == small.p.out_channels + small.q.out_channels


ZOO = ["resnet18", "resnet50", "vgg11_bn", "vgg16_bn", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf"]


@pytest.mark.parametrize("name", ZOO)
def test_compact_torchvision_zoo(name):
    m = tv_model(name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fb.add_gates(m, example_inputs=x)
    report, small = masked_and_compact(m, x)
    assert 0.3 <= 1 - report.kept / report.total <= 0.6
    assert_nothing_lost(m, small, x)
    assert_every_decision_removed(m, small)
    assert n_params(small) < 0.7 * n_params(m)
    assert type(small) is type(m) and not small.training


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_round_to_aligns_widths(name):
    m = tv_model(name)
    x = torch.randn(1, 3, 32, 32)
    fb.add_gates(m, example_inputs=x)
    original = {n: mod for n, mod in copy.deepcopy(m).named_modules()}
    _, small = masked_and_compact(m, x, round_to=8)
    assert_nothing_lost(m, small, x)
    _, plain = masked_and_compact(m, x)
    assert n_params(plain) <= n_params(small) < n_params(m)
    for n, mod in small.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            width, full = _units(mod)[0], _units(original[n])[0]
            assert width % 8 == 0 or width == full or n == "fc" or n.startswith("classifier"), (n, width)


def test_min_units_keeps_best_channels():
    torch.manual_seed(0)
    m = LeNet5(widths=(6, 8, 12))
    x = torch.randn(2, 1, 28, 28)
    gates = fb.add_gates(m, example_inputs=x)
    fb.prune.update_masks(m, "snr", threshold=1e9, min_units=0)     # everything pruned
    assert all(int(g.mask.sum()) == 0 for g in gates.values())
    with torch.no_grad():
        gates["conv1"].mu.copy_(torch.linspace(-3, 0, 6))            # best E[θ]: the last two channels
    small = fb.prune.compact(m, x, min_units=2)
    assert_nothing_lost(m, small, x)
    assert small.conv1.out_channels == 2 and small.conv2.out_channels == 2 and small.fc1.out_features == 2
    torch.testing.assert_close(small.conv1.weight, torch.zeros_like(small.conv1.weight), rtol=0, atol=0)
    with pytest.raises(ValueError, match="min_units"):
        fb.prune.compact(m, x, min_units=0)
    with pytest.raises(ValueError, match="round_to"):
        fb.prune.compact(m, x, round_to=0)
    with pytest.raises(ValueError, match="example_inputs"):
        fb.prune.compact(m, None)


def test_per_layer_gates_compact_exactly():
    x = torch.randn(1, 3, 32, 32)
    m = tv_model("resnet18")
    fb.add_gates(m, placement="bn")                                  # per layer, after BN: residual decisions differ
    _, small = masked_and_compact(m, x)
    assert_nothing_lost(m, small, x)
    assert n_params(small) < 0.7 * n_params(m)
    m = ConvBN()
    fb.add_gates(m, placement="output")                              # before BN: a pruned channel is not 0 after BN
    _, small = masked_and_compact(m, x)
    assert_nothing_lost(m, small, x)
    assert small.conv.out_channels == 8


def test_check_catches_activation_that_does_not_keep_zero():
    torch.manual_seed(0)
    m = SigmoidNet()
    x = torch.randn(2, 3, 8, 8)
    fb.add_gates(m, example_inputs=x)
    with torch.no_grad():
        m.c1.fastbayes_gate.mask[:3] = False                         # sigmoid(0) = 0.5 reaches c2
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(RuntimeError, match="relative error"):
        fb.prune.compact(m, x)
    small = fb.prune.compact(m, x, check=False)
    m.eval()
    assert small.c1.out_channels == 5 and relative_error(small(x), m(x)) > RTOL
    # the original is untouched
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.c1.fastbayes_gate.mask.sum() == 5


# --------------------------------------------------------------------------------------------- checkpoints

def _train_step(model, opt, x, seed):
    torch.manual_seed(seed)
    model.train()
    loss = F.cross_entropy(model(x), torch.arange(x.shape[0]) % 5) + fb.kl_loss(model) / 100
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_gated_checkpoint_round_trip_with_adam(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    m = TinyRes()
    fb.add_gates(m, example_inputs=x, granularity="batch", a=-12.0)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for step in range(3):
        _train_step(m, opt, x, step)
    randomize(m, torch.Generator().manual_seed(0))
    fb.prune.update_masks(m, "snr")
    path = tmp_path / "gated.pt"
    checkpoint.save(path, m, opt, epoch=3, note="sbp")

    loaded, opt2, extra = checkpoint.load(path, TinyRes, lambda model: torch.optim.Adam(
        list(model.parameters())[::-1], 1e-2))                        # another parameter order: restored by name
    assert extra == {"epoch": 3, "note": "sbp"}
    assert loaded.bn0.fastbayes_gate is loaded.bn2.fastbayes_gate
    assert sites(loaded).keys() == sites(m).keys() and sites(loaded)["bna"][1] == 3
    g = loaded.bna.fastbayes_gate
    assert g.a == -12.0 and g.granularity == "batch" and g.dim == 2
    sd, sd2 = m.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    names = {id(p): n for n, p in m.named_parameters()}
    names2 = {id(p): n for n, p in loaded.named_parameters()}
    st = {names[id(p)]: s for p, s in opt.state.items()}
    st2 = {names2[id(p)]: s for p, s in opt2.state.items()}
    assert st.keys() == st2.keys()
    for k in st:
        assert all(torch.equal(torch.as_tensor(st[k][f]), torch.as_tensor(st2[k][f])) for f in st[k])
    _train_step(m, opt, x, 7)                                        # resumes exactly
    _train_step(loaded, opt2, x, 7)
    sd, sd2 = m.state_dict(), loaded.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)

    gated_again = TinyRes()
    fb.add_gates(gated_again, placement="output")                    # per-layer gates: not the saved placement
    with pytest.raises(ValueError, match="other sites"):
        checkpoint.load(path, gated_again)
    with pytest.raises(ValueError, match="compact"):
        checkpoint.load_compact(path)


def test_compact_save_load_and_export(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    m = TinyRes()
    fb.add_gates(m, example_inputs=x)
    _, small = masked_and_compact(m, x)
    path = tmp_path / "small.pt"
    with pytest.raises(ValueError, match="gates"):
        checkpoint.save_compact(path, m)
    checkpoint.save_compact(path, small)
    again = checkpoint.load_compact(path)
    sd, sd2 = small.state_dict(), again.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert again.b.groups == 3 and again.b.in_channels == small.b.in_channels
    with torch.no_grad():
        assert torch.equal(again(x), small(x))

    program = checkpoint.export(small, x)
    assert isinstance(program, torch.export.ExportedProgram)
    y = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(y), small(y), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="gates"):
        checkpoint.export(m, x)


def test_onnx_export(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    m = LeNet5(widths=(4, 6, 16))
    fb.add_gates(m, example_inputs=x)
    _, small = masked_and_compact(m, x)
    checkpoint.export(small, x, onnx_path=tmp_path / "small.onnx")
    import onnx
    onnx.checker.check_model(onnx.load(tmp_path / "small.onnx"))


# --------------------------------------------------------------------------------------------- explicit masks

class KwNet(nn.Module):
    """A model called with keyword arguments, with a BatchNorm after its conv and a residual-free head."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc, self.out = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, image, scale=1.0):
        h = F.relu(self.bn(self.conv(image))).mean((2, 3))
        return self.out(F.relu(self.fc(h))) * scale


@torch.no_grad()
def _zeroed(model, masks):
    """The masked model written out by hand: weight rows and biases of masked units, and the BatchNorm's affine."""
    ref = copy.deepcopy(model)
    for name, keep in masks.items():
        layer = dict(ref.named_modules())[name]
        layer.weight[~keep] = 0
        if layer.bias is not None:
            layer.bias[~keep] = 0
        if name == "conv":
            ref.bn.weight[~keep] = 0
            ref.bn.bias[~keep] = 0
    return ref


@pytest.mark.parametrize("form", ["dict", "tuple", "list"])
def test_masks_on_a_plain_model(form):
    torch.manual_seed(0)
    m = KwNet()
    randomize(m, torch.Generator().manual_seed(1))
    m.eval()
    x = torch.randn(2, 3, 6, 6)
    inputs = {"dict": {"image": x, "scale": 2.0}, "tuple": (x, 2.0), "list": [x, 2.0]}[form]
    masks = {"conv": torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool),
             "fc": torch.tensor([0, 1, 1, 0, 1, 1], dtype=torch.bool)}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small = fb.prune.compact(m, inputs, masks=masks)
    assert (small.conv.out_channels, small.bn.num_features, small.fc.in_features, small.fc.out_features,
            small.out.in_features) == (5, 5, 5, 4, 4)
    torch.testing.assert_close(small(x, 2.0), _zeroed(m, masks)(x, 2.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fb.prune.apply_masks(m, masks)(x, 2.0), _zeroed(m, masks)(x, 2.0), rtol=0, atol=0)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())     # the source is untouched
    assert fb.prune.measure(small, inputs, repeats=1, warmup=0, min_time=0)["params"] < fb.prune.count_params(m)


def test_masks_combine_with_gates():
    torch.manual_seed(0)
    m = MLP((5, 7, 6, 3)).eval()
    gates = fb.add_gates(m)
    with torch.no_grad():
        gates["layers.0"].mask[:2] = False
    x = torch.randn(4, 5)
    masks = {"layers.0": torch.arange(7) != 3, "layers.1": torch.arange(6) >= 2}
    small = fb.prune.compact(m, x, masks=masks)
    assert small.layers[0].out_features == 4 and small.layers[1].out_features == 4
    with torch.no_grad():       # the same decisions as gate masks (on m itself: see nn/gates.py's eval cache)
        gates["layers.0"].mask[3] = False
        gates["layers.1"].mask[:2] = False
    m.eval()
    torch.testing.assert_close(small(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masks, match", [
    ({"nope": torch.ones(8, dtype=torch.bool)}, "nope"),
    ({"conv": torch.ones(7, dtype=torch.bool)}, r"masks\['conv'\].*\(8,\)"),
    ({"conv": torch.ones(8)}, r"masks\['conv'\].*bool"),
    ({"": torch.ones(8, dtype=torch.bool)}, "KwNet"),
    ([torch.ones(8, dtype=torch.bool)], "dict")])
def test_bad_masks_change_nothing(masks, match):
    m = KwNet().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fb.prune.compact(m, torch.randn(1, 3, 6, 6), masks=masks)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_warns_naming_layers_whose_masked_units_stay():
    """Per-layer gates before an ungated BatchNorm (BMRS's ResNet setting without placement='bn'): the masks prune
    but compact() can remove nothing there, and says so; after the BatchNorm, nothing to say."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    for placement, expect in [("output", True), ("bn", False)]:
        m = TinyRes() if expect else KwNet()
        fb.add_gates(m, placement=placement)
        randomize(m, torch.Generator().manual_seed(0))
        rep = fb.prune.update_masks(m, "snr")
        assert rep.kept < rep.total
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            small = fb.prune.compact(m, x)
        msgs = [str(w.message) for w in caught if "could not remove" in str(w.message)]
        assert_nothing_lost(m, small, x)
        if expect:
            assert len(msgs) == 1 and "'stem'" in msgs[0] and "'bn0'" in msgs[0] and "not gated" in msgs[0]
        else:
            assert msgs == [] and n_params(small) < n_params(m), msgs
    # per-layer gates after the BatchNorms of a residual block disagree: the block's channels stay
    m = TinyRes()
    fb.add_gates(m, placement="bn")
    randomize(m, torch.Generator().manual_seed(0))
    fb.prune.update_masks(m, "snr")
    with pytest.warns(UserWarning, match=r"'bn2' \(\d+ of \d+ masked units kept: coupled layers .*'bn0'"):
        fb.prune.compact(m, x)
    # explicit masks on a layer whose channels reach the model's output
    m = MLP((4, 5, 3)).eval()
    with pytest.warns(UserWarning, match=r"'layers.1'.*outputs of the model"):
        fb.prune.compact(m, torch.randn(2, 4), masks={"layers.1": torch.tensor([True, False, True])})
