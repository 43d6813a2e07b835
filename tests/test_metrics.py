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


# --- uncertainty as a detector: AUROC, misclassification / OOD detection, selective prediction, temperature -------

def _np_entropy(p):
    import numpy as np
    p = np.asarray(p, dtype=np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def test_auroc_by_hand():
    y = torch.tensor([0, 0, 1, 1])
    assert metrics.auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)     # 3 of 4 pairs ordered
    assert metrics.auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), y) == 1.0                      # perfect
    assert metrics.auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), y) == 0.0                      # reversed
    assert metrics.auroc(torch.full((4,), 0.3), y) == 0.5                                   # all ties
    # positives {1, 2}, negatives {0, 1}: pairs 1>0, 2>0, 2>1 and one tie (½): 3.5 / 4
    assert metrics.auroc(torch.tensor([1, 0, 1, 2]), torch.tensor([False, False, True, True])) == 0.875
    assert metrics.auroc(torch.tensor([0.0, float("inf")]), torch.tensor([0, 1])) == 1.0


def test_auroc_random_scores_near_half():
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    a = metrics.auroc(torch.randn(n, generator=gen), torch.randint(0, 2, (n,), generator=gen))
    assert a == pytest.approx(0.5, abs=0.01)          # the AUROC's std here is about 1/sqrt(3 n) ≈ 0.003


def test_auroc_matches_sklearn_with_ties():
    skm = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(1)
    for n, levels in [(50, 3), (500, 20), (2000, 10_000)]:
        s = torch.randint(0, levels, (n,), generator=gen).float() / levels       # many ties for few levels
        y = (torch.rand(n, generator=gen) < 0.3 + 0.4 * s).long()
        assert metrics.auroc(s, y) == pytest.approx(skm.roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
        assert metrics.auroc(s.double(), y.bool()) == pytest.approx(skm.roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_auroc_bad_arguments():
    s = torch.rand(6)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    for bad, name in [(lambda: metrics.auroc(s, torch.zeros(6, dtype=torch.long)), "labels"),
                      (lambda: metrics.auroc(s, torch.ones(6, dtype=torch.bool)), "labels"),
                      (lambda: metrics.auroc(s, torch.tensor([0, 1, 2, 0, 1, 0])), "labels"),
                      (lambda: metrics.auroc(s, y.float()), "labels"),
                      (lambda: metrics.auroc(s, y[:5]), "labels"),
                      (lambda: metrics.auroc(s[None], y), "scores"),
                      (lambda: metrics.auroc(s.tolist(), y), "scores"),
                      (lambda: metrics.auroc(torch.tensor([0.1, float("nan"), 0, 0, 0, 0]), y), "scores")]:
        with pytest.raises(ValueError, match=name):
            bad()


def test_misclassification_auroc():
    skm = pytest.importorskip("sklearn.metrics")
    # wrong predictions (rows 1 and 3) are the uncertain ones: perfect error detection
    p = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.1, 0.9], [0.4, 0.6], [0.99, 0.01]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 0])
    assert metrics.misclassification_auroc(p, y) == 1.0
    assert metrics.misclassification_auroc(p, 1 - y) == 0.0            # now the confident rows are the wrong ones
    gen = torch.Generator().manual_seed(2)
    p = (2 * torch.randn(300, 5, generator=gen)).softmax(-1)
    y = torch.randint(0, 5, (300,), generator=gen)
    wrong = (p.argmax(-1) != y).numpy()
    want = skm.roc_auc_score(wrong, _np_entropy(p.double().numpy()))
    assert metrics.misclassification_auroc(p, y) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="labels"):
        metrics.misclassification_auroc(p, p.argmax(-1))                  # no errors to detect


def test_ood_auroc():
    skm = pytest.importorskip("sklearn.metrics")
    confident = F.one_hot(torch.arange(6) % 3, 3).double() * 0.9 + 0.1 / 3
    uniform = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    assert metrics.ood_auroc(confident, uniform) == 1.0
    assert metrics.ood_auroc(uniform, confident) == 0.0
    gen = torch.Generator().manual_seed(3)
    p_in = (3 * torch.randn(200, 4, generator=gen)).softmax(-1)
    p_out = torch.randn(150, 4, generator=gen).softmax(-1)
    h = _np_entropy(torch.cat([p_in, p_out]).double().numpy())
    want = skm.roc_auc_score([0] * 200 + [1] * 150, h)
    assert metrics.ood_auroc(p_in, p_out) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="probs_out"):
        metrics.ood_auroc(p_in, p_out[:, :3].softmax(-1))
    with pytest.raises(ValueError, match="probs_in"):
        metrics.ood_auroc(p_in[:, 0], p_out)
    with pytest.raises(ValueError, match="probs_out"):
        metrics.ood_auroc(p_in, torch.full((3, 4), 2.0))


