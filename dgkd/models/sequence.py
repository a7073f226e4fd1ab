"""MNIST-1D sequence models (``cnn1d``, ``mlp``), one student or K stacked.

Their ``width`` can be varied, so that teacher/student capacity gaps can be swept cheaply. Each
has a stacked twin holding K students' parameters with a leading K dimension under the same
state-dict keys; it runs every layer for all K at once (a batched matrix product where the single
model has one), and each student's result is bitwise the single model's.
"""

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CNN1d", "MLP", "Stacked", "StackedCNN1d", "StackedMLP", "batched_linear"]

_SPECS = ((5,), (3,), (3,))  # kernel of each convolution; stride 2, padding 1


def _as_sequence(x: Tensor) -> Tensor:
    """Return ``x`` as (B, 1, L), accepting (B, L) or (B, 1, L)."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3 and x.shape[1] == 1:
        return x
    raise ValueError(f"expected input of shape (B, L) or (B, 1, L), got {tuple(x.shape)}")


def _windows(length: int) -> tuple[list[Tensor], int]:
    """Padded input positions of each output's window per layer (output-major), and the final
    length."""
    windows = []
    for (kernel,) in _SPECS:
        out = (length + 2 - kernel) // 2 + 1
        if out < 1:
            raise ValueError("cnn1d input is too short for three stride-2 convolutions")
        windows.append((torch.arange(out).unsqueeze(1) * 2 + torch.arange(kernel)).flatten())
        length = out
    return windows, length


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
        windows, length = _windows(length)
        layers: list[nn.Module] = []
        for i, ((kernel,), in_ch) in enumerate(zip(_SPECS, (1, width, width), strict=True)):
            layers += [nn.Conv1d(in_ch, width, kernel, stride=2, padding=1), nn.ReLU()]
            self.register_buffer(f"_windows{i}", windows[i], persistent=False)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width * length, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Functional calls (torch.relu, F.linear) rather than the ReLU and Linear modules: the
        # module call machinery is a measurable share of a step this small.
        h = _as_sequence(x).transpose(1, 2)  # (B, L, C)
        for i in range(3):
            conv = cast(nn.Conv1d, self.features[2 * i])
            h = torch.relu(_conv1d_gather(h, conv, getattr(self, f"_windows{i}")))
        feats = h.transpose(1, 2).flatten(1)  # (B, C * L), the order of nn.Conv1d's output
        return F.linear(feats, self.fc.weight, self.fc.bias), feats


def _conv1d_gather(h: Tensor, conv: nn.Conv1d, windows: Tensor) -> Tensor:
    """``conv`` (stride 2, padding 1) on channels-last ``h`` (B, L, C_in) -> (B, L_out, C_out)."""
    batch, _, c_in = h.shape
    c_out, _, kernel = conv.weight.shape
    out = len(windows) // kernel
    cols = F.pad(h, (0, 0, 1, 1)).index_select(1, windows).view(batch * out, kernel * c_in)
    # cols are ordered (kernel, C_in); the weight is (C_out, C_in, kernel): the same order, and
    # a free view, when C_in is 1.
    weight = conv.weight.view(c_out, kernel) if c_in == 1 else conv.weight.transpose(1, 2)
    bias = cast(Tensor, conv.bias)
    return torch.addmm(bias, cols, weight.reshape(c_out, -1).t()).view(batch, out, c_out)


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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(x)
        return self.fc(feats), feats


# --------------------------------------------------------------------------- stacked twins


_ALIGN = 64  # bytes: where a fresh tensor starts


def _aligned(x: Tensor) -> Tensor:
    """``x`` (K, M, N), each student's matrix contiguous and starting on a 64-byte boundary, as
    a single model's fresh tensor does: MKL's product rounds differently when the rows of its
    left operand start elsewhere. A copy only when they do not already (B % 4 == 0 keeps the
    default student's layers aligned)."""
    size, rows, cols = x.shape
    step = _ALIGN // x.element_size()
    if x.stride()[1:] == (cols, 1) and x.stride(0) % step == 0 and x.data_ptr() % _ALIGN == 0:
        return x
    block = rows * cols
    out = x.new_empty(size, -(-block // step) * step)[:, :block].view(size, rows, cols)
    return out.copy_(x)


class _BatchedLinear(torch.autograd.Function):
    """``F.linear`` for K students, (K, M, in) x (K, out, in) + (K, out) -> (K, M, out).

    Written out because autograd's ``baddbmm`` backward forms the weight gradient as x^T g,
    while ``addmm`` with a transposed weight (``F.linear``) forms it as g^T x: the same sums in
    another order, and results that differ in the last bits. Here it is g^T x too, so each
    student's gradient is bitwise that of the single model.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        x = _aligned(x)
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad.bmm(weight) if ctx.needs_input_grad[0] else None
        return grad_x, grad.transpose(1, 2).bmm(x), grad.sum(1)


def batched_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear`` for each of K students: (K, M, in) -> (K, M, out), gradients as F.linear's."""
    return _BatchedLinear.apply(x, weight, bias)


class Stacked(nn.Module):
    """The weight and bias of one layer for K students: ``weight`` (K, *shape), ``bias`` (K, out).

    Left uninitialized: a population loads its members' initial states into it.
    """

    def __init__(self, size: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, *shape))
        self.bias = nn.Parameter(torch.empty(size, shape[0]))

    def linear(self, x: Tensor) -> Tensor:
        """``F.linear`` for each student: (K, B, in) -> (K, B, out)."""
        return batched_linear(x, self.weight, self.bias)


def _stacked_sequence(x: Tensor) -> Tensor:
    """(K, B, L) or (K, B, 1, L) -> channels-last (K, B, L, 1)."""
    if x.dim() == 3:
        return x.unsqueeze(-1)
    if x.dim() == 4 and x.shape[2] == 1:
        return x.transpose(2, 3)
    raise ValueError(f"expected input of shape (K, B, L) or (K, B, 1, L), got {tuple(x.shape)}")


class StackedCNN1d(nn.Module):
    """K :class:`CNN1d` students: per layer the same gather, then one ``baddbmm`` for all K."""

    def __init__(self, size: int, length: int, width: int, num_classes: int) -> None:
        super().__init__()
        windows, length = _windows(length)
        layers: list[nn.Module] = []
        for i, ((kernel,), in_ch) in enumerate(zip(_SPECS, (1, width, width), strict=True)):
            layers += [Stacked(size, (width, in_ch, kernel)), nn.ReLU()]
            self.register_buffer(f"_windows{i}", windows[i], persistent=False)
        self.features = nn.Sequential(*layers)
        self.fc = Stacked(size, (num_classes, width * length))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = _stacked_sequence(x)  # (K, B, L, C)
        convs = self.features._modules  # the dict itself: Sequential's indexing is slow
        for i in range(3):
            conv = cast(Stacked, convs[str(2 * i)])
            windows = getattr(self, f"_windows{i}")
            h = _ConvReLU.apply(h, conv.weight, conv.bias, windows)
        feats = h.transpose(2, 3).flatten(2)  # (K, B, C * L)
        return self.fc.linear(feats), feats


class _ConvReLU(torch.autograd.Function):
    """One layer of :class:`StackedCNN1d`: ``relu(conv(h))`` for K students, as one graph node.

    The operations are those of :func:`_conv1d_gather` and ``torch.relu`` batched over K, and
    the backward is the one autograd would run through them (so each student's gradients are
    bitwise the single model's), without a graph node, saved tensors and temporaries per
    operation: (K, B, L, C_in) -> (K, B, L_out, C_out).
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, windows: Tensor) -> Tensor:
        size, batch, length, c_in = h.shape
        _, c_out, _, kernel = weight.shape
        out = len(windows) // kernel
        padded = F.pad(h, (0, 0, 1, 1))
        if ctx.needs_input_grad[0]:
            cols = padded.index_select(2, windows).view(size, batch * out, kernel * c_in)
        else:  # the input layer: the same copy from a strided view, about twice as fast
            cols = padded.unfold(2, kernel, 2).transpose(3, 4).reshape(size, batch * out, -1)
        cols = _aligned(cols)
        # cols are ordered (kernel, C_in), as the weight (C_out, C_in, kernel) once transposed.
        w = weight.view(size, c_out, kernel) if c_in == 1 else weight.transpose(2, 3)
        w = w.reshape(size, c_out, -1)
        y = torch.baddbmm(bias.unsqueeze(1), cols, w.transpose(1, 2)).relu_()
        ctx.save_for_backward(cols, w, y, windows)
        ctx.shape = (size, batch, length, c_in, c_out, kernel, out)
        return y.view(size, batch, out, c_out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cols, w, y, windows = ctx.saved_tensors
        size, batch, length, c_in, c_out, kernel, out = ctx.shape
        # ReLU's backward (the kernel autograd runs for it), then F.linear's: g^T x for W.
        g = torch.ops.aten.threshold_backward(grad.reshape(size, batch * out, c_out), y, 0)
        grad_w = g.transpose(1, 2).bmm(cols)
        if c_in == 1:
            grad_weight = grad_w.view(size, c_out, 1, kernel)
        else:
            grad_weight = grad_w.view(size, c_out, kernel, c_in).transpose(2, 3)
        grad_h = None
        if ctx.needs_input_grad[0]:  # index_select's and pad's backward
            grad_cols = g.bmm(w).view(size, batch, out * kernel, c_in)
            padded = grad_cols.new_zeros(size, batch, length + 2, c_in)
            grad_h = padded.index_add_(2, windows, grad_cols)[:, :, 1 : length + 1]
        return grad_h, grad_weight, g.sum(1), None


class StackedMLP(nn.Module):
    """K :class:`MLP` students, each layer one ``baddbmm``."""

    def __init__(self, size: int, in_features: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(2),
            Stacked(size, (width, in_features)),
            nn.ReLU(),
            Stacked(size, (width, width)),
            nn.ReLU(),
        )
        self.fc = Stacked(size, (num_classes, width))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.flatten(2)
        for i in (1, 3):
            h = torch.relu(cast(Stacked, self.features[i]).linear(h))
        return self.fc.linear(h), h
