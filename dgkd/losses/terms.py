"""TCKD, NCKD and their closed-form gradients, each on its own (diagnostics and tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgkd.losses.teacher import TeacherStats, split_softmax, teacher_stats

__all__ = ["check_logits", "dkd_terms", "grad_terms"]


def check_logits(
    logits_s: Tensor, logits_t: Tensor | None, target: Tensor, temperature: float | Tensor
) -> None:
    """Refuse what DKD cannot take: mismatched shapes, fewer than 3 classes, T <= 0.

    Logits are B x C, or K x B x C for a population of K students (target K x B).
    """
    shape_t = logits_s.shape if logits_t is None else logits_t.shape
    if logits_s.ndim not in (2, 3) or logits_s.shape != shape_t:
        raise ValueError(
            f"student and teacher logits must both be B x C (or K x B x C), got "
            f"{tuple(logits_s.shape)} and {tuple(shape_t)}"
        )
    if logits_s.shape[-1] < 3:
        raise ValueError(
            f"DKD needs at least 3 classes (got {logits_s.shape[-1]}): with fewer, the "
            "non-target distribution has one class or none and NCKD is undefined; use kd or ce"
        )
    if target.shape != logits_s.shape[:-1]:
        raise ValueError(
            f"target must have shape {tuple(logits_s.shape[:-1])}, got {tuple(target.shape)}"
        )
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@dataclass(frozen=True)
class _Student:
    """The student's side of one batch for dkd_terms and grad_terms (differentiable)."""

    p_hat: Tensor  # B x C, 0 at the target
    p_t: Tensor  # (B, 1)
    tckd_rows: Tensor  # (B, 1) KL of the binary split, before T^2 and the batch mean
    nckd_rows: Tensor  # (B, 1) KL among the non-target classes


def _student(logits_s: Tensor, stats: TeacherStats, target: Tensor, temperature) -> _Student:
    """KL = sum q log q (a teacher constant, in the table) - sum q log p."""
    dtype = torch.promote_types(logits_s.dtype, torch.float32)  # half precision upcast
    zs = logits_s.to(dtype) / temperature
    _, neg, q_hat, q_t, q_nt, binary, among = stats.parts()
    p_hat, log_pt, log_npt, lse_nt = split_softmax(zs, zs + neg, target.unsqueeze(-1))
    tckd_rows = binary - q_t * log_pt - q_nt * log_npt
    # sum_j q_hat_j log p_hat_j = sum_j q_hat_j z_j - lse_nt, as in teacher_stats.
    nckd_rows = among - (q_hat * zs).sum(-1, keepdim=True) + lse_nt
    return _Student(p_hat, log_pt.exp(), tckd_rows, nckd_rows)


def _stats(logits_t: Tensor, target: Tensor, temperature) -> TeacherStats:
    """The teacher's table for B x C or K x B x C logits (a population's, rows flattened)."""
    flat = teacher_stats(logits_t.flatten(0, -2), target.flatten(), temperature=temperature)
    return TeacherStats(flat.table.view(*logits_t.shape[:-1], -1))


def dkd_terms(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, *, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """TCKD and NCKD, each scaled by T^2 and averaged over the batch (differentiable).

    Args:
        logits_s: Student logits, B x C (C >= 3), or K x B x C for K students.
        logits_t: Teacher logits of the same shape; treated as constants.
        target: Ground-truth class indices, shape (B,) or (K, B).
        temperature: Softmax temperature T > 0 (a number or a 0-d tensor).

    Returns:
        ``(tckd, nckd)``: scalar tensors, or one value per student, shape (K,).
    """
    check_logits(logits_s, logits_t, target, temperature)
    s = _student(logits_s, _stats(logits_t, target, temperature), target, temperature)
    t2 = temperature * temperature
    if logits_s.ndim == 2:
        return t2 * s.tckd_rows.mean(), t2 * s.nckd_rows.mean()
    return t2 * s.tckd_rows.mean((-2, -1)), t2 * s.nckd_rows.mean((-2, -1))


def _grads(s: _Student, stats: TeacherStats, temperature, batch: int) -> tuple[Tensor, ...]:
    """Closed-form g_T, g_N (gradients of batch-mean TCKD and NCKD), and the shared factors
    ``u = e_t - p_hat`` and ``a = p_t - q_t`` (..., B, 1)."""
    onehot, _, q_hat, q_t, *_ = stats.parts()
    c = temperature / batch
    a = s.p_t - q_t
    u = onehot - s.p_hat
    return (c * a) * u, c * (s.p_hat - q_hat), u, a


def grad_terms(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, *, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Closed-form gradients of TCKD and NCKD with respect to the student logits.

    g_T[i, t] = (T/B)(p_t - q_t), g_T[i, j] = -(T/B)(p_t - q_t) p_hat_j for j != t;
    g_N[i, t] = 0, g_N[i, j] = (T/B)(p_hat_j - q_hat_j). Equal to ``torch.autograd.grad`` of
    :func:`dkd_terms`, without a double backward. For K x B x C logits, each student's
    gradient is of its own batch mean.

    Returns:
        ``(g_tckd, g_nckd)``, each shaped like the logits (float32 or wider), detached.
    """
    check_logits(logits_s, logits_t, target, temperature)
    with torch.no_grad():
        stats = _stats(logits_t, target, temperature)
        s = _student(logits_s, stats, target, temperature)
        g_tckd, g_nckd, *_ = _grads(s, stats, temperature, logits_s.shape[-2])
        return g_tckd, g_nckd
