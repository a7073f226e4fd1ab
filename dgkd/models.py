"""Model architectures, built by name.

Every model's ``forward(x)`` returns ``(logits, features)``, where ``features`` is the flattened
input of the final linear classifier, so feature-based distillation losses can use any model
without hooks.

Two families are provided:

* MNIST-1D sequence models (``cnn1d``, ``mlp``) whose ``width`` can be varied, so that
  teacher/student capacity gaps can be swept cheaply.
* The CIFAR ResNets and Wide ResNets used throughout the KD literature, reproducing the
  definitions of RepDistiller / mdistiller (``mdistiller/models/cifar/{resnet,wrn}.py``) so that
  results are comparable with published numbers.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dgkd.config import MODEL_NAMES, SEQUENCE_MODELS

__all__ = ["MODEL_NAMES", "SEQUENCE_MODELS", "build_model", "count_parameters", "has_width"]


def _as_sequence(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as (B, 1, L), accepting (B, L) or (B, 1, L)."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3 and x.shape[1] == 1:
        return x
    raise ValueError(f"expected input of shape (B, L) or (B, 1, L), got {tuple(x.shape)}")


# --------------------------------------------------------------------------- MNIST-1D models


class CNN1d(nn.Module):
    """Three strided 1-D convolutions and a linear head, as in the MNIST-1D paper's CNN.

    The layers are ``nn.Conv1d`` modules (parameters and state dicts as usual), applied as an
    im2col gather plus one matrix product in channels-last layout: at these sizes (a few to 64
    channels, length <= 40) oneDNN's convolution is dominated by its per-call costs, and the
    gather is about twice as fast forward and backward at width 8, with the same result
    (tests/test_models.py compares it with ``F.conv1d``).
    """

    def __init__(self, length: int, width: int, num_classes: int) -> None:
        super().__init__()
        specs = [
            (1, 5),
            (width, 3),
            (width, 3),
        ]  # (in_channels, kernel); stride 2, padding 1
        layers: list[nn.Module] = []
        for i, (in_ch, kernel) in enumerate(specs):
            layers += [nn.Conv1d(in_ch, width, kernel, stride=2, padding=1), nn.ReLU()]
            out = (length + 2 - kernel) // 2 + 1
            if out < 1:
                raise ValueError("cnn1d input is too short for three stride-2 convolutions")
            # Padded input positions of each output's window, output-major: (out * kernel,).
            windows = (torch.arange(out).unsqueeze(1) * 2 + torch.arange(kernel)).flatten()
            self.register_buffer(f"_windows{i}", windows, persistent=False)
            length = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * length, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Functional calls (torch.relu, F.linear) rather than the ReLU and Linear modules: the
        # module call machinery is a measurable share of a step this small.
        h = _as_sequence(x).transpose(1, 2)  # (B, L, C)
        for i in range(3):
            h = torch.relu(_conv1d_gather(h, self.features[2 * i], getattr(self, f"_windows{i}")))
        feats = h.transpose(1, 2).flatten(1)  # (B, C * L), the order of nn.Conv1d's output
        return F.linear(feats, self.fc.weight, self.fc.bias), feats


def _conv1d_gather(h: torch.Tensor, conv: nn.Conv1d, windows: torch.Tensor) -> torch.Tensor:
    """``conv`` (stride 2, padding 1) on channels-last ``h`` (B, L, C_in) -> (B, L_out, C_out)."""
    batch, _, c_in = h.shape
    c_out, _, kernel = conv.weight.shape
    out = len(windows) // kernel
    cols = F.pad(h, (0, 0, 1, 1)).index_select(1, windows).view(batch * out, kernel * c_in)
    # cols are ordered (kernel, C_in); the weight is (C_out, C_in, kernel): the same order, and
    # a free view, when C_in is 1.
    weight = conv.weight.view(c_out, kernel) if c_in == 1 else conv.weight.transpose(1, 2)
    return torch.addmm(conv.bias, cols, weight.reshape(c_out, -1).t()).view(batch, out, c_out)


class MLP(nn.Module):
    """Two-hidden-layer ReLU MLP on the flattened input."""

    def __init__(self, in_features: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.fc(feats), feats


# --------------------------------------------------------------------------- CIFAR ResNet


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block (conv-bn-relu-conv-bn, add, relu)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:  # projection shortcut, as in RepDistiller
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2 with three stages (strides 1, 2, 2) and global pooling."""

    def __init__(
        self, depth: int, channels: list[int], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        stages = []
        in_ch = channels[0]
        for out_ch, stride in zip(channels[1:], (1, 2, 2), strict=True):
            blocks = [BasicBlock(in_ch, out_ch, stride)]
            blocks += [BasicBlock(out_ch, out_ch) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        feats = F.adaptive_avg_pool2d(x, 1).flatten(1)  # == AvgPool2d(8) on 8x8 maps
        return self.fc(feats), feats


# --------------------------------------------------------------------------- Wide ResNet


class WideBasicBlock(nn.Module):
    """Pre-activation block of Zagoruyko & Komodakis (bn-relu-conv x2, identity or 1x1 add)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut: nn.Module | None = None
        if in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # As in the reference code, a projection shortcut sees the pre-activated input.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k of depth 6n+4 (dropout 0), as used by RepDistiller / mdistiller."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv3x3(in_channels, channels[0])
        stages = []
        for in_ch, out_ch, stride in zip(channels[:-1], channels[1:], (1, 2, 2), strict=True):
            blocks = [WideBasicBlock(in_ch, out_ch, stride)]
            blocks += [WideBasicBlock(out_ch, out_ch, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # N(0, 2 / (k*k*out)) == Kaiming fan_out
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        feats = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(feats), feats


# --------------------------------------------------------------------------- registry


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


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters (the figure reported in KD papers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
