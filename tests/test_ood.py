"""OOD sets (fastbayes.ood) against independent oracles: numpy's rot90, scikit-learn's digits, the batch's per-pixel
statistics."""
import sys

import numpy as np
import pytest
import torch

from fastbayes import ood


def _fashion_like(n=64, h=28, w=28, c=1, seed=0):
    """[n, c, h, w] float32 in [0, 1] reaching both 0 and 1 (a dark background, a bright object)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, c, h, w)
    x[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = torch.rand(n, c, h - 2 * (h // 4), w - 2 * (w // 4),
                                                              generator=gen)
    x[0, 0, h // 2, w // 2] = 1.0
    return x


def test_shapes_dtypes_and_names():
    x = _fashion_like()
    sets = ood.ood_sets(x)
    assert tuple(sets) == ood.OOD_SETS == ("digits", "rotated", "noise")
    for name, t in sets.items():
        assert t.shape == x.shape and t.dtype == x.dtype and t.device == x.device and t.is_contiguous(), name
    sets = ood.ood_sets(x.double(), n=10)
    assert all(t.shape == (10, 1, 28, 28) and t.dtype == torch.float64 for t in sets.values())
    assert tuple(ood.ood_sets(x, sets="noise")) == ("noise",)


def test_deterministic_by_seed_and_independent_of_the_other_sets():
    x = _fashion_like()
    a, b = ood.ood_sets(x, seed=3, n=20), ood.ood_sets(x, seed=3, n=20)
    c = ood.ood_sets(x, seed=4, n=20)
    for name in ood.OOD_SETS:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["noise"], c["noise"]) and not torch.equal(a["digits"], c["digits"])
    assert not torch.equal(a["rotated"], c["rotated"])               # a different random subset of x
    only = ood.ood_sets(x, seed=3, n=20, sets=("noise", "rotated"))
    assert torch.equal(only["noise"], a["noise"]) and torch.equal(only["rotated"], a["rotated"])


def test_rotated_is_numpys_rot90():
    x = _fashion_like(n=8)
    for angle in (90, 180, 270):
        got = ood.ood_sets(x, sets="rotated", angle=angle)["rotated"]
        assert torch.equal(got, torch.from_numpy(np.rot90(x.numpy(), angle // 90, axes=(2, 3)).copy()))
    # one lit pixel at the top right moves to the top left after a quarter turn counter-clockwise
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 0, 27] = 1.0
    assert ood.ood_sets(img, sets="rotated")["rotated"][0, 0, 0, 0] == 1.0
    # a subset (n < N) is made of rotated images of x
    sub = ood.ood_sets(x, sets="rotated", n=3, seed=1)["rotated"]
    rot = torch.rot90(x, 1, dims=(-2, -1))
    assert all(any(torch.equal(s, r) for r in rot) for s in sub)


def test_digits_are_sklearns_in_x_ins_range():
    datasets = pytest.importorskip("sklearn.datasets")
    raw = datasets.load_digits().images / 16.0                          # [1797, 8, 8] in [0, 1]
    # at 8×8 no resizing: every image is one of sklearn's, mapped onto x_in's range
    x8 = _fashion_like(n=50, h=8, w=8)
    lo, hi = float(x8.min()), float(x8.max())
    assert (lo, hi) == (0.0, 1.0)
    d8 = ood.ood_sets(x8, sets="digits", seed=2)["digits"][:, 0].double().numpy()
    flat = raw.reshape(len(raw), -1)
    for img in d8:
        assert np.abs(flat - img.reshape(-1)).max(axis=1).min() < 1e-6
    # normalised inputs: the same digits under the same affine map (here x' = (x − 0.286) / 0.353)
    x = _fashion_like(n=50)
    xn = (x - 0.286) / 0.353
    d, dn = ood.ood_sets(x, sets="digits")["digits"], ood.ood_sets(xn, sets="digits")["digits"]
    torch.testing.assert_close(dn, (d - 0.286) / 0.353, rtol=1e-5, atol=1e-5)
    assert float(dn.min()) >= float(xn.min()) - 1e-6 and float(dn.max()) <= float(xn.max()) + 1e-6
    assert float(dn.min()) == pytest.approx(float(xn.min()), abs=1e-6)    # the digits' background
    # more images than sklearn has: each used once or twice
    d = ood.ood_sets(_fashion_like(n=2000, h=8, w=8), sets="digits")["digits"].reshape(2000, -1)
    assert d.shape == (2000, 64) and torch.unique(d, dim=0).shape[0] <= 1797


def test_noise_has_x_ins_per_pixel_statistics():
    gen = torch.Generator().manual_seed(7)
    mean = torch.linspace(-1, 2, 16 * 16).reshape(1, 1, 16, 16)
    std = torch.linspace(0.1, 1.5, 16 * 16).reshape(1, 1, 16, 16).flip(-1)
    x = mean + std * torch.randn(4000, 1, 16, 16, generator=gen)
    noise = ood.ood_sets(x, sets="noise", seed=0)["noise"].double()
    xs, xm = x.double().std(0, correction=0), x.double().mean(0)
    # 4000 draws per pixel: standard error of a mean ≈ std / 63, of a std ≈ std / 89
    assert float(((noise.mean(0) - xm).abs() / xs).max()) < 0.1
    assert float(((noise.std(0) - xs).abs() / xs).max()) < 0.1
    # a constant pixel stays constant
    x = _fashion_like()
    assert torch.equal(ood.ood_sets(x, sets="noise")["noise"][:, 0, 0, 0], torch.zeros(len(x)))


def test_other_sizes_and_channels():
    x = _fashion_like(n=12, h=16, w=16, c=3)
    for name, t in ood.ood_sets(x).items():
        assert t.shape == (12, 3, 16, 16), name
    x = _fashion_like(n=6, h=20, w=24)
    sets = ood.ood_sets(x, angle=180)
    assert all(t.shape == (6, 1, 20, 24) for t in sets.values())
    assert torch.equal(sets["rotated"], x.flip(-1, -2))
    small = ood.ood_sets(_fashion_like(n=5, h=4, w=4), sets="digits")["digits"]
    assert small.shape == (5, 1, 4, 4) and float(small.min()) >= 0 and float(small.max()) <= 1
    with pytest.raises(ValueError, match="angle"):
        ood.ood_sets(x)                                                   # 90° would make it 24×20


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)                     # import sklearn... raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    x = _fashion_like(n=4)
    with pytest.raises(ImportError, match="scikit-learn"):
        ood.ood_sets(x)
    assert set(ood.ood_sets(x, sets=("rotated", "noise"))) == {"rotated", "noise"}


def test_bad_arguments():
    x = _fashion_like(n=5)
    for bad, err, msg in [(lambda: ood.ood_sets(x.numpy()), TypeError, "x_in"),
                          (lambda: ood.ood_sets((x * 255).to(torch.uint8)), ValueError, "x_in"),
                          (lambda: ood.ood_sets(x[:, 0]), ValueError, "x_in"),
                          (lambda: ood.ood_sets(x[:0]), ValueError, "x_in"),
                          (lambda: ood.ood_sets(torch.full((2, 1, 4, 4), float("nan"))), ValueError, "x_in"),
                          (lambda: ood.ood_sets(x, seed=1.0), TypeError, "seed"),
                          (lambda: ood.ood_sets(x, seed=True), TypeError, "seed"),
                          (lambda: ood.ood_sets(x, seed=-1), ValueError, "seed"),
                          (lambda: ood.ood_sets(x, n=0), ValueError, "^n must"),
                          (lambda: ood.ood_sets(x, n=6), ValueError, "^n must"),
                          (lambda: ood.ood_sets(x, n=2.0), TypeError, "^n must"),
                          (lambda: ood.ood_sets(x, sets=("blur",)), ValueError, "sets"),
                          (lambda: ood.ood_sets(x, sets=()), ValueError, "sets"),
                          (lambda: ood.ood_sets(x, sets=("noise", "noise")), ValueError, "sets"),
                          (lambda: ood.ood_sets(x, angle=45), ValueError, "angle"),
                          (lambda: ood.ood_sets(x, angle=0), ValueError, "angle")]:
        with pytest.raises(err, match=msg):
            bad()
