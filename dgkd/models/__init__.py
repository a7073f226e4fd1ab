"""Model architectures, built by name, one at a time or as a population of K.

Every model's ``forward(x)`` returns ``(logits, features)``, where ``features`` is the flattened
input of the final linear classifier, so feature-based distillation losses can use any model
without hooks.

Two families are provided:

* MNIST-1D sequence models (``cnn1d``, ``mlp``) whose ``width`` can be varied, so that
  teacher/student capacity gaps can be swept cheaply (:mod:`dgkd.models.sequence`).
* The CIFAR ResNets and Wide ResNets used throughout the KD literature, reproducing the
  definitions of RepDistiller / mdistiller so that results are comparable with published
  numbers (:mod:`dgkd.models.cifar`).

Every one of them is also buildable as a :class:`Population` of K students trained at once
(:func:`build_population`, :mod:`dgkd.models.population`).
"""

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from dgkd.config import MODEL_NAMES, SEQUENCE_MODELS
from dgkd.models.cifar import ResNet, WideResNet
from dgkd.models.population import Population, grouped
from dgkd.models.sequence import MLP, CNN1d, StackedCNN1d, StackedMLP

__all__ = [
    "CNN1d",
    "MLP",
    "MODEL_NAMES",
    "SEQUENCE_MODELS",
    "Population",
    "ResNet",
    "WideResNet",
    "activation_bytes",
    "build_model",
    "build_population",
    "count_parameters",
    "has_width",
]


def _sequence_length(input_shape: tuple[int, ...]) -> int:
    if len(input_shape) == 1 or (len(input_shape) == 2 and input_shape[0] == 1):
        return input_shape[-1]
    raise ValueError(f"sequence models need input_shape (L,) or (1, L), got {input_shape}")


def _image_channels(input_shape: tuple[int, ...]) -> int:
    if len(input_shape) == 3 and input_shape[0] in (1, 3) and input_shape[1:] == (32, 32):
        return input_shape[0]
    raise ValueError(
        f"image models need input_shape (C, 32, 32) with C in (1, 3), got {input_shape}"
    )


def _cnn1d(shape: tuple[int, ...], num_classes: int, width: int) -> nn.Module:
    return CNN1d(_sequence_length(shape), width, num_classes)


def _mlp(shape: tuple[int, ...], num_classes: int, width: int) -> nn.Module:
    return MLP(_sequence_length(shape), width, num_classes)


def _resnet(depth: int, channels: list[int]) -> Callable[..., nn.Module]:
    def build(shape: tuple[int, ...], num_classes: int, width: None) -> nn.Module:
        return ResNet(depth, channels, num_classes, _image_channels(shape))

    return build


def _wrn(depth: int, widen_factor: int) -> Callable[..., nn.Module]:
    def build(shape: tuple[int, ...], num_classes: int, width: None) -> nn.Module:
        return WideResNet(depth, widen_factor, num_classes, _image_channels(shape))

    return build


_SMALL, _X4 = [16, 16, 32, 64], [32, 64, 128, 256]

# name -> (builder(input_shape, num_classes, width), default width or None if not width-tunable)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], int | None]] = {
    "cnn1d": (_cnn1d, 32),
    "mlp": (_mlp, 100),
    **{f"resnet{d}": (_resnet(d, _SMALL), None) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (_resnet(8, _X4), None),
    "resnet32x4": (_resnet(32, _X4), None),
    "wrn_16_2": (_wrn(16, 2), None),
    "wrn_40_2": (_wrn(40, 2), None),
}


def has_width(name: str) -> bool:
    """Whether ``name`` takes a ``width`` (the image models' widths are fixed by their papers)."""
    return name in _REGISTRY and _REGISTRY[name][1] is not None


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    width: int | None = None,
) -> nn.Module:
    """Build a freshly initialised model whose ``forward`` returns ``(logits, features)``.

    Args:
        name: One of ``MODEL_NAMES``.
        num_classes: Number of output logits.
        input_shape: Shape of one example without the batch dim, e.g. ``(40,)`` for MNIST-1D
            or ``(3, 32, 32)`` for CIFAR; used to size the first/last layers.
        width: Hidden width for ``cnn1d``/``mlp`` (their default if None). Must be None for
            the image models, whose widths are fixed by their published definitions.

    Raises:
        ValueError: On an unknown name, an invalid width or num_classes, or an input shape the
            model cannot take.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    builder, default_width = _REGISTRY[name]
    if width is not None and default_width is None:
        raise ValueError(f"model {name!r} has no width parameter; leave width=None")
    if width is not None and width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return builder(tuple(input_shape), num_classes, width if width is not None else default_width)


def activation_bytes(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    width: int | None = None,
    batch_size: int,
) -> int:
    """Bytes that autograd keeps for the backward pass of one member's training forward on a
    batch: the working set that a population multiplies by K, which
    :func:`dgkd.train.max_population` budgets on a CPU.

    Measured on the meta device (shapes only: nothing is computed, no generator is drawn from),
    so it costs a model's construction whatever its size.
    """
    saved: list[torch.Tensor] = []  # alive until counted, so that no two share an id

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(name, num_classes=num_classes, input_shape=input_shape, width=width)
        x = torch.empty(batch_size, *input_shape)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.train()(x)
    unique = {id(t): t for t in saved}.values()  # a tensor saved by two operations is held once
    return sum(t.numel() * t.element_size() for t in unique)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters (the figure reported in KD papers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _skeleton(name: str, kw: dict, template: nn.Module, size: int) -> nn.Module:
    """An uninitialized network for ``size`` members of ``name``: for one, the plain model
    itself (a stacked one costs a few views per layer); for more, the stacked twin of a
    sequence model or the grouped image model."""
    if size == 1:
        return build_model(name, **kw)
    shape, classes = kw["input_shape"], kw["num_classes"]
    width: int = kw["width"] or _REGISTRY[name][1] or 0
    if name == "cnn1d":
        return StackedCNN1d(size, _sequence_length(shape), width, classes)
    if name == "mlp":
        return StackedMLP(size, _sequence_length(shape), width, classes)
    return grouped(template, size)


def build_population(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    width: int | None = None,
    seeds: Sequence[int],
) -> Population:
    """K students of ``name`` as one :class:`Population`, member k seeded with ``seeds[k]``.

    Member k starts with exactly the weights of ``torch.manual_seed(seeds[k])`` followed by
    :func:`build_model` (the global generator is left as after the last member).

    Raises:
        ValueError: as :func:`build_model`, or for an empty ``seeds``.
    """
    if not seeds:
        raise ValueError("a population needs at least one seed")
    kw = {"num_classes": num_classes, "input_shape": input_shape, "width": width}
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        template = build_model(name, **kw)  # type: ignore[arg-type]
        states.append(template.state_dict())
    skeleton = partial(_skeleton, name, kw, template)
    return Population(template, skeleton, states, image=name not in SEQUENCE_MODELS)
