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
