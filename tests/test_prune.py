"""Pruning criteria, masks, report and schedule."""
import math

import pytest
import torch

import fastbayes as fb
from models import LeNet5, MLP


def _model_with_known_posteriors():
    m = MLP((4, 8, 3))
    gates = fb.add_gates(m)
    g = gates["layers.0"]
    # (μ, σ) rows of METHODS.md §0.2 / §2.3 / §2.4 with known decisions
    rows = [(0.0, math.exp(-5)), (-1.0, 0.5), (-5.0, 1.0), (-10.0, 3.0), (-15.0, 3.0), (-19.9, 0.5), (-2.0, 10.0),
            (-10.0, 10.0)]
    with torch.no_grad():
        g.mu.copy_(torch.tensor([r[0] for r in rows]))
        g.log_sigma.copy_(torch.log(torch.tensor([r[1] for r in rows])))
    return m, g


def test_snr_rule():
    m, g = _model_with_known_posteriors()
    rep = fb.prune.update_masks(m, "snr")
    # SNR: 246.7, 2.17, 0.764, 0.114, 0.028, 2.62, 0.413, 0.298 -> keep where > 1
    assert g.mask.tolist() == [True, True, False, False, False, True, False, False]
    assert rep.kept == 3 and rep.total == 8


def test_bmrs_n_rule_prunes_near_zero_unit_that_snr_keeps():
    m, g = _model_with_known_posteriors()
    fb.prune.update_masks(m, "bmrs_n")
    # ΔF_N goldens: (-19.9, .5) = 3.30 -> prune; (-15, 3) = -0.36, (-10, 10) = -0.34, (-2, 10) = -1.24 -> keep
    assert g.mask[5].item() is False
    assert g.mask[4].item() and g.mask[7].item() and g.mask[6].item()
    # the released code's +½log2π offset flips (-15, 3) to prune
    fb.prune.update_masks(m, "bmrs_n", code_offset=True)
    assert g.mask[4].item() is False


def test_bmrs_u_rule_and_blind_spot():
    m, g = _model_with_known_posteriors()
    fb.prune.update_masks(m, "bmrs_u", p1=8)
    # ΔF_U-8 goldens: (-10,3)=0.558 prune, (-15,3)=0.229 prune, (-5,1)=-0.574 keep, (-19.9,.5)=-33 keep (blind spot)
    assert g.mask[3].item() is False and g.mask[4].item() is False
    assert g.mask[2].item() and g.mask[5].item()
    fb.prune.update_masks(m, "bmrs_u", p1=8, lower="a")
    assert g.mask[5].item() is False


def test_min_units_keeps_best():
    m, g = _model_with_known_posteriors()
    with torch.no_grad():
        g.mu.fill_(-19.9)
        g.log_sigma.fill_(math.log(0.5))
    rep = fb.prune.update_masks(m, "bmrs_n", min_units=2)
    assert int(g.mask.sum()) == 2 and rep.kept_per_layer["layers.0"] == 2
    fb.prune.update_masks(m, "bmrs_n", min_units=0)
    assert int(g.mask.sum()) == 0


def test_report_prints_table_and_dict():
    m, _ = _model_with_known_posteriors()
    rep = fb.prune.update_masks(m, "snr", threshold=0.5)
    text = str(rep)
    assert "layers.0" in text and "kept" in text and "SNR > 0.5" in text
    d = rep.to_dict()
    assert d["total"] == 8 and d["layers"][0]["name"] == "layers.0"


def test_schedule_updates_then_freezes():
    m, g = _model_with_known_posteriors()
    sched = fb.prune.PruneSchedule(m, "snr", prune_epochs=4, every=2)
    assert sched.step(0) is None
    assert sched.step(1) is not None
    with torch.no_grad():
        g.mu.fill_(-19.9)
    assert sched.step(3) is not None          # last pruning epoch always updates
    frozen = g.mask.clone()
    with torch.no_grad():
        g.mu.fill_(0.0)
    assert sched.step(4) is None and torch.equal(g.mask, frozen)


def test_pruned_units_output_zero_in_both_modes():
    torch.manual_seed(0)
    m = LeNet5(widths=(4, 6, 8))
    gates = fb.add_gates(m)
    with torch.no_grad():
        gates["conv1"].mu[:2] = -19.9
        gates["conv1"].log_sigma[:2] = math.log(0.5)
    fb.prune.update_masks(m, "bmrs_n")
    feats = {}
    m.conv1.register_forward_hook(lambda mod, i, o: feats.setdefault(mod.training, o))
    x = torch.randn(2, 1, 28, 28)
    m.train()
    m(x)
    m.eval()
    m(x)
    for out in feats.values():
        assert torch.all(out[:, :2] == 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(criterion="l2"), "criterion"), (dict(criterion="snr", threshold=-1), "threshold"),
    (dict(criterion="bmrs_u", p1=30), "p1"), (dict(criterion="bmrs_n", min_units=-1), "min_units")])
