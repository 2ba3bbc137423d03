"""Data sets held in memory as tensors; nothing is downloaded at run time.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes). It has no
  official test split: a fixed permutation (seed 0) puts 20 % (360 images) in the test set.
* ``fashion-mnist``: MNIST-format idx files (gzip or not). Default folder
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
* ``mnist``: any folder of MNIST-format idx files (``--data-dir``; default ``data/mnist``).
* ``cifar10``: the python batch files (``data_batch_1..5``, ``test_batch``) in a folder
  (``--data-dir``; the folder or its ``cifar-10-batches-py`` subfolder; default ``data/cifar10``).

Images are stored as ``uint8`` ``[N, C, H, W]`` (digits: values 0..16 as uint8) and turned into
float on the fly per batch by :meth:`ImageSet.batch`: ``x / full_scale`` normalised with mean 0.5
and std 0.5 (the authors' MNIST normalisation), then optionally resized (bilinear,
``torch.nn.functional.interpolate``) to ``resize x resize`` (e.g. MNIST to 32x32 for VGG-8).
"""
from __future__ import annotations

import gzip
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "data/mnist",
    "cifar10": "data/cifar10",
}
HOW_TO_GET = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass "
    "--data-dir to a folder of the idx files (train-images-idx3-ubyte[.gz], ...)",
    "mnist": "pass --data-dir to a folder holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
    "cifar10": "unpack cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and pass "
    "--data-dir to the cifar-10-batches-py folder",
}


class DataError(RuntimeError):
    """A data set that is missing or malformed (one-line message saying how to get it)."""


