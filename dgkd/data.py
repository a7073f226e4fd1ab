"""Datasets by name as in-memory tensors, with a deterministic validation split.

Every supported dataset fits in memory (MNIST-1D is 4000 x 40 floats, CIFAR is 150 MB of uint8),
so batches are slices of tensors: no DataLoader, no worker processes, and the batch order is a
``torch.randperm`` under the run's own generator.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dgkd.config import DATASETS
from dgkd.io import atomic_write_bytes, cache_dir

__all__ = ["DATASETS", "Splits", "load_splits"]


@dataclass(frozen=True, eq=False)
class Splits:
    """Train / validation / test tensors of one dataset and how to turn a batch into inputs.

    ``*_x`` are stored compactly (uint8 for images); :meth:`inputs` converts a batch to the
    normalized float tensor a model takes, with the training augmentation when asked.
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


def _carve(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the (train, val) parts of ``n`` training examples, fixed by ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


@functools.lru_cache(maxsize=2)
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D built locally with the package's published arguments (seed 42), cached on disk.

    Building takes ~2 s; the cache file makes every later trial (and process) skip it. Its name
    carries a hash of the arguments so a changed package default cannot be served stale.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    key = hashlib.sha256(repr(sorted(vars(args).items())).encode()).hexdigest()[:16]
    path = cache_dir() / "data" / f"mnist1d-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass  # corrupt or partial file: rebuild below and overwrite it
    data = make_dataset(args)
    arrays = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
    buf = io.BytesIO()
    np.savez(buf, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"])
    atomic_write_bytes(path, buf.getvalue())
    return arrays


def load_splits(
    name: str = "mnist1d",
    *,
    data_root: str | os.PathLike = "",
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> Splits:
    """Load a dataset by name and carve a validation split from its training set.

    Args:
        name: One of :data:`DATASETS`.
        data_root: Directory of the image datasets (torchvision's layout); unused for mnist1d.
            Empty means ``$DGKD_CACHE/data``.
        download: Let torchvision download missing image files.
        val_fraction: Share of the training set held out for validation, in [0, 1).
        split_seed: Seed of the validation split; fixed across runs so that trials compare.

    Raises:
        ValueError: unknown name or bad fraction.
        dgkd.images.DatasetMissingError: image files missing and ``download`` is False.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if name == "mnist1d":
        arr = _mnist1d_arrays()
        x = torch.from_numpy(arr["x"]).float()
        y = torch.from_numpy(arr["y"]).long()
        test_x = torch.from_numpy(arr["x_test"]).float()
        test_y = torch.from_numpy(arr["y_test"]).long()
        num_classes, augment = 10, False
        shape: tuple[int, ...] = (x.shape[1],)
        mean: tuple[float, ...] = ()
        std: tuple[float, ...] = ()
    else:
        from dgkd.images import load_image_dataset

        root = Path(data_root) if str(data_root) else cache_dir() / "data"
        arrays = load_image_dataset(name, root=root, download=download)
        x, y, test_x, test_y = arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y
        num_classes, shape = arrays.num_classes, tuple(x.shape[1:])
        mean, std, augment = arrays.mean, arrays.std, True
    tr, va = _carve(len(y), val_fraction, split_seed)
    return Splits(
        name=name,
        num_classes=num_classes,
        input_shape=shape,
        train_x=x[tr],
        train_y=y[tr],
        val_x=x[va],
        val_y=y[va],
        test_x=test_x,
        test_y=test_y,
        mean=mean,
        std=std,
        augment=augment,
    )