def test_bad_arguments(kwargs, match):
    m, _ = _model_with_known_posteriors()
    with pytest.raises(ValueError, match=match):
        fb.prune.update_masks(m, **kwargs)


def test_etheta_rule_against_the_posterior_mean():
    m, g = _model_with_known_posteriors()
    mean = g.posterior.mean.double()
    rep = fb.prune.update_masks(m, "etheta")
    assert g.mask.tolist() == (mean > 0.1).tolist() and 0 < rep.kept < rep.total
    torch.testing.assert_close(rep.statistics["layers.0"], mean, rtol=1e-6, atol=1e-12)
    fb.prune.update_masks(m, "etheta", threshold=0.0)
    assert bool(g.mask.all())
    with pytest.raises(ValueError, match="threshold"):
        fb.prune.update_masks(m, "etheta", threshold=1.0)


def test_criteria_table_names_what_each_applies_to():
    from fastbayes.nn import BernoulliGate, LogNormalGate
    assert set(fb.prune.CRITERIA) == {"snr", "bmrs_n", "bmrs_u", "etheta", "bernoulli", "consensus"}
    for name in ("snr", "bmrs_n", "bmrs_u", "etheta"):
        assert fb.prune.CRITERIA[name].applies_to == (LogNormalGate,)
    assert fb.prune.CRITERIA["bernoulli"].applies_to == (BernoulliGate,)
    with pytest.raises(ValueError, match="'bernoulli'.*BernoulliGate.*not to a LogNormalGate"):
        fb.prune.CRITERIA["bernoulli"](LogNormalGate(3))


def _bernoulli_model():
    m = MLP((4, 6, 5, 3))
    gates = fb.add_gates(m, "bernoulli")
    with torch.no_grad():
        gates["layers.0"].theta.copy_(torch.tensor([1.0, 0.5, 0.49, 0.0, 0.9, 0.7]))
        gates["layers.0"].mask[4] = False          # masked earlier: stays masked whatever its θ
        gates["layers.1"].theta.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.45]))
    return m, gates


def test_update_masks_on_bernoulli_gates():
    m, gates = _bernoulli_model()
    rep = fb.prune.update_masks(m, "bernoulli", min_units=2)
    assert gates["layers.0"].mask.tolist() == [True, True, False, False, False, True]
    assert gates["layers.1"].mask.tolist() == [False, False, False, True, True]    # min_units: the two best θ
    assert rep.kept_per_layer == {"layers.0": 3, "layers.1": 2} and rep.criterion == "bernoulli"


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("criterion", ["snr", "bmrs_n", "bmrs_u", "etheta"])
def test_lognormal_criterion_on_bernoulli_gates_is_refused_untouched(criterion):
    m, _ = _bernoulli_model()
    before = _state(m)
    with pytest.raises(ValueError, match=f"'{criterion}'.*LogNormalGate.*BernoulliGate.*'layers.0'.*bernoulli"):
        fb.prune.update_masks(m, criterion)
    assert _same(before, _state(m))


def test_bernoulli_criterion_on_lognormal_gates_is_refused():
    m, _ = _model_with_known_posteriors()
    with pytest.raises(ValueError, match="'bernoulli'.*BernoulliGate.*LogNormalGate"):
        fb.prune.update_masks(m, "bernoulli")
    with pytest.raises(ValueError, match="'consensus'.*particle ensemble"):
        fb.prune.update_masks(m, "consensus")


def test_a_failing_gate_leaves_every_mask_as_it_was():
    """bmrs_u with the paper's a' = 2^-23 fits the first gate (a = -20) but not the second (a = -10): nothing is
    written, not even the first gate's mask."""
    m = MLP((4, 6, 5, 3))
    gates = fb.add_gates(m)
    g0, g1 = gates["layers.0"], gates["layers.1"]
    g1.a = -10.0
    with torch.no_grad():
        g0.mu.fill_(-15.0)
        g0.mask[:2] = False
        g1.mask[1] = False
    before = _state(m)
    assert not bool(fb.prune.CRITERIA["bmrs_u"](g0).keep.all())     # g0 alone would change
    with pytest.raises(ValueError, match="a'"):
        fb.prune.update_masks(m, "bmrs_u")
    assert _same(before, _state(m))
