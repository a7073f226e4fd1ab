"""Tests for dgkd.data: MNIST-1D split sizes, disjointness and determinism of the split."""

from __future__ import annotations

import pytest
import torch

from dgkd.data import DATASETS, _carve, load_splits


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def test_mnist1d_split_sizes_and_shapes() -> None:
    s = load_splits("mnist1d", val_fraction=0.1, split_seed=0)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (3600, 400, 1000)
    assert s.train_x.shape == (3600, 40) and s.test_x.shape == (1000, 40)
    assert s.num_classes == 10 and s.input_shape == (40,) and not s.augment
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert set(s.train_y.tolist()) == set(range(10))


def test_train_and_val_partition_the_training_set() -> None:
    full = load_splits("mnist1d", val_fraction=0.0)
    s = load_splits("mnist1d", val_fraction=0.1, split_seed=0)
    train, val = _rows(s.train_x), _rows(s.val_x)
    assert len(train) == 3600 and len(val) == 400  # MNIST-1D rows are unique
    assert not train & val
    assert train | val == _rows(full.train_x)
    assert _rows(s.test_x) == _rows(full.test_x)


def test_split_is_fixed_by_split_seed() -> None:
    a = load_splits("mnist1d", split_seed=0)
    b = load_splits("mnist1d", split_seed=0)
    c = load_splits("mnist1d", split_seed=1)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_x, b.train_x)
    assert _rows(a.val_x) != _rows(c.val_x)
    assert torch.equal(a.test_x, c.test_x)  # the test split never moves


def test_val_fraction_zero_gives_empty_val() -> None:
    s = load_splits("mnist1d", val_fraction=0.0)
    assert len(s.train_y) == 4000
    assert s.val_x.shape == (0, 40) and s.val_y.shape == (0,)


def test_mnist1d_is_cached_on_disk(dgkd_cache) -> None:
    load_splits("mnist1d")
    assert list((dgkd_cache / "data").glob("mnist1d-*.npz"))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        load_splits("mnist1d", val_fraction=fraction)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as info:
        load_splits("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


# --- the split rule itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(10, 0.3, 3), (10, 0.0, 0), (10, 0.99, 10), (4000, 0.1, 400), (7, 0.5, 4), (5, 0.1, 0)],
)
def test_carve_sizes_partition_and_order(n: int, fraction: float, n_val: int) -> None:
    train, val = _carve(n, fraction, 0)
    assert len(val) == n_val == round(n * fraction)
    assert len(train) == n - n_val
    assert sorted(train.tolist() + val.tolist()) == list(range(n))  # disjoint and complete
    assert train.tolist() == sorted(train.tolist()) and val.tolist() == sorted(val.tolist())
    assert train.dtype == val.dtype == torch.int64


def test_carve_is_a_seeded_random_choice() -> None:
    a_train, a_val = _carve(100, 0.2, 3)
    b_train, b_val = _carve(100, 0.2, 3)
    assert torch.equal(a_val, b_val) and torch.equal(a_train, b_train)
    assert not torch.equal(_carve(100, 0.2, 4)[1], a_val)
    assert not torch.equal(a_val, torch.arange(20)) and not torch.equal(
        a_val, torch.arange(80, 100)
    )
    # The validation part is a prefix of the seed's permutation: a larger fraction only adds.
    assert set(a_val.tolist()) < set(_carve(100, 0.3, 3)[1].tolist())
