"""Tests for dgkd.data: MNIST-1D's published data and generated pools, split sizes,
disjointness, determinism, the disk cache, and the old protocol (val_pool 0) unchanged."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import TINY_POOLS

import dgkd.data as data_mod
from dgkd.config import ConfigError, TrainConfig
from dgkd.data import (
    DATASETS,
    EPOCH_VAL_EXAMPLES,
    TEST_POOL_SEED,
    VAL_POOL_SEED,
    _carve,
    load_splits,
)

# The old protocol: validation carved from the training set, tested on the published 1000.
OLD = {"val_pool": 0, "test_pool": 0}


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


@pytest.fixture
def fresh_data_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty ``$DGKD_CACHE`` and empty in-process data memos (restored after: the session's
    arrays are the same, only read again)."""
    monkeypatch.setenv("DGKD_CACHE", str(tmp_path))
    data_mod._mnist1d_arrays.cache_clear()
    data_mod._mnist1d_pool.cache_clear()
    yield tmp_path / "data"
    data_mod._mnist1d_arrays.cache_clear()
    data_mod._mnist1d_pool.cache_clear()


# --- the published data and the pools ----------------------------------------------------------


def test_published_data_from_the_generator_is_make_datasets_bit_for_bit(
    fresh_data_cache: Path,
) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    want = make_dataset(get_dataset_args())
    got = data_mod._mnist1d_arrays()  # built now, in the empty cache
    for key in ("x", "y", "x_test", "y_test"):
        assert got[key].dtype == np.asarray(want[key]).dtype, key
        assert np.array_equal(got[key], want[key]), key
    assert got["x"].shape == (4000, 40) and got["x_test"].shape == (1000, 40)


def test_the_generator_follows_make_dataset_with_shuffled_positions_too() -> None:
    """The published arguments keep positions in order; should a package default shuffle them,
    the generator draws the same permutation make_dataset does (small sample, exact)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.shuffle_seq, args.seed = 200, True, 7
    want = make_dataset(args)
    x, y = data_mod._generate(args, 7, 200)
    x = (x - x.mean()) / x.std()
    assert np.array_equal(x[:160], want["x"]) and np.array_equal(y[160:], want["y_test"])


def test_pools_have_the_asked_sizes_and_every_class_equally() -> None:
    s = load_splits("mnist1d", **TINY_POOLS)
    old = load_splits("mnist1d", val_fraction=0.0, **OLD)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (4000, 200, 400)
    assert s.val_x.shape == (200, 40) and s.test_x.shape == (400, 40)
    assert s.val_x.dtype == s.test_x.dtype == torch.float32 and s.val_y.dtype == torch.int64
    assert torch.bincount(s.val_y).tolist() == [20] * 10
    assert torch.bincount(s.test_y).tolist() == [40] * 10
    assert s.val_y[:20].tolist() != sorted(s.val_y[:20].tolist())  # shuffled, not by class
    # Training uses all 4000 published training examples, in their order; the published test
    # set rides along for published_test_acc.
    assert torch.equal(s.train_x, old.train_x) and torch.equal(s.train_y, old.train_y)
    assert torch.equal(s.published_test_x, old.test_x)
    assert torch.equal(s.published_test_y, old.test_y) and not s.published_is_test


def test_pools_are_fixed_by_their_seeds_and_differ_by_size() -> None:
    a = load_splits("mnist1d", **TINY_POOLS)
    b = load_splits("mnist1d", val_fraction=0.5, split_seed=3, **TINY_POOLS)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.test_x, b.test_x)  # carve ignored
    assert torch.equal(a.train_x, b.train_x)
    bigger = load_splits("mnist1d", val_pool=300, test_pool=400)
    assert len(bigger.val_y) == 300 and not torch.equal(bigger.val_x[:200], a.val_x)


def test_no_pool_example_is_a_published_one_or_in_the_other_pool() -> None:
    s = load_splits("mnist1d", **TINY_POOLS)
    val, test = _rows(s.val_x), _rows(s.test_x)
    published = _rows(s.train_x) | _rows(s.published_test_x)
    assert len(val) == 200 and len(test) == 400 and len(published) == 5000  # all unique
    assert not val & published and not test & published and not val & test
    assert VAL_POOL_SEED not in (42, TEST_POOL_SEED)


def test_pools_are_normalized_with_the_published_map() -> None:
    """The raw generator output minus the published raw mean, over its std: not standardized
    by the pool's own statistics (then its mean would be 0 and its std 1 to the last bits).
    Generated again here, so this also shows that a pool is fixed by its seed."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    raw_published, _ = data_mod._generate(args, 42, 5000)
    raw_pool, labels = data_mod._generate(args, VAL_POOL_SEED, 200)
    want = (raw_pool - raw_published.mean()) / raw_published.std()
    s = load_splits("mnist1d", **TINY_POOLS)
    assert torch.equal(s.val_x, torch.from_numpy(want).float())
    assert torch.equal(s.val_y, torch.from_numpy(labels).long())
    own = (raw_pool - raw_pool.mean()) / raw_pool.std()
    assert not torch.equal(s.val_x, torch.from_numpy(own).float())
    pool = load_splits("mnist1d", val_pool=2000, test_pool=0).val_x.double()
    assert abs(pool.mean().item()) < 0.05 and abs(pool.std().item() - 1) < 0.05  # same scale
    assert pool.mean().item() != 0.0 and pool.std().item() != 1.0


