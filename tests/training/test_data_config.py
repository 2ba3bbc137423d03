"""Data readers (idx, CIFAR batches, digits, Fashion-MNIST when installed) and config round trips."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from training.run_config import ConfigError, RunConfig, default_beta
from training.data import (
    DataError,
    check_available,
    load_dataset,
    read_idx,
    train_val_split,
)


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as fh:
        fh.write(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_reads_as_mnist(tmp_path, gz):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for prefix, n in (("train", 20), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n), gz)
    ds = load_dataset("mnist", "train", tmp_path, resize=32)
    assert len(ds) == 20 and ds.input_shape == (1, 32, 32)
    x, y = ds.batch(slice(0, 4))
    assert x.shape == (4, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.int64
    assert np.array_equal(read_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}"), load_dataset("mnist", "test", tmp_path).y.numpy())


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        check_available("mnist", tmp_path / "nope")
    with pytest.raises(DataError, match="cifar-10"):
        check_available("cifar10", tmp_path)


def test_cifar10_batches(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 2)]:
        d = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(d, fh)
    tr = load_dataset("cifar10", "train", tmp_path)
    assert len(tr) == 15 and tr.input_shape == (3, 32, 32)


def test_digits_split_and_val_split():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(tr) + len(te) == 1797 and len(te) == 360
    a, b = train_val_split(len(tr), 0.1, seed=3)
    assert len(set(a.tolist()) & set(b.tolist())) == 0 and len(a) + len(b) == len(tr)
    assert torch.equal(b, train_val_split(len(tr), 0.1, seed=3)[1])


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_installed():
    te = load_dataset("fashion-mnist", "test")
    assert len(te) == 10_000 and te.input_shape == (1, 28, 28) and int(te.y.max()) == 9


def test_config_round_trips(tmp_path):
    cfg = RunConfig(model="vgg8", method="ovf", sigma=0.25, ovf_deltas=(0.2, 0.1), resize=32)
    cfg.save(tmp_path)
    assert RunConfig.load(tmp_path / "config.json") == cfg
    assert RunConfig.load(tmp_path / "config.toml") == cfg
    assert cfg.beta_value == 1e-3 and cfg.lr_value == 1e-3
    assert default_beta("resnet18", "irs", "cifar10") == 1e-3 and default_beta("vgg8", "irs", "mnist") == 1e-2
    with pytest.raises(ConfigError, match="unknown method"):
        RunConfig(method="magic")
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="sigma"):
        RunConfig(sigma=-1.0)


def _idx_file(path, header: bytes, body: bytes = b""):
    path.write_bytes(header + body)
    return path


@pytest.mark.parametrize("header,body,words", [
    (b"\x00\x00\x08\xc8", b"\x00" * 64, "bad idx header"),                      # 200 dimensions
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 9999, 28, 28), b"\x00" * 100, "header says 9999 x 28 x 28"),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 4000000000, 4000000000, 4000000000), b"", "truncated or damaged"),
    (b"\x00\x00\x08\x02\x00", b"", "bad idx header"),                           # header cut short
])
def test_idx_header_errors_are_one_short_line(tmp_path, header, body, words):
    from training.data import read_idx

    with pytest.raises(DataError, match=words) as e:
        read_idx(_idx_file(tmp_path / "x-idx3-ubyte", header, body))
    msg = str(e.value)
    assert len(msg) < 200 and "\n" not in msg and "x-idx3-ubyte" in msg


def test_damaged_gzip_idx_names_the_file(tmp_path):
    from training.data import read_idx

    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        read_idx(p)


def test_labels_outside_0_9_are_refused(tmp_path):
    from training.data import load_dataset

    n = 3
    _idx_file(tmp_path / "train-images-idx3-ubyte", b"\x00\x00\x08\x03" + struct.pack(">3I", n, 28, 28), b"\x00" * n * 784)
    _idx_file(tmp_path / "train-labels-idx1-ubyte", b"\x00\x00\x08\x01" + struct.pack(">I", n), bytes([1, 2, 200]))
    with pytest.raises(DataError, match="outside 0..9"):
        load_dataset("mnist", "train", tmp_path)