def test_accuracy_coverage_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right), given shuffled
    p = torch.tensor([[0.3, 0.7], [0.9, 0.1], [0.4, 0.6], [0.8, 0.2]], dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 1])
    r = metrics.accuracy_coverage(p, y)
    acc = [1.0, 1 / 2, 2 / 3, 3 / 4]
    torch.testing.assert_close(r["coverage"], torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(r["accuracy"], torch.tensor(acc, dtype=torch.float64))
    torch.testing.assert_close(r["confidence"], torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64))
    assert r["area"] == pytest.approx(sum(acc) / 4)
    assert r["aurc"] == pytest.approx(1 - sum(acc) / 4)
    # two rows tied at 0.9, one right and one wrong: either order is equally likely, so ½ at coverage ⅓
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    r = metrics.accuracy_coverage(p, torch.tensor([1, 0, 0]))
    torch.testing.assert_close(r["accuracy"], torch.tensor([0.5, 0.5, 2 / 3], dtype=torch.float64))
    r = metrics.accuracy_coverage(p, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(r["accuracy"], torch.tensor([0.5, 0.5, 2 / 3], dtype=torch.float64))


def test_accuracy_coverage_ties_are_the_mean_over_orders():
    """Oracle: the accuracy at each coverage averaged over every order of the examples that sorts the confidences
    descending (all permutations of each tie group)."""
    import itertools

    gen = torch.Generator().manual_seed(4)
    conf = torch.tensor([0.9, 0.9, 0.9, 0.7, 0.7, 0.6, 0.5, 0.5], dtype=torch.float64)
    right = torch.randint(0, 2, (8,), generator=gen)
    right[:3] = torch.tensor([1, 0, 0])
    p = torch.stack([conf, 1 - conf], 1)
    y = torch.where(right.bool(), 0, 1)
    curves = []
    for order in itertools.permutations(range(8)):
        if all(conf[order[i]] >= conf[order[i + 1]] for i in range(7)):
            hits = right[list(order)].double().cumsum(0)
            curves.append(hits / torch.arange(1, 9))
    want = torch.stack(curves).mean(0)
    r = metrics.accuracy_coverage(p, y)
    torch.testing.assert_close(r["accuracy"], want)
    perm = torch.randperm(8, generator=gen)
    torch.testing.assert_close(metrics.accuracy_coverage(p[perm], y[perm])["accuracy"], want)
    with pytest.raises(ValueError, match="probs"):
        metrics.accuracy_coverage(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def _calibrated(n=20_000, classes=10, seed=0):
    """Logits z ~ 2·N(0, I) and labels y ~ Categorical(softmax(z)): z is calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, classes, generator=gen, dtype=torch.float64)
    return z, torch.multinomial(z.softmax(-1), 1, generator=gen)[:, 0]


def _np_nll(logits, labels, t=1.0):
    import numpy as np
    from scipy.special import log_softmax
    lp = log_softmax(np.asarray(logits, dtype=np.float64) / t, axis=-1)
    return float(-lp[np.arange(len(labels)), np.asarray(labels)].mean())


def test_fit_temperature_recovers_overconfidence():
    optimize = pytest.importorskip("scipy.optimize")
    z, y = _calibrated()
    over = (5 * z).float()
    t = metrics.fit_temperature(over, y)
    assert t == pytest.approx(5.0, rel=0.05)
    # scipy's bounded minimiser of the same NLL over log T
    res = optimize.minimize_scalar(lambda u: _np_nll(over.numpy(), y.numpy(), float(__import__("numpy").exp(u))),
                                   bounds=(math.log(1e-2), math.log(1e2)), method="bounded",
                                   options={"xatol": 1e-10})
    assert t == pytest.approx(math.exp(res.x), rel=1e-5)
    assert _np_nll(over.numpy(), y.numpy(), t) < _np_nll(over.numpy(), y.numpy())
    assert metrics.nll((over / t).softmax(-1), y) < metrics.nll(over.softmax(-1), y)
    assert metrics.fit_temperature(over, y) == t                        # deterministic
    assert metrics.fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    # an ensemble of identical members is the model itself
    assert metrics.fit_temperature(over[None].expand(3, -1, -1), y) == pytest.approx(t, rel=1e-6)


def test_fit_temperature_bounds_and_bad_arguments():
    y = torch.tensor([0, 2, 1, 2, 0])
    # separable data: the NLL falls as T -> 0, so the fit stops at the lower bound
    assert metrics.fit_temperature(F.one_hot(y, 3).float(), y, bounds=(0.1, 10.0)) == pytest.approx(0.1)
    logits = torch.randn(5, 3)
    for bad, name in [(lambda: metrics.fit_temperature(logits, y[:4]), "labels"),
                      (lambda: metrics.fit_temperature(logits.long(), y), "logits"),
                      (lambda: metrics.fit_temperature(logits[0], y), "logits"),
                      (lambda: metrics.fit_temperature(logits, torch.tensor([0, 1, 2, 3, 0])), "labels"),
                      (lambda: metrics.fit_temperature(logits, y.float()), "labels"),
                      (lambda: metrics.fit_temperature(torch.full((5, 3), float("inf")), y), "logits"),
                      (lambda: metrics.fit_temperature(logits, y, bounds=(0.0, 1.0)), "bounds"),
                      (lambda: metrics.fit_temperature(logits, y, bounds=(2.0, 1.0)), "bounds"),
                      (lambda: metrics.fit_temperature(logits, y, tol=0), "tol")]:
        with pytest.raises(ValueError, match=name):
            bad()


def test_report_misclassification_and_ood_auroc():
    gen = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(4, 80, 5, generator=gen)
    y = torch.randint(0, 5, (80,), generator=gen)
    ood = torch.randn(4, 30, 5, generator=gen)
    base = metrics.reliability_report(logits, y)
    assert not {"misclassification_auroc", "ood_auroc", "n_ood_examples"} & set(base)    # opt-in: same keys as before
    rep = metrics.reliability_report(logits, y, detect_errors=True)
    mean = metrics.predictive_mean(logits)
    assert rep["misclassification_auroc"] == metrics.misclassification_auroc(mean, y)
    assert {k: v for k, v in rep.items() if k != "misclassification_auroc"} == base
    rep2 = metrics.reliability_report(logits, y, ood_logits=ood)
    assert rep2["ood_auroc"] == metrics.ood_auroc(mean, metrics.predictive_mean(ood))
    assert rep2["n_ood_examples"] == 30
    assert {k: v for k, v in rep2.items() if k not in ("ood_auroc", "n_ood_examples")} == base
    both = metrics.reliability_report(logits, y, 10, detect_errors=True, ood_logits=ood)
    assert both["misclassification_auroc"] == rep["misclassification_auroc"] and both["ood_auroc"] == rep2["ood_auroc"]
    # all predictions right: no errors to detect, reported as None
    y1 = torch.tensor([0, 2, 1])
    rep1 = metrics.reliability_report(9.0 * F.one_hot(y1, 3).float()[None], y1, detect_errors=True)
    assert rep1["misclassification_auroc"] is None
    for bad in (ood[:3], ood[..., :4], ood[0], ood.long(), torch.full((4, 2, 5), float("nan"))):
        with pytest.raises(ValueError, match="ood_logits"):
            metrics.reliability_report(logits, y, ood_logits=bad)
    with pytest.raises(ValueError, match="detect_errors"):
        metrics.reliability_report(logits, y, detect_errors=1)


def test_accuracy_coverage_and_ood_entropy_pngs(tmp_path):
    gen = torch.Generator().manual_seed(6)
    y = torch.randint(0, 4, (60,), generator=gen)
    a = (3 * torch.randn(60, 4, generator=gen)).softmax(-1)
    b = torch.randn(60, 4, generator=gen).softmax(-1)
    path = metrics.plot_accuracy_coverage({"a": (a, y), "b": (b, y)}, tmp_path / "sub" / "ac.png")
    assert path == tmp_path / "sub" / "ac.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hist = {"a": (metrics.entropy(a), metrics.entropy(b)), "b": (metrics.entropy(b), metrics.entropy(a[:20]))}
    path = metrics.plot_ood_entropy(hist, tmp_path / "ood.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = metrics.plot_ood_entropy({"one": hist["a"]}, tmp_path / "ood1.png", n_bins=5, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad, name in [(lambda: metrics.plot_accuracy_coverage({}, tmp_path / "x.png"), "curves"),
                      (lambda: metrics.plot_accuracy_coverage({"a": a}, tmp_path / "x.png"), "curves"),
                      (lambda: metrics.plot_accuracy_coverage({"a": (a, y[:5])}, tmp_path / "x.png"), "labels"),
                      (lambda: metrics.plot_ood_entropy({}, tmp_path / "x.png"), "hist"),
                      (lambda: metrics.plot_ood_entropy({"a": (y, y)}, tmp_path / "x.png"), "hist"),
                      (lambda: metrics.plot_ood_entropy({"a": hist["a"]}, tmp_path / "x.png", n_bins=0), "n_bins")]:
        with pytest.raises(ValueError, match=name):
            bad()