def test_generating_leaves_the_global_random_states_alone() -> None:
    import random

    from mnist1d.data import get_dataset_args

    np.random.seed(5)
    random.seed(5)
    data_mod._generate(get_dataset_args(), VAL_POOL_SEED, 10)
    assert np.random.randint(1 << 30) == np.random.RandomState(5).randint(1 << 30)
    assert random.random() == random.Random(5).random()


def test_pools_are_cached_on_disk_and_a_corrupt_file_is_rebuilt(
    fresh_data_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_splits("mnist1d", **TINY_POOLS)
    pools = sorted(fresh_data_cache.glob("mnist1d-pool-*.npz"))
    assert len(pools) == 2  # one file per (seed, size), named by a hash of the arguments
    assert len(list(fresh_data_cache.glob("mnist1d-*.npz"))) == 3  # and the published data

    def no_generator(*args, **kwargs):
        raise AssertionError("generated again instead of read from the cache")

    data_mod._mnist1d_arrays.cache_clear()
    data_mod._mnist1d_pool.cache_clear()
    with monkeypatch.context() as mp:
        mp.setattr(data_mod, "_generate", no_generator)
        second = load_splits("mnist1d", **TINY_POOLS)  # a new process: read from the files
    assert torch.equal(second.val_x, first.val_x) and torch.equal(second.test_x, first.test_x)

    for pool in pools:
        pool.write_bytes(pool.read_bytes()[:100])  # truncated
    data_mod._mnist1d_pool.cache_clear()
    third = load_splits("mnist1d", **TINY_POOLS)
    assert torch.equal(third.val_x, first.val_x) and torch.equal(third.test_x, first.test_x)
    for pool in pools:
        with np.load(pool) as f:
            assert f["x"].shape[0] in (200, 400)  # rewritten whole


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"val_pool": -10}, "val_pool"),
        ({"val_pool": 25}, "val_pool"),
        ({"test_pool": 5}, "test_pool"),
    ],
)
def test_bad_pool_sizes_name_the_field(changes: dict[str, int], field: str) -> None:
    message = f"{field} must be 0 or a positive multiple of 10"
    with pytest.raises(ConfigError, match=message):
        load_splits("mnist1d", **changes)
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_load_splits_defaults_are_train_configs() -> None:
    params = inspect.signature(load_splits).parameters
    defaults = TrainConfig()
    assert params["val_pool"].default == defaults.val_pool == 10_000
    assert params["test_pool"].default == defaults.test_pool == 20_000


