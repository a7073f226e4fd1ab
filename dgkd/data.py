"""Datasets by name as in-memory tensors, with a deterministic validation split.

Every supported dataset fits in memory (MNIST-1D is 4000 x 40 floats, CIFAR is 150 MB of uint8),
so batches are slices of tensors: no DataLoader, no worker processes, and the batch order is a
``torch.randperm`` under the run's own generator.

MNIST-1D is a generator, not a fixed sample: besides the published 4000 + 1000 examples (seed 42)
it validates and tests on pools drawn fresh from the same generator under seeds of their own
(:data:`VAL_POOL_SEED`, :data:`TEST_POOL_SEED`), normalized with the published data's affine
map, so that a measurement's sampling noise is not as large as the differences it should show
(at 92% accuracy, 800 examples have a binomial sd of ~0.9 points, 10,000 of ~0.27).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from dgkd.config import DATASETS, check_pool
from dgkd.io import atomic_write_bytes, cache_dir

__all__ = [
    "DATASETS",
    "EPOCH_VAL_EXAMPLES",
    "TEST_POOL_SEED",
    "VAL_POOL_SEED",
    "Splits",
    "input_spec",
    "load_splits",
    "uses_val_pool",
]

# Generator seeds of MNIST-1D's evaluation pools. Any seed but the published data's 42 (and each
# other's) gives examples none of which is a published one (the noise is continuous); these are
# fixed so that every run of every study measures on the same pools.
VAL_POOL_SEED = 1042
TEST_POOL_SEED = 2042
# Examples of a validation pool evaluated after every epoch (its first ones: the pool is shuffled,
# so they are a random sample); the final val_acc, which searches optimize, reads the whole pool.
# Measured on a default CPU run: the whole 10,000 every epoch made the per-epoch evaluation 35% of
# the run (1.4 of 4.0 s); the first 2000 make it 21% (0.6 of 2.9 s), near the 19% of validating on
# 800 carved examples, and their sd at ~92% accuracy (0.6 points) is below those 800's (0.9).
EPOCH_VAL_EXAMPLES = 2_000
_PUBLISHED_SEED = 42  # mnist1d's get_dataset_args().seed, asserted where the data is built


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test tensors of one dataset and how to turn a batch into inputs.

    ``*_x`` are stored compactly (uint8 for images); :meth:`inputs` converts a batch to the
    normalized float tensor a model takes, with the training augmentation when asked.
    ``published_test_*`` is the dataset's published test set, which MNIST-1D reports beside its
    test pool so that numbers compare with the literature; where the test split *is* the
    published one (image data, MNIST-1D with ``test_pool`` 0, or when not given) it is the same
    tensors, and so the same accuracy, not a copy. ``epoch_val`` > 0 limits the validation run
    after every epoch to the first ``epoch_val`` examples (:attr:`epoch_val_split`).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: bool = False  # random crop + flip on training batches (32x32 images)
    published_test_x: Tensor = None  # type: ignore[assignment]  # None: the test split
    published_test_y: Tensor = None  # type: ignore[assignment]
    epoch_val: int = 0  # examples of val the per-epoch evaluation reads; 0 = all

    def __post_init__(self) -> None:
        if self.published_test_x is None or self.published_test_y is None:
            object.__setattr__(self, "published_test_x", self.test_x)
            object.__setattr__(self, "published_test_y", self.test_y)

    @property
    def published_is_test(self) -> bool:
        """Whether the published test set is the test split itself (no second evaluation)."""
        return self.published_test_x is self.test_x

    @property
    def epoch_val_split(self) -> tuple[Tensor, Tensor]:
        """The validation examples and labels evaluated after every epoch: all of them, or the
        first ``epoch_val`` (a validation pool's, :data:`EPOCH_VAL_EXAMPLES`)."""
        n = self.epoch_val or len(self.val_y)
        return self.val_x[:n], self.val_y[:n]

    def inputs(
        self, x: Tensor, *, train: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Normalized float inputs for a batch ``x`` already on the target device."""
        if x.dtype == torch.uint8:
            shape = (1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=x.device).view(shape)
            std = torch.tensor(self.std, device=x.device).view(shape)
            x = (x.float() / 255.0 - mean) / std
        if train and self.augment:
            from dgkd.images import augment_crop_flip

            if generator is None:
                raise ValueError("augmented training batches need the run's generator")
            x = augment_crop_flip(x, generator=generator)
        return x


def uses_val_pool(dataset: str, val_pool: int) -> bool:
    """Whether a run validates on a generated pool (and so trains on the whole training set)."""
    return dataset == "mnist1d" and val_pool > 0


def _carve(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the (train, val) parts of ``n`` training examples, fixed by ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _generate(args: Any, seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw (un-normalized) MNIST-1D examples and labels: ``mnist1d.data.make_dataset``'s loop
    under ``seed``, ``num_samples // 10`` of each class in a seeded random order.

    ``make_dataset`` normalizes by the statistics of whatever it generated; this leaves that to
    the caller, so that a pool is mapped like the published data, not by its own mean. Python's
    and numpy's global random states (which the generator draws from) are restored afterwards.
    """
    from mnist1d.data import get_templates, transform
    from mnist1d.utils import set_seed

    saved = random.getstate(), np.random.get_state()
    try:
        templates = get_templates()
        set_seed(seed)
        xs, ys = [], []
        for label in range(len(templates["y"])):
            for _ in range(num_samples // len(templates["y"])):
                x, _ = transform(templates["x"][label], templates["t"], args)
                xs.append(x)
                ys.append(templates["y"][label])
        order = np.random.permutation(len(ys))
        xs_, ys_ = np.stack(xs)[order], np.stack(ys)[order]
        if args.shuffle_seq:  # make_dataset's next draw: one permutation of the positions
            xs_ = xs_[..., np.random.permutation(args.final_seq_length)]
        return xs_, ys_
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _cached(
    name: str, keys: tuple[str, ...], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of ``cache_dir()/data/name``, built and written atomically when the
    file is absent, corrupt or lacks one; built once under a file lock, so that a search's
    workers starting together do not each generate them."""
    path = cache_dir() / "data" / name

    def read() -> dict[str, np.ndarray] | None:
        if not path.exists():
            return None
        try:
            with np.load(path) as f:
                return {k: f[k] for k in keys}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # corrupt, partial or of an older layout: rebuilt

    arrays = read()
    if arrays is not None:
        return arrays
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        arrays = read()  # another process may have built it meanwhile
        if arrays is None:
            arrays = build()
            buf = io.BytesIO()
            np.savez(buf, allow_pickle=False, **arrays)
            atomic_write_bytes(path, buf.getvalue())
    return arrays


def _args_hash(args: Any, *extra: object) -> str:
    """16 hex digits of the generator's arguments (and ``extra``): a changed package default
    makes a new file instead of serving a stale one."""
    return hashlib.sha256(repr((sorted(vars(args).items()), *extra)).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D as published (``make_dataset(get_dataset_args())``: seed 42, 5000 examples split
    at 4000), cached on disk with the raw data's ``mean`` and ``std``, the affine map the pools
    are normalized with.

    Built from :func:`_generate` rather than by ``make_dataset`` so that the pools share its code
    path; normalizing the same raw arrays the same way gives ``make_dataset``'s bits (a test
    checks). Building takes ~1 s; the cache file makes every later process skip it.
    """
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    assert args.seed == _PUBLISHED_SEED, "the pool seeds assume the published seed 42"

    def build() -> dict[str, np.ndarray]:
        xs, ys = _generate(args, args.seed, args.num_samples)
        mean, std = xs.mean(), xs.std()
        xs = (xs - mean) / std  # make_dataset's normalization, over train and test together
        cut = int(len(ys) * args.train_split)
        return {"x": xs[:cut], "y": ys[:cut], "x_test": xs[cut:], "y_test": ys[cut:],
                "mean": np.asarray(mean), "std": np.asarray(std)}  # fmt: skip

    keys = ("x", "y", "x_test", "y_test", "mean", "std")
    return _cached(f"mnist1d-{_args_hash(args)}.npz", keys, build)


@functools.lru_cache(maxsize=4)
def _mnist1d_pool(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` fresh MNIST-1D examples (``size // 10`` per class, shuffled) from the generator
    under ``seed``, normalized with the published data's mean and std; cached on disk as
    ``mnist1d-pool-<hash of the arguments, seed and size>.npz``. The default pools (30,000
    examples) take ~6 s to generate, once."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    published = _mnist1d_arrays()

    def build() -> dict[str, np.ndarray]:
        xs, ys = _generate(args, seed, size)
        return {"x": (xs - published["mean"]) / published["std"], "y": ys}

    arrays = _cached(f"mnist1d-pool-{_args_hash(args, seed, size)}.npz", ("x", "y"), build)
    return arrays["x"], arrays["y"]


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(x).float(), torch.from_numpy(y).long()


def input_spec(name: str) -> tuple[tuple[int, ...], int]:
    """``(input shape, number of classes)`` of dataset ``name``, what a model is built for,
    without loading its splits (MNIST-1D's published arrays, cached, give its length)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "mnist1d":
        return (_mnist1d_arrays()["x"].shape[1],), 10
    from dgkd.images import image_spec

    return image_spec(name)


def load_splits(
    name: str = "mnist1d",
    *,
    data_root: str | os.PathLike = "",
    download: bool = False,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    val_pool: int = 10_000,
    test_pool: int = 20_000,
) -> Splits:
    """Load a dataset by name with its validation and test splits.

    Args:
        name: One of :data:`DATASETS`.
        data_root: Directory of the image datasets (torchvision's layout); unused for mnist1d.
            Empty means ``$DGKD_CACHE/data``.
        download: Let torchvision download missing image files.
        val_fraction: Share of the training set held out for validation, in [0, 1): image data,
            and MNIST-1D with ``val_pool`` 0. Every default here is ``TrainConfig``'s, so
            ``load_splits()`` gives the default run's splits; ``dgkd.train.splits_for(cfg)`` (or
            ``dgkd.load_run``) gives a config's.
        split_seed: Seed of that validation split; fixed across runs so that trials compare.
        val_pool: MNIST-1D: validate on this many examples drawn fresh from the generator
            (seed :data:`VAL_POOL_SEED`) and train on the whole published training set; 0 =
            carve ``val_fraction`` of it. A multiple of 10; image data ignore it. The
            per-epoch evaluation reads its first :data:`EPOCH_VAL_EXAMPLES`.
        test_pool: MNIST-1D: test on this many fresh examples (seed :data:`TEST_POOL_SEED`);
            0 = the published 1000. A multiple of 10; image data ignore it.

    Raises:
        ValueError: unknown name or bad fraction; ConfigError: bad pool size.
        dgkd.images.DatasetMissingError: image files missing and ``download`` is False.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    check_pool("val_pool", val_pool)
    check_pool("test_pool", test_pool)
    if name == "mnist1d":
        arr = _mnist1d_arrays()
        x, y = _tensors(arr["x"], arr["y"])
        published_x, published_y = _tensors(arr["x_test"], arr["y_test"])
        test_x, test_y = published_x, published_y
        if test_pool:
            test_x, test_y = _tensors(*_mnist1d_pool(TEST_POOL_SEED, test_pool))
        num_classes, augment = 10, False
        shape: tuple[int, ...] = (x.shape[1],)
        mean: tuple[float, ...] = ()
        std: tuple[float, ...] = ()
    else:
        from dgkd.images import load_image_dataset

        root = Path(data_root) if str(data_root) else cache_dir() / "data"
        arrays = load_image_dataset(name, root=root, download=download)
        x, y, test_x, test_y = arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y
        published_x, published_y = test_x, test_y
        num_classes, shape = arrays.num_classes, tuple(x.shape[1:])
        mean, std, augment = arrays.mean, arrays.std, True
    epoch_val = 0
    if uses_val_pool(name, val_pool):
        val_x, val_y = _tensors(*_mnist1d_pool(VAL_POOL_SEED, val_pool))
        train_x, train_y = x, y
        epoch_val = min(EPOCH_VAL_EXAMPLES, val_pool)
    else:
        tr, va = _carve(len(y), val_fraction, split_seed)
        train_x, train_y, val_x, val_y = x[tr], y[tr], x[va], y[va]
    return Splits(
        name=name,
        num_classes=num_classes,
        input_shape=shape,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        mean=mean,
        std=std,
        augment=augment,
        published_test_x=published_x,
        published_test_y=published_y,
        epoch_val=epoch_val,
    )
