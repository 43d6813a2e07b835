"""Offline data loading and its errors."""
import gzip

import numpy as np
import pytest
import torch

from fastbayes.apps import data


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_torchvision_layout(tmp_path, gz):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28))
    labels = np.arange(5) % 10
    _write_idx(raw / "t10k-images-idx3-ubyte", imgs, gz)
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels, gz)
    s = data.fashion_mnist("test", root=tmp_path)
    assert s.x.shape == (5, 1, 28, 28) and s.x.dtype == torch.float32
    torch.testing.assert_close(s.x[:, 0], torch.tensor(imgs / 255.0, dtype=torch.float32))
    assert s.y.tolist() == labels.tolist()


def test_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "nothing")
    monkeypatch.delenv("FASTBAYES_DATA", raising=False)
    with pytest.raises(data.DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("train", root=tmp_path)


def test_truncated_idx_refused(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(p)


def test_digits_split_is_deterministic_and_disjoint():
    tr, te = data.digits("train"), data.digits("test")
    assert len(tr) + len(te) == 1797 and tr.x.shape[1:] == (1, 28, 28)
    assert float(tr.x.max()) <= 1.0 and float(tr.x.min()) >= 0.0
    assert torch.equal(data.digits("test").y, te.y)


def test_real_fashion_mnist_if_installed():
    if not data.available()["fashion-mnist"]:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    te = data.fashion_mnist("test")
    assert te.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(te.y).tolist() == [1000] * 10
    assert abs(float(te.x.mean()) - 0.2860) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="dataset"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="split"):
        data.digits("val")
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(data.digits("test"), 1.5)
