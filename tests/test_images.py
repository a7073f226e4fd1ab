"""Tests for dgkd.images: fake files in each dataset's real on-disk format, read via torchvision.

Nothing is downloaded: every test writes a few tiny images in the exact layout torchvision 0.29
expects, so the whole path (file names, parsing, md5 gate, tensor conversion) is exercised offline.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F
import torchvision.datasets.cifar
import torchvision.datasets.svhn

from dgkd.data import load_splits
from dgkd.images import (
    IMAGE_DATASETS,
    DatasetMissingError,
    ImageArrays,
    augment_crop_flip,
    load_image_dataset,
)

N_TRAIN_PER_FILE = 6
N_TEST = 5


def _exists_only(fpath: str | os.PathLike[str], md5: str | None = None) -> bool:
    return os.path.isfile(fpath)


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disable torchvision's md5 verification for CIFAR and SVHN (fake files can't match).

    Production code keeps the check. Patching the module-level ``check_integrity`` (not only
    ``CIFAR10._check_integrity``) is needed because ``CIFAR10._load_meta`` calls it directly for
    ``batches.meta``/``meta``. Existence is still checked, so missing files still fail.
    """
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", _exists_only)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", _exists_only)


def _pickle(path: Path, obj: dict) -> None:
    # The real files are Python 2 pickles that torchvision reads with encoding="latin1", which
    # yields str keys ("data", "labels"); a Python 3 pickle with str keys reads back the same.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _rand_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _write_cifar10(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = _rand_rows(rng, N_TRAIN_PER_FILE)
        y = rng.integers(0, 10, size=N_TRAIN_PER_FILE).tolist()
        _pickle(d / f"data_batch_{i}", {"batch_label": f"batch {i}", "data": x, "labels": y})
        xs.append(x)
        ys += y
    tx = _rand_rows(rng, N_TEST)
    ty = rng.integers(0, 10, size=N_TEST).tolist()
    _pickle(d / "test_batch", {"batch_label": "test", "data": tx, "labels": ty})
    _pickle(d / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return np.concatenate(xs), np.array(ys), tx, np.array(ty)


def _write_cifar100(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    out = []
    for fname, n in (("train", N_TRAIN_PER_FILE), ("test", N_TEST)):
        x = _rand_rows(rng, n)
        y = rng.integers(0, 100, size=n)
        y[0] = 99  # make sure the top label survives the round trip
        coarse = (y // 5).tolist()
        _pickle(d / fname, {"data": x, "fine_labels": y.tolist(), "coarse_labels": coarse})
        out += [x, y]
    meta = {
        "fine_label_names": [f"f{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    _pickle(d / "meta", meta)
    return tuple(out)


def _write_idx(raw: Path, prefix: str, x: np.ndarray, y: np.ndarray) -> None:
    # torchvision 0.29 reads the *uncompressed* files (it only checks that the name without
    # ".gz" exists), with big-endian idx headers: magic 2051 (ubyte, 3 dims) / 2049 (1 dim).
    n = len(x)
    header = struct.pack(">IIII", 2051, n, 28, 28)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + x.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.tobytes())


def _write_mnist(root: Path, folder: str, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = []
    for prefix, n in (("train", N_TRAIN_PER_FILE), ("t10k", N_TEST)):
        x = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # nonzero: padding shows up
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw, prefix, x, y)
        out += [x, y]
    return tuple(out)


def _write_svhn(root: Path, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", N_TRAIN_PER_FILE), ("test", N_TEST)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # H x W x C x N, as real
        y = np.arange(n, dtype=np.uint8).reshape(n, 1) % 10 + 1  # labels 1..10; 10 means digit 0
        y[0, 0] = 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out += [x, y]
    return tuple(out)


def _check_common(arr: ImageArrays, channels: int, n_train: int, num_classes: int) -> None:
    assert arr.train_x.shape == (n_train, channels, 32, 32)
    assert arr.test_x.shape == (N_TEST, channels, 32, 32)
    assert arr.train_x.dtype == arr.test_x.dtype == torch.uint8
    assert arr.train_y.dtype == arr.test_y.dtype == torch.int64
    assert arr.train_y.shape == (n_train,) and arr.test_y.shape == (N_TEST,)
    assert arr.train_x.is_contiguous() and arr.test_x.is_contiguous()
    assert arr.num_classes == num_classes
    assert len(arr.mean) == len(arr.std) == channels
    assert all(0 < m < 1 for m in arr.mean) and all(0 < s < 1 for s in arr.std)


@pytest.mark.usefixtures("skip_md5")
def test_cifar10_round_trip(tmp_path: Path) -> None:
    x, y, tx, ty = _write_cifar10(tmp_path, np.random.default_rng(0))
    arr = load_image_dataset("cifar10", root=tmp_path)
    _check_common(arr, 3, 5 * N_TRAIN_PER_FILE, 10)
    # A CIFAR row is 1024 R, then G, then B values, row-major: exactly C x H x W.
    assert torch.equal(arr.train_x, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
    assert torch.equal(arr.test_x, torch.from_numpy(tx.reshape(-1, 3, 32, 32)))
    assert arr.train_y.tolist() == y.tolist() and arr.test_y.tolist() == ty.tolist()


@pytest.mark.usefixtures("skip_md5")
def test_image_data_ignore_the_mnist1d_pools(tmp_path: Path) -> None:
    """Validation carved by val_fraction, the published test set as the test split, whatever
    val_pool and test_pool say."""
    *_, tx, _ = _write_cifar10(tmp_path, np.random.default_rng(0))
    old = load_splits("cifar10", data_root=tmp_path, val_fraction=0.2, val_pool=0, test_pool=0)
    pooled = load_splits("cifar10", data_root=tmp_path, val_fraction=0.2)  # default pools
    assert (len(pooled.train_y), len(pooled.val_y), len(pooled.test_y)) == (24, 6, N_TEST)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(pooled, name), getattr(old, name)), name
    assert torch.equal(pooled.test_x, torch.from_numpy(tx.reshape(-1, 3, 32, 32)))
    assert pooled.published_is_test and pooled.epoch_val == 0
    assert torch.equal(pooled.epoch_val_split[0], pooled.val_x)


@pytest.mark.usefixtures("skip_md5")
def test_cifar100_round_trip(tmp_path: Path) -> None:
    x, y, tx, ty = _write_cifar100(tmp_path, np.random.default_rng(1))
    arr = load_image_dataset("cifar100", root=str(tmp_path))
    _check_common(arr, 3, N_TRAIN_PER_FILE, 100)
    assert torch.equal(arr.train_x, torch.from_numpy(x.reshape(-1, 3, 32, 32)))
    assert torch.equal(arr.test_x, torch.from_numpy(tx.reshape(-1, 3, 32, 32)))
    assert arr.train_y.tolist() == y.tolist() and arr.test_y.tolist() == ty.tolist()


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_family_padded_to_32(tmp_path: Path, name: str, folder: str) -> None:
    # No md5 patch: torchvision checks only that the raw MNIST files exist.
    x, y, tx, ty = _write_mnist(tmp_path, folder, np.random.default_rng(2))
    arr = load_image_dataset(name, root=tmp_path)
    _check_common(arr, 1, N_TRAIN_PER_FILE, 10)
    for got, want in ((arr.train_x, x), (arr.test_x, tx)):
        assert torch.equal(got[:, 0, 2:30, 2:30], torch.from_numpy(want))
        border = got.clone()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()  # 2-pixel zero frame on every side
    assert arr.train_y.tolist() == y.tolist() and arr.test_y.tolist() == ty.tolist()


@pytest.mark.usefixtures("skip_md5")
def test_svhn_round_trip_maps_label_10_to_0(tmp_path: Path) -> None:
    x, y, tx, ty = _write_svhn(tmp_path, np.random.default_rng(3))
    arr = load_image_dataset("svhn", root=tmp_path)
    _check_common(arr, 3, N_TRAIN_PER_FILE, 10)
    assert torch.equal(arr.train_x, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))
    assert torch.equal(arr.test_x, torch.from_numpy(tx.transpose(3, 2, 0, 1).copy()))
    assert arr.train_y.tolist() == (y[:, 0] % 10).tolist()
    assert arr.test_y.tolist() == (ty[:, 0] % 10).tolist()
    assert arr.train_y[0] == 0 and arr.train_y.max() <= 9


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_missing_files_raise_dataset_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetMissingError) as info:
        load_image_dataset(name, root="data")  # relative root is reported absolute
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert msg == (
        f"{name} not found under {os.path.abspath('data')}; put the files there or pass "
        "download=True (--set download=true)"
    )
    assert "\n" not in msg


@pytest.mark.usefixtures("skip_md5")
def test_missing_meta_file_is_also_missing(tmp_path: Path) -> None:
    _write_cifar10(tmp_path, np.random.default_rng(4))
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(DatasetMissingError, match="cifar10 not found under"):
        load_image_dataset("cifar10", root=tmp_path)


def test_md5_check_is_kept_in_production(tmp_path: Path) -> None:
    # Without the test-only patch, fake CIFAR files fail torchvision's md5 check.
    _write_cifar10(tmp_path, np.random.default_rng(5))
    with pytest.raises(DatasetMissingError):
        load_image_dataset("cifar10", root=tmp_path)


def test_failure_after_requested_download_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With download=True a remaining "not found" is a download problem, not a hint to show.
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: None)
    with pytest.raises(RuntimeError) as info:
        load_image_dataset("mnist", root=tmp_path, download=True)
    assert not isinstance(info.value, DatasetMissingError)


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown image dataset 'imagenet'") as info:
        load_image_dataset("imagenet", root=tmp_path)
    assert all(name in str(info.value) for name in IMAGE_DATASETS)


# --- augment_crop_flip -------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _find_window(out: torch.Tensor, padded: torch.Tensor, size: int, pad: int) -> tuple | None:
    """Return the (dy, dx, flipped) window of ``padded`` equal to ``out``, if any."""
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            if torch.equal(out, crop):
                return dy, dx, False
            if torch.equal(out, crop.flip(-1)):
                return dy, dx, True
    return None


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_preserves_shape_dtype_and_is_seeded(dtype: torch.dtype) -> None:
    x = (torch.rand(16, 3, 32, 32, generator=_gen(0)) * 255).to(dtype)
    a = augment_crop_flip(x, generator=_gen(1))
    b = augment_crop_flip(x, generator=_gen(1))
    c = augment_crop_flip(x, generator=_gen(2))
    assert a.shape == x.shape and a.dtype == dtype and a.device == x.device
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_outputs_are_padded_windows_with_per_sample_draws() -> None:
    pad, n = 4, 48
    # One image repeated: any difference between outputs comes from per-sample draws. Values
    # are in (0, 1] so the zero padding can't masquerade as image content.
    img = torch.rand(3, 32, 32, generator=_gen(0)) + 1e-3
    x = img.expand(n, -1, -1, -1)
    out = augment_crop_flip(x, generator=_gen(3), padding=pad)
    padded = F.pad(img, (pad, pad, pad, pad))

    # Explicit manual crop for one sample: crop rows 1..32 / cols 7..38, then flip.
    manual = padded[:, 1:33, 7:39].flip(-1)
    assert _find_window(manual, padded, 32, pad) == (1, 7, True)

    windows = [_find_window(out[i], padded, 32, pad) for i in range(n)]
    assert all(w is not None for w in windows)
    assert len(set(windows)) > n // 3  # crops differ across the batch
    flips = [w[2] for w in windows]
    assert any(flips) and not all(flips)
    offsets = {w[0] for w in windows} | {w[1] for w in windows}
    assert min(offsets) >= 0 and max(offsets) <= 2 * pad


def test_augment_padding_zero_only_flips() -> None:
    x = torch.rand(8, 1, 32, 32, generator=_gen(0))
    out = augment_crop_flip(x, generator=_gen(5), padding=0)
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_augment_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="batch"):
        augment_crop_flip(torch.zeros(3, 32, 32), generator=_gen(0))
    with pytest.raises(ValueError, match="padding"):
        augment_crop_flip(torch.zeros(1, 3, 32, 32), generator=_gen(0), padding=-1)
