"""Reliability metrics (fastbayes.metrics) against hand-computed values, and one ECE: the number and the bins of the
reliability diagram agree."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastbayes import metrics

def test_confident_correct_predictions():
    y = torch.tensor([0, 2, 1, 2, 0])
    logits = 200.0 * F.one_hot(y, 3).double()
    rep = metrics.reliability_report(logits.expand(3, -1, -1), y)
    assert rep["ece"] == pytest.approx(0.0, abs=1e-7)
    assert rep["nll"] == pytest.approx(0.0, abs=1e-12)
    assert rep["brier"] == pytest.approx(0.0, abs=1e-12)
    assert rep["accuracy"] == rep["accuracy_mean"] == 1.0
    assert rep["accuracy_std"] == 0.0 and rep["accuracy_ci95"] == [1.0, 1.0]
    assert rep["mutual_information"] == pytest.approx(0.0, abs=1e-12)


def test_uniform_predictions():
    C = 7
    y = torch.arange(20) % C
    rep = metrics.reliability_report(torch.zeros(4, 20, C), y)
    assert rep["predictive_entropy"] == pytest.approx(math.log(C), rel=1e-12)
    assert rep["expected_entropy"] == pytest.approx(math.log(C), rel=1e-12)
    assert rep["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    assert rep["nll"] == pytest.approx(math.log(C), rel=1e-12)
    assert rep["brier"] == pytest.approx(1 - 1 / C, rel=1e-12)


def test_mutual_information_identical_and_disagreeing_particles():
    torch.manual_seed(0)
    y = torch.randint(0, 5, (30,))
    one = torch.randn(1, 30, 5)
    rep = metrics.reliability_report(one.expand(6, -1, -1), y)
    assert rep["mutual_information"] == pytest.approx(0.0, abs=1e-12)
    assert rep["accuracy_std"] == 0.0
    assert rep["predictive_entropy"] == pytest.approx(rep["expected_entropy"], rel=1e-12)
    # two particles, each certain of a different class: H[mean] = log 2, E[H] = 0, so MI = log 2
    y2 = torch.zeros(4, dtype=torch.long)
    logits = torch.stack([100.0 * F.one_hot(torch.zeros(4, dtype=torch.long), 3),
                          100.0 * F.one_hot(torch.ones(4, dtype=torch.long), 3)]).double()
    rep2 = metrics.reliability_report(logits, y2)
    assert rep2["mutual_information"] == pytest.approx(math.log(2), rel=1e-10)
    assert rep2["accuracy_mean"] == 0.5 and rep2["accuracy_std"] == pytest.approx(math.sqrt(0.5))
    assert rep2["nll"] == pytest.approx(math.log(2), rel=1e-10)


def test_hand_computed_ece_nll_brier():
    # confidences 0.9 (right), 0.9 (wrong), 0.62 (right), 0.75 (right); 15 bins of width 1/15:
    # 0.9 ∈ [13/15, 14/15) holds two (accuracy ½), 0.62 ∈ [9/15, 10/15), 0.75 ∈ [11/15, 12/15)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.62, 0.38], [0.75, 0.25]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 0])
    rep = metrics.reliability_report(p.log()[None], y)
    ece = 0.5 * abs(0.9 - 0.5) + 0.25 * abs(0.62 - 1) + 0.25 * abs(0.75 - 1)       # 0.3575
    assert rep["ece"] == pytest.approx(ece, abs=1e-6)
    assert rep["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.62) + math.log(0.75)) / 4)
    assert rep["brier"] == pytest.approx((0.02 + 1.62 + 2 * 0.38 ** 2 + 2 * 0.25 ** 2) / 4)
    assert rep["accuracy"] == 0.75 and rep["mutual_information"] == 0.0


def test_accuracy_spread_across_particles():
    # four particles with accuracies 1, ¾, ½, ¼ on four examples
    y = torch.zeros(4, dtype=torch.long)
    right, wrong = torch.tensor([5.0, 0.0]), torch.tensor([0.0, 5.0])
    rows = [[right] * 4, [right] * 3 + [wrong], [right] * 2 + [wrong] * 2, [right] + [wrong] * 3]
    logits = torch.stack([torch.stack(r) for r in rows])
    rep = metrics.reliability_report(logits, y)
    accs = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    assert rep["accuracy_mean"] == pytest.approx(0.625)
    assert rep["accuracy_std"] == pytest.approx(float(accs.std()))
    lo, hi = torch.quantile(accs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert rep["accuracy_ci95"] == pytest.approx([lo, hi]) and 0.25 < lo < hi < 1.0


def test_reliability_diagram_png(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(3, 50, 4)
    y = torch.randint(0, 4, (50,))
    probs = metrics.predictive_mean(logits)
    assert torch.allclose(probs.sum(-1), torch.ones(50, dtype=torch.float64))
    path = metrics.plot_reliability_diagram({"a": probs, "b": logits[0].softmax(-1)}, y, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_metrics_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    # entropy: row 1 = ½·log 2 + 2·¼·log 4 = 1.5·log 2; row 2 = 0 (0·log 0 = 0)
    torch.testing.assert_close(metrics.entropy(p), torch.tensor([1.5 * math.log(2), 0.0], dtype=torch.float64))
    assert metrics.nll(p, y) == pytest.approx(math.log(4) / 2, rel=1e-14)
    # Brier: row 1 = ¼ + 9/16 + 1/16 = 7/8, row 2 = 0
    assert metrics.brier(p, y) == pytest.approx(7 / 16, rel=1e-14)
    # two members, certain of classes 0 and 1: MI = log 2; one member: 0
    logits = torch.stack([100.0 * F.one_hot(torch.zeros(3, dtype=torch.long), 3),
                          100.0 * F.one_hot(torch.ones(3, dtype=torch.long), 3)]).double()
    torch.testing.assert_close(metrics.mutual_information(logits), torch.full((3,), math.log(2), dtype=torch.float64))
    assert float(metrics.mutual_information(logits[:1]).abs().max()) < 1e-12


def test_ece_and_bins_are_one_number_on_edges_and_certain_rows():
    """Confidences exactly on bin edges, exactly 1, and random ones (float32 and float64): the ECE of the bins the
    diagram draws is torchmetrics' ECE, for several bin counts."""
    gen = torch.Generator().manual_seed(0)
    n = 400
    logits = 3 * torch.randn(n, 4, generator=gen)
    probs = logits.softmax(-1)
    edges = torch.tensor([0.4, 0.6, 0.8, 1.0, 1.0, 0.5])
    rest = (1 - edges) / 3
    probs[:6] = torch.stack([edges, rest, rest, rest], 1)
    y = torch.randint(0, 4, (n,), generator=gen)
    y[:3] = 0
    for p in (probs, probs.double()):
        for n_bins in (1, 5, 10, 15):
            b = metrics.calibration_bins(p, y, n_bins)
            assert b["ece"] == pytest.approx(metrics.ece(p, y, n_bins), abs=1e-6)
            assert float(b["fraction"].sum()) == pytest.approx(1.0) and b["accuracy"].shape == (n_bins + 1,)
            assert float(b["fraction"][-1]) == pytest.approx(2 / n)        # the two rows with confidence 1
    # a mean of softmaxes a hair above 1 is still a probability (torchmetrics would re-softmax it)
    ens = torch.stack([200.0 * F.one_hot(y, 4).double()] * 3)
    assert metrics.ece(metrics.predictive_mean(ens), y) == pytest.approx(0.0, abs=1e-7)


