"""The decoupled softmax and the teacher's side of TCKD and NCKD, precomputed once per run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TeacherStats", "split_softmax", "teacher_stats"]


def split_softmax(
    z: Tensor, m: Tensor, tgt: Tensor, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decoupled softmax of scaled logits ``z`` (..., B, C) with one masked exponential.

    ``m`` is ``z`` with -inf at the target, ``tgt`` the target as (..., B, 1). Returns ``p_hat``
    (softmax over the non-target classes, exactly 0 at the target), ``log p_t``, ``log(1 - p_t)``
    and ``lse_nt`` (log-sum-exp of the non-target logits), the last three (..., B, 1). Shifting
    by the non-target maximum keeps their sum >= 1, so every log is finite for any finite
    logits; this costs about a third of ``log_softmax`` plus ``logsumexp`` (nine kernels) at
    these sizes. ``out`` receives ``p_hat`` (no autograd).
    """
    shift = m.amax(-1, keepdim=True)
    e = (m - shift).exp()
    total = e.sum(-1, keepdim=True)
    p_hat = e / total if out is None else torch.div(e, total, out=out)
    lse_nt = total.log() + shift
    z_t = z.gather(-1, tgt)
    lse = torch.logaddexp(z_t, lse_nt)
    return p_hat, z_t - lse, lse_nt - lse, lse_nt


@dataclass(frozen=True)
class TeacherStats:
    """The teacher's side of TCKD and NCKD at one temperature: constants of the student.

    One N x (3C + 4) table (or K x B x (3C + 4) for a population, each member's rows in its own
    order), so that a batch's rows are a single ``index_select`` or slice: the one-hot target,
    the additive mask (-inf at the target), the teacher's non-target softmax ``q_hat``, then
    ``q_t``, ``1 - q_t`` and the teacher's entropy parts ``sum q log q`` of the binary split and
    of ``q_hat``. Computing it once per run removes the teacher's operations from every step.
    Build with :func:`teacher_stats`.
    """

    table: Tensor

    @property
    def classes(self) -> int:
        return (self.table.shape[-1] - 4) // 3

    def parts(self) -> tuple[Tensor, ...]:
        """``(onehot, neg, q_hat, q_t, q_nt, binary, among)``, views of the table."""
        c = self.classes
        return self.table.split([c, c, c, 1, 1, 1, 1], dim=-1)

    def select(self, index: Tensor) -> TeacherStats:
        """The rows of a batch (``index`` into the N examples of a 2-D table)."""
        return TeacherStats(self.table.index_select(0, index))

    def rows(self, part: slice) -> TeacherStats:
        """A contiguous range of rows, as a view (a batch of an epoch already in order)."""
        return TeacherStats(self.table[..., part, :])


def teacher_stats(logits_t: Tensor, target: Tensor, *, temperature: float | Tensor) -> TeacherStats:
    """Precompute the teacher's side of :func:`dgkd_loss` for ``logits_t`` (N x C) at ``T``."""
    with torch.no_grad():
        n, classes = logits_t.shape
        dtype = torch.promote_types(logits_t.dtype, torch.float32)
        table = logits_t.new_zeros(n, 3 * classes + 4, dtype=dtype)
        onehot, neg, q_hat, q_t, q_nt, binary, among = TeacherStats(table).parts()
        tgt = target.unsqueeze(1)
        onehot.scatter_(1, tgt, 1.0)
        neg.scatter_(1, tgt, float("-inf"))
        zt = logits_t.to(dtype) / temperature
        _, log_qt, log_qnt, lse_nt = split_softmax(zt, zt + neg, tgt, out=q_hat)
        torch.exp(log_qt, out=q_t)
        torch.exp(log_qnt, out=q_nt)
        torch.addcmul(q_t * log_qt, q_nt, log_qnt, out=binary)
        # sum_j q_hat_j log q_hat_j = sum_j q_hat_j z_j - lse_nt: q_hat sums to 1 and is 0 at t.
        torch.sub((q_hat * zt).sum(1, keepdim=True), lse_nt, out=among)
        return TeacherStats(table)
