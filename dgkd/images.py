"""32x32 image datasets loaded through torchvision into in-memory uint8 tensors.

Experiments train small students on whole datasets that fit in memory, so each split is
materialised once as one ``(N, C, 32, 32)`` uint8 tensor instead of being served image by image
through a ``Dataset``/``DataLoader``. Reading goes through torchvision's dataset classes so that
the on-disk layout, download URLs and md5 checks are exactly torchvision's; only their raw arrays
(``.data``, ``.targets``/``.labels``) are used, never the per-item PIL path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

__all__ = [
    "IMAGE_DATASETS",
    "DatasetMissingError",
    "ImageArrays",
    "augment_crop_flip",
    "image_spec",
    "load_image_dataset",
]

IMAGE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion_mnist", "mnist", "svhn")


class DatasetMissingError(FileNotFoundError):
    """Dataset files are absent and downloading was not requested.

    A distinct type so callers (CLI, sweeps) can print a one-line hint instead of torchvision's
    traceback, and so offline runs fail loudly rather than silently downloading.
    """


@dataclass(frozen=True, eq=False)
class ImageArrays:
    """Both splits of a dataset as tensors, plus the constants needed to normalise them.

    Images stay uint8 (4x smaller than float32) so whole datasets fit in memory; callers
    convert and normalise per batch with ``mean``/``std`` (per channel, on the 0-1 scale).
    ``eq=False`` because element-wise tensor comparison has no single truth value.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# (x uint8 N x C x 32 x 32, y int64 N) for one split.
_Split = tuple[torch.Tensor, torch.Tensor]
_Loader = Callable[[str, bool, bool], _Split]


def _load_cifar(cls: type[torchvision.datasets.CIFAR10]) -> _Loader:
    def load(root: str, train: bool, download: bool) -> _Split:
        ds = cls(root=root, train=train, download=download)
        # torchvision stores CIFAR as N x H x W x C numpy; the models want NCHW.
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    return load


def _load_mnist(cls: type[torchvision.datasets.MNIST]) -> _Loader:
    def load(root: str, train: bool, download: bool) -> _Split:
        ds = cls(root=root, train=train, download=download)
        # N x 28 x 28 uint8 -> N x 1 x 32 x 32: zero-pad 2 pixels per side (as in LeNet-5) so
        # every dataset shares the 32x32 input size of the CIFAR-style architectures.
        x = F.pad(torch.as_tensor(ds.data, dtype=torch.uint8).unsqueeze(1), (2, 2, 2, 2))
        return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)

    return load


def _load_svhn(root: str, train: bool, download: bool) -> _Split:
    ds = torchvision.datasets.SVHN(root=root, split="train" if train else "test", download=download)
    # Already N x 3 x 32 x 32 (torchvision transposes the .mat layout), and label 10 is
    # already remapped to digit 0.
    x = torch.from_numpy(np.ascontiguousarray(ds.data))
    return x, torch.as_tensor(ds.labels, dtype=torch.int64)


@dataclass(frozen=True)
class _Spec:
    load: _Loader
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Normalisation constants are the commonly published per-channel training-set statistics.
# CIFAR-10 uses the true per-pixel std (0.247, 0.243, 0.261), not the widely copied
# (0.2023, 0.1994, 0.2010); CIFAR-100 uses the values of the CRD/DKD distillation code.
# MNIST/Fashion-MNIST values are for the unpadded 28x28 images; the zero border shifts them
# slightly, but the standard values keep results comparable with the literature.
_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        _load_cifar(torchvision.datasets.CIFAR10),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _Spec(
        _load_cifar(torchvision.datasets.CIFAR100),
        100,
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
    ),
    "fashion_mnist": _Spec(
        _load_mnist(torchvision.datasets.FashionMNIST), 10, (0.2860,), (0.3530,)
    ),
    "mnist": _Spec(_load_mnist(torchvision.datasets.MNIST), 10, (0.1307,), (0.3081,)),
    "svhn": _Spec(_load_svhn, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
assert tuple(sorted(_SPECS)) == IMAGE_DATASETS


def image_spec(name: str) -> tuple[tuple[int, ...], int]:
    """``(input shape, number of classes)`` of image dataset ``name``, without its files."""
    spec = _SPECS[name]
    return (len(spec.mean), 32, 32), spec.num_classes


def load_image_dataset(
    name: str, *, root: str | os.PathLike[str], download: bool = False
) -> ImageArrays:
    """Load both splits of ``name`` from ``root`` into memory.

    Args:
        name: One of ``IMAGE_DATASETS``.
        root: Directory holding the files in torchvision's layout (e.g.
            ``root/cifar-10-batches-py``, ``root/MNIST/raw``, ``root/train_32x32.mat``).
        download: Let torchvision fetch missing files. Off by default so runs never touch
            the network implicitly.

    Returns:
        uint8 images ``(N, C, 32, 32)``, int64 labels, class count and normalisation constants.

    Raises:
        ValueError: ``name`` is not a known dataset.
        DatasetMissingError: Files are missing (or fail torchvision's md5 check) and
            ``download`` is False.
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(
            f"unknown image dataset {name!r}; expected one of {', '.join(IMAGE_DATASETS)}"
        )
    root_dir = os.path.abspath(os.path.expanduser(os.fspath(root)))
    try:
        train_x, train_y = spec.load(root_dir, True, download)
        test_x, test_y = spec.load(root_dir, False, download)
    except RuntimeError as err:
        # torchvision signals absent/corrupt files with a bare RuntimeError ("Dataset not found
        # ...", "Dataset metadata file not found ..."). After a requested download the same
        # error means something else went wrong, so it propagates unchanged.
        if download or "not found" not in str(err):
            raise
        raise DatasetMissingError(
            f"{name} not found under {root_dir}; put the files there or pass download=True "
            "(--set download=true)"
        ) from err
    return ImageArrays(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
    )


def augment_crop_flip(
    x: torch.Tensor, *, generator: torch.Generator, padding: int = 4
) -> torch.Tensor:
    """Apply the standard CIFAR augmentation (padded random crop + h-flip) to every sample.

    Each sample gets its own crop offset and its own flip (p=0.5), drawn from ``generator``,
    and the whole batch is processed with one gather. This is deliberately not
    ``torchvision.transforms``: v2 ``RandomCrop``/``RandomHorizontalFlip`` applied to a batch
    tensor draw ONE crop/flip for the whole batch, and per-sample application needs a Python
    loop or ``DataLoader`` worker processes. Doing it here on in-memory tensors avoids workers
    and keeps seeding exact: the result depends only on ``x`` and the generator state.

    Args:
        x: Batch ``(B, C, H, W)``, any dtype (uint8 or float), on any device.
        generator: Source of randomness; its device may differ from ``x``'s (draws are made on
            the generator's device, then moved), so results match across devices.
        padding: Zero padding on each side; offsets range over ``[0, 2 * padding]``.

    Returns:
        A new tensor with the shape, dtype and device of ``x``.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, _, h, w = x.shape
    gdev = generator.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gdev).to(x.device)
    flip = torch.randint(0, 2, (b,), generator=generator, device=gdev).to(x.device).bool()

    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    col = torch.arange(w, device=x.device)
    # A flipped crop is the same window read right to left.
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - col, col)  # (B, W)

    # Channels last so that advanced indexing on (batch, row, col) yields (B, H, W, C).
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
