"""Data sets that work offline: Fashion-MNIST from local idx files, scikit-learn's digits as the fallback.

Nothing is downloaded.  Fashion-MNIST is looked for, in order, in ``root`` (if given), ``$FASTBAYES_DATA``,
Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``) and the usual torchvision
layout ``<root>/FashionMNIST/raw``; files may be gzipped or not.  Images come back as float32 [N, 1, 28, 28] in [0, 1]
and labels as int64.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("fashion-mnist", "digits")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DatasetNotFound(FileNotFoundError):
    """A data set's files are not on this machine; the message says how to get them."""


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array (big-endian header, uint8 payload)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if data[2] != 0x08:
        raise ValueError(f"{path}: only uint8 idx payloads are supported")
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _candidates(root) -> list[Path]:
    out = []
    for base in ([root] if root else []) + ([os.environ["FASTBAYES_DATA"]] if os.environ.get("FASTBAYES_DATA") else []):
        base = Path(base)
        out += [base, base / "fashion-mnist", base / "FashionMNIST" / "raw"]
    return out + [DEBIAN_FASHION]


def _find(stem: str, root) -> Path | None:
    for d in _candidates(root):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> Split:
    """Fashion-MNIST ``split`` ("train": 60,000 or "test": 10,000 images) from local files."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths = [_find(stem, root) for stem in _FILES[split]]
    if None in paths:
        looked = ", ".join(str(p) for p in _candidates(root))
        raise DatasetNotFound(
            f"Fashion-MNIST {split} files not found (looked in: {looked}). Install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass root= / set FASTBAYES_DATA to a "
            "folder holding the idx files (e.g. a torchvision FashionMNIST root), or use dataset='digits'.")
    images, labels = (read_idx(p) for p in paths)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def digits(split: str = "train", size: int = 28, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's bundled 8×8 digits (1,797 images), upsampled to ``size``×``size`` in [0, 1], split
    deterministically into train/test."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DatasetNotFound("the digits data set needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return Split(x[idx].contiguous(), y[idx].contiguous())


def available(root=None) -> dict[str, bool]:
    """Which data sets can be loaded here."""
    try:
        import sklearn  # noqa: F401
        has_digits = True
    except ImportError:
        has_digits = False
    return {"fashion-mnist": all(_find(s, root) for s in _FILES["train"] + _FILES["test"]), "digits": has_digits}


def load(name: str, split: str = "train", root=None) -> Split:
    """Load data set ``name`` ("fashion-mnist" or "digits")."""
    if name == "fashion-mnist":
        return fashion_mnist(split, root)
    if name == "digits":
        return digits(split)
    raise ValueError(f"dataset must be one of {NAMES}, got {name!r}")


def bmrs_preprocess(split: Split, size: int = 32) -> Split:
    """BMRS's preprocessing (released ``train.py``): images resized to ``size``×``size`` (bilinear, antialiased) and
    scaled as (x − 127) / 255 from 0–255 pixels, i.e. x − 127/255 for our [0, 1] images."""
    x = split.x
    if tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return Split((x - 127.0 / 255.0).contiguous(), split.y)


def train_val_split(data: Split, val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """A seeded random split (BMRS protocol: 80/20 of the official training set)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(data)))
    v, t = perm[:n_val], perm[n_val:]
    return Split(data.x[t], data.y[t]), Split(data.x[v], data.y[v])