def test_diagram_legend_is_the_ece(tmp_path, monkeypatch):
    torch.manual_seed(1)
    probs = torch.randn(60, 3).softmax(-1)
    y = torch.randint(0, 3, (60,))
    labels = []
    import matplotlib.axes
    orig = matplotlib.axes.Axes.bar

    def spy(self, *args, **kwargs):
        if "label" in kwargs:
            labels.append(kwargs["label"])
        return orig(self, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    metrics.plot_reliability_diagram({"m": probs}, y, tmp_path / "d.png", n_bins=10)
    assert labels == [f"m (ECE {metrics.ece(probs, y, 10):.4f})"]


def test_bad_arguments():
    y = torch.zeros(5, dtype=torch.long)
    for bad, name in [(lambda: metrics.ece(torch.full((5, 3), 0.5), y, n_bins=0), "n_bins"),
                      (lambda: metrics.ece(torch.full((5, 3), 1.5), y), "probs"),
                      (lambda: metrics.nll(torch.full((5, 3), 0.3), torch.full((5,), 3)), "labels"),
                      (lambda: metrics.brier(torch.full((5, 3), 0.3), torch.zeros(4, dtype=torch.long)), "labels"),
                      (lambda: metrics.entropy(torch.ones(5)), "probs"),
                      (lambda: metrics.mutual_information(torch.randn(5, 3)), "logits"),
                      (lambda: metrics.reliability_report(torch.randn(5, 3), y), "logits"),
                      (lambda: metrics.reliability_report(torch.randn(2, 5, 3), torch.full((5,), 3)), "labels"),
                      (lambda: metrics.reliability_report(torch.full((2, 5, 3), float("nan")), y), "logits"),
                      (lambda: metrics.calibration_bins(torch.full((5, 3), 0.3), y.float()), "labels")]:
        with pytest.raises(ValueError, match=name):
            bad()