@dataclass(frozen=True)
class ImageSet:
    """Images ``x`` (uint8 ``[N, C, H, W]``), labels ``y`` (int64 ``[N]``), and how to scale them."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    full_scale: float = 255.0
    resize: int | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the batches this set yields (after resizing)."""
        c, h, w = self.x.shape[1:]
        return (int(c), self.resize or int(h), self.resize or int(w))

    def subset(self, idx: torch.Tensor | np.ndarray | slice) -> ImageSet:
        return ImageSet(self.x[idx], self.y[idx], self.num_classes, self.full_scale, self.resize)

    def batch(self, idx: torch.Tensor | slice, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Float images ``[B, C, H', W']`` (normalised to about [-1, 1]) and labels ``[B]`` on ``device``."""
        x = self.x[idx].to(device=device, non_blocking=True).float().div_(self.full_scale).sub_(0.5).div_(0.5)
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        return x, self.y[idx].to(device=device, non_blocking=True)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device), self.num_classes, self.full_scale, self.resize)


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, resize: int | None = None) -> ImageSet:
    """Load ``split`` (``"train"`` or ``"test"``) of data set ``name``; raises :class:`DataError`."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return _digits(split, resize)
    if name in ("fashion-mnist", "mnist"):
        folder = Path(data_dir or DEFAULT_DIRS[name])
        x, y = _idx_pair(folder, name, "train" if split == "train" else "t10k")
        return ImageSet(torch.from_numpy(x[:, None]), torch.from_numpy(y.astype(np.int64)), 10, 255.0, resize)
    if name == "cifar10":
        x, y = _cifar10(Path(data_dir or DEFAULT_DIRS["cifar10"]), split)
        return ImageSet(torch.from_numpy(x), torch.from_numpy(y), 10, 255.0, resize)
    raise DataError(f"unknown data set {name!r} (choose from digits, fashion-mnist, mnist, cifar10)")


def check_available(name: str, data_dir: str | Path | None = None) -> None:
    """Raise :class:`DataError` (one line, how to get it) when data set ``name`` is not on disk."""
    if name == "digits":
        return
    if name in ("fashion-mnist", "mnist"):
        folder = Path(data_dir or DEFAULT_DIRS[name])
        for prefix in ("train", "t10k"):
            for kind in ("images-idx3", "labels-idx1"):
                _find_idx(folder, name, prefix, kind)
    elif name == "cifar10":
        _cifar_folder(Path(data_dir or DEFAULT_DIRS["cifar10"]))
    else:
        raise DataError(f"unknown data set {name!r}")


def train_val_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a seeded random split of ``n`` training images."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(val_fraction * n)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# ------------------------------------------------------------------------ digits

def load_splits(cfg) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Train, validation and test sets as a :class:`training.run_config.RunConfig` says (the validation
    split carved from the training set by ``val_fraction`` and ``seed``, never from the test set)."""
    full = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.resize)
    if cfg.train_limit:
        full = full.subset(slice(0, cfg.train_limit))
    test = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.resize)
    if cfg.test_limit:
        test = test.subset(slice(0, cfg.test_limit))
    tr, va = train_val_split(len(full), cfg.val_fraction, cfg.seed)
    return full.subset(tr), full.subset(va), test

def _digits(split: str, resize: int | None) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.images, dtype=np.uint8)[:, None]  # [1797, 1, 8, 8], values 0..16
    y = np.asarray(d.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = 360
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    idx = np.sort(idx)
    return ImageSet(torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy()), 10, 16.0, resize)


# --------------------------------------------------------------------------- idx
def _find_idx(folder: Path, name: str, prefix: str, kind: str) -> Path:
    if not folder.is_dir():
        raise DataError(f"{name}: no folder {folder}; {HOW_TO_GET[name]}")
    stem = kind.replace("-idx", ".idx")  # both "train-images-idx3-ubyte" and "train-images.idx3-ubyte"
    for base in (f"{prefix}-{kind}-ubyte", f"{prefix}-{stem}-ubyte"):
        for suffix in ("", ".gz"):
            p = folder / (base + suffix)
            if p.is_file():
                return p
    raise DataError(f"{name}: no {prefix}-{kind}-ubyte[.gz] in {folder}; {HOW_TO_GET[name]}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (gzip or not) into a numpy array of its stored dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:  # unreadable, a folder, a damaged gzip stream
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an idx file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DataError(f"{path}: unknown idx data type 0x{raw[2]:02x}")
    ndim = raw[3]
    if not 1 <= ndim <= 4 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: bad idx header ({ndim} dimensions, {len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        said = " x ".join(map(str, shape)) if len(str(shape)) < 60 else f"{math.prod(shape)} values"
        raise DataError(f"{path}: {data.size} values, but its header says {said} (truncated or damaged)")
    return data.reshape(shape)


def _idx_pair(folder: Path, name: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(_find_idx(folder, name, prefix, "images-idx3"))
    y = read_idx(_find_idx(folder, name, prefix, "labels-idx1"))
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: images {x.shape} and labels {y.shape} in {folder} do not match")
    if y.size and not (0 <= int(y.min()) and int(y.max()) <= 9):
        raise DataError(f"{name}: labels in {folder} outside 0..9 (min {int(y.min())}, max {int(y.max())})")
    return np.array(x, dtype=np.uint8), np.array(y)  # copies: frombuffer arrays are read-only


# ------------------------------------------------------------------------- cifar
def _cifar_folder(folder: Path) -> Path:
    for f in (folder, folder / "cifar-10-batches-py"):
        if (f / "data_batch_1").is_file() and (f / "test_batch").is_file():
            return f
    raise DataError(f"cifar10: no data_batch_1/test_batch in {folder}; {HOW_TO_GET['cifar10']}")


def _cifar10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    f = _cifar_folder(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        p = f / n
        if not p.is_file():
            raise DataError(f"cifar10: missing {p}; {HOW_TO_GET['cifar10']}")
        try:
            with open(p, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        except Exception as e:  # noqa: BLE001 - a damaged or foreign pickle raises many kinds
            raise DataError(f"{p}: not a CIFAR-10 batch ({type(e).__name__})") from None
        if len(ys[-1]) != len(xs[-1]) or (ys[-1].size and not 0 <= ys[-1].min() <= ys[-1].max() <= 9):
            raise DataError(f"{p}: {len(xs[-1])} images, {len(ys[-1])} labels (labels must lie in 0..9)")
    return np.concatenate(xs), np.concatenate(ys)
