"""A population: K students of one architecture as one module over stacked tensors.

Each member is initialized exactly as ``build_model`` under its own seed, then the K states are
stacked: every parameter and buffer gets its members as K equal blocks along dim 0, under the
plain model's state-dict key. Two ways run them as one network:

* the sequence models have stacked twins (:mod:`dgkd.models.sequence`) that take (K, B, ...)
  inputs and run each layer as one batched matrix product;
* the image models are converted into one grouped network: every convolution becomes one with
  ``groups=K`` over K x C channels, every BatchNorm one over K x C channels (so each member keeps
  its own batch statistics and running statistics, in training and in evaluation), and the
  classifier a batched matrix product. Their forwards need no change: they only convolve,
  normalize, add and pool channel-wise.

A population of one is the plain model itself. A member's forward never mixes with another's,
so dropping a member (:meth:`Population.select`) frees its compute and changes nothing for the
rest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dgkd.models.sequence import Stacked

__all__ = ["Population", "grouped"]


class _GroupedLinear(Stacked):
    """The classifier of a grouped image model: (B, K * in) features -> (K, B, out) logits."""

    def forward(self, x: Tensor) -> Tensor:
        size = self.weight.shape[0]
        return self.linear(x.view(x.shape[0], size, -1).transpose(0, 1))


def grouped(model: nn.Module, size: int) -> nn.Module:
    """A copy of image ``model`` that runs ``size`` members on (B, K x C, H, W) inputs.

    Its parameters are uninitialized (a population loads its members into them) and its state
    dict has the plain model's keys, each tensor holding the K members' blocks along dim 0.
    """
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # new layers initialize themselves; leave no trace
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Conv2d):
                    new: nn.Module = nn.Conv2d(
                        size * child.in_channels,
                        size * child.out_channels,
                        child.kernel_size,  # type: ignore[arg-type]
                        stride=child.stride,  # type: ignore[arg-type]
                        padding=child.padding,  # type: ignore[arg-type]
                        dilation=child.dilation,  # type: ignore[arg-type]
                        groups=size * child.groups,
                        bias=child.bias is not None,
                    )
                elif isinstance(child, nn.BatchNorm2d):
                    new = nn.BatchNorm2d(
                        size * child.num_features,
                        eps=child.eps,
                        momentum=child.momentum,
                        affine=child.affine,
                        track_running_stats=child.track_running_stats,
                    )
                elif isinstance(child, nn.Linear):
                    new = _GroupedLinear(size, (child.out_features, child.in_features))
                elif isinstance(child, (nn.Conv1d, nn.BatchNorm1d, nn.LayerNorm, nn.Dropout)):
                    raise ValueError(f"{type(child).__name__} cannot be grouped yet")
                else:
                    continue
                setattr(parent, name, new)
    return model


class Population(nn.Module):
    """K students of one architecture trained in one set of tensor operations.

    ``forward`` takes (K, B, *input_shape), one batch per member, and returns logits (K, B, C)
    and features (K, B, F). :meth:`member` gives member k as a plain model (``build_model``'s
    class with its weights); :meth:`select` keeps some members.

    Build with :func:`dgkd.models.build_population`.
    """

    def __init__(
        self,
        template: nn.Module,
        skeleton: Callable[[int], nn.Module],
        states: Sequence[dict[str, Tensor]],
        *,
        image: bool,
    ) -> None:
        super().__init__()
        self._template = [template]  # a plain member, never trained (a list: not a submodule)
        self._skeleton = skeleton
        self._image = image
        self._shapes = {key: tuple(t.shape) for key, t in template.state_dict().items()}
        self.size = len(states)
        with torch.random.fork_rng(devices=[]):  # new layers initialize themselves
            self.core = skeleton(self.size)
        target = self.core.state_dict()
        # Shared scalars (BatchNorm's num_batches_tracked) are equal at the start: member 0's.
        self.core.load_state_dict(
            {
                key: states[0][key]
                if t.ndim == 0
                else torch.stack([s[key] for s in states]).view(t.shape)
                for key, t in target.items()
            }
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.size == 1:  # the plain model (a stacked one costs a few views per layer)
            logits, feats = self.core(x.squeeze(0))
            return logits.unsqueeze(0), feats.unsqueeze(0)
        if not self._image:
            return self.core(x)
        size, batch = x.shape[:2]
        logits, feats = self.core(x.transpose(0, 1).reshape(batch, -1, *x.shape[3:]))
        return logits, feats.view(batch, size, -1).transpose(0, 1)

    def member_state(self, index: int) -> dict[str, Tensor]:
        """Member ``index``'s state dict, as the plain model's (views, not copies)."""
        return {
            key: t if t.ndim == 0 else t.view(self.size, *self._shapes[key])[index]
            for key, t in self.core.state_dict().items()
        }

    def member(self, index: int) -> nn.Module:
        """Member ``index`` as a plain model (its own copy of the weights), in eval mode."""
        model = copy.deepcopy(self._template[0])
        model.load_state_dict(self.member_state(index))
        return model.to(next(self.core.parameters()).device).eval()

    def select(self, keep: Sequence[int]) -> Population:
        """A population of the members ``keep`` (in that order), with their current state."""
        states = [self.member_state(i) for i in keep]
        device = next(self.core.parameters()).device
        new = Population(self._template[0], self._skeleton, states, image=self._image)
        return new.to(device).train(self.training)
