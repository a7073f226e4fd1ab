"""The baselines' losses: Hinton's KD and cross-entropy, for one student or a population."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cross_entropy", "kd_loss"]


def _col(v: float | Tensor, like: Tensor) -> float | Tensor:
    """A per-student (K,) value as (K, 1, 1) in ``like``'s dtype; numbers as they are."""
    if isinstance(v, Tensor) and v.ndim == 1:
        return v.to(like.device, like.dtype).view(-1, 1, 1)
    return v


def kd_loss(logits_s: Tensor, logits_t: Tensor, *, temperature: float | Tensor) -> Tensor:
    """Hinton's KD: ``T^2 * mean_i KL(q || p)`` with q, p the tempered softmaxes.

    For K x B x C logits, one value per student (shape (K,)), each over its own batch;
    ``temperature`` may then be a (K,) tensor (float64 for bitwise the numbers' results).
    """
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    zs = logits_s.float()
    if zs.ndim == 2:
        log_p = F.log_softmax(zs / temperature, dim=1)
        log_q = F.log_softmax(logits_t.detach().float() / temperature, dim=1)
        return temperature * temperature * (log_q.exp() * (log_q - log_p)).sum(1).mean()
    t = _col(temperature, zs)
    log_p = F.log_softmax(zs / t, dim=-1)
    log_q = F.log_softmax(logits_t.detach().float() / t, dim=-1)
    t2 = temperature * temperature  # in double, rounded once, as for a number
    if isinstance(t2, Tensor):
        t2 = t2.to(zs.device, zs.dtype)
    return t2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean(-1)


class _NLLPerStudent(torch.autograd.Function):
    """Per-student mean negative log-likelihood of K x B x C log-probabilities.

    Each student's value is ``F.nll_loss`` of its own rows (the library's summation order, so it
    equals the value of one student trained alone), and the gradient is the library's too,
    ``-g / B`` at the targets, for all students in one scatter.
    """

    @staticmethod
    def forward(ctx, log_probs: Tensor, target: Tensor) -> Tensor:
        ctx.save_for_backward(target)
        ctx.shape = log_probs.shape
        return torch.stack(
            [F.nll_loss(lp, t) for lp, t in zip(log_probs.unbind(0), target.unbind(0), strict=True)]
        )

    @staticmethod
    def backward(ctx, grad: Tensor):
        (target,) = ctx.saved_tensors
        k, batch, _ = ctx.shape
        value = -(grad / batch)
        out = grad.new_zeros(ctx.shape)
        out.scatter_(-1, target.unsqueeze(-1), value.view(k, 1, 1).expand(k, batch, 1))
        return out, None


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy per student: K x B x C logits and (K, B) targets give K values.

    Value and gradient of each student are bitwise ``F.cross_entropy`` of its own B x C, so a
    population's members train exactly as they would alone.
    """
    if logits.shape[0] == 1:  # one student: the library's own node (native, no Python)
        return F.cross_entropy(logits.squeeze(0).float(), target.squeeze(0)).unsqueeze(0)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return _NLLPerStudent.apply(log_probs, target)