def test_per_epoch_validation_reads_a_prefix_of_the_pool_only() -> None:
    s = load_splits("mnist1d", val_pool=EPOCH_VAL_EXAMPLES + 500, test_pool=0)
    x, y = s.epoch_val_split
    assert len(s.val_y) == EPOCH_VAL_EXAMPLES + 500 and len(y) == EPOCH_VAL_EXAMPLES
    assert torch.equal(x, s.val_x[:EPOCH_VAL_EXAMPLES]) and torch.equal(y, s.val_y[: len(y)])
    small = load_splits("mnist1d", **TINY_POOLS)  # a pool below the prefix: all of it
    assert torch.equal(small.epoch_val_split[0], small.val_x)
    old = load_splits("mnist1d", val_fraction=0.2, **OLD)  # a carve: all of it, as before
    assert torch.equal(old.epoch_val_split[0], old.val_x) and len(old.val_y) == 800


def test_val_pool_zero_is_the_old_protocol_exactly() -> None:
    """The splits before pools: make_dataset's arrays, validation carved by the seed's
    permutation, the published 1000 as the test split (and so as the published one)."""
    from mnist1d.data import get_dataset_args, make_dataset

    ref = make_dataset(get_dataset_args())
    x, y = torch.from_numpy(ref["x"]).float(), torch.from_numpy(ref["y"]).long()
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(3))
    tr, va = perm[800:].sort().values, perm[:800].sort().values
    s = load_splits("mnist1d", val_fraction=0.2, split_seed=3, **OLD)
    assert torch.equal(s.train_x, x[tr]) and torch.equal(s.train_y, y[tr])
    assert torch.equal(s.val_x, x[va]) and torch.equal(s.val_y, y[va])
    assert torch.equal(s.test_x, torch.from_numpy(ref["x_test"]).float())
    assert torch.equal(s.test_y, torch.from_numpy(ref["y_test"]).long())
    assert s.published_is_test and s.published_test_y is s.test_y and s.epoch_val == 0


# --- the old protocol: a validation split carved from the training set -------------------------


def test_mnist1d_split_sizes_and_shapes() -> None:
    s = load_splits("mnist1d", val_fraction=0.1, split_seed=0, **OLD)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (3600, 400, 1000)
    assert s.train_x.shape == (3600, 40) and s.test_x.shape == (1000, 40)
    assert s.num_classes == 10 and s.input_shape == (40,) and not s.augment
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert set(s.train_y.tolist()) == set(range(10))


def test_train_and_val_partition_the_training_set() -> None:
    full = load_splits("mnist1d", val_fraction=0.0, **OLD)
    s = load_splits("mnist1d", val_fraction=0.1, split_seed=0, **OLD)
    train, val = _rows(s.train_x), _rows(s.val_x)
    assert len(train) == 3600 and len(val) == 400  # MNIST-1D rows are unique
    assert not train & val
    assert train | val == _rows(full.train_x)
    assert _rows(s.test_x) == _rows(full.test_x)


def test_split_is_fixed_by_split_seed() -> None:
    a = load_splits("mnist1d", split_seed=0, **OLD)
    b = load_splits("mnist1d", split_seed=0, **OLD)
    c = load_splits("mnist1d", split_seed=1, **OLD)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.val_y, b.val_y)
    assert torch.equal(a.train_x, b.train_x)
    assert _rows(a.val_x) != _rows(c.val_x)
    assert torch.equal(a.test_x, c.test_x)  # the test split never moves


def test_val_fraction_zero_gives_empty_val() -> None:
    s = load_splits("mnist1d", val_fraction=0.0, **OLD)
    assert len(s.train_y) == 4000
    assert s.val_x.shape == (0, 40) and s.val_y.shape == (0,)


def test_mnist1d_is_cached_on_disk(dgkd_cache) -> None:
    load_splits("mnist1d", **OLD)
    assert list((dgkd_cache / "data").glob("mnist1d-*.npz"))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        load_splits("mnist1d", val_fraction=fraction, **OLD)


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
