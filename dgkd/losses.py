"""Distillation losses as pure functions of logits and numbers.

Notation (DESIGN.md section 2): student logits ``z_s``, teacher logits ``z_t`` (B x C), target
``t``, temperature ``T``. ``p = softmax(z_s / T)``, ``q = softmax(z_t / T)``; ``p_hat``/``q_hat``
are the softmax over the non-target classes only.

* TCKD = T^2 mean_i KL([q_t, 1 - q_t] || [p_t, 1 - p_t])
* NCKD = T^2 mean_i KL(q_hat || p_hat)
* g_T = dTCKD/dz_s, g_N = dNCKD/dz_s (closed form, no double backward)
* M = mean over B x C of (g_T - g_N)^2
* DGKD = alpha TCKD + beta NCKD + grad_sign epsilon G, G = M / stopgrad(M) ("normalized") or M
  ("raw").

``dgkd_loss`` is one autograd Function: its forward computes every term once and its backward is
the closed-form gradient (alpha g_T + beta g_N + the hand-derived dG/dz_s). At these sizes the
cost is per-operation overhead, so a fused function with a few dozen tensor operations beats the
autograd formulation (which differentiates through g_T and g_N a second time). Hyperparameters may
be Python numbers or 0-d tensors, so a population of students can share the function.

Numerics: log p_t and log(1 - p_t) come from log-sum-exp, and the target class is excluded by
masking, so the terms stay finite for logits up to 1e4 in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GradTerm",
    "TeacherStats",
    "dgkd_loss",
    "dkd_terms",
    "grad_terms",
    "kd_loss",
    "teacher_stats",
]

GradTerm = Literal["normalized", "raw"]

# Added to stopgrad(M) in the normalized term, as in the reference implementation: keeps the
# gradient dM/M finite when a saturated student makes M exactly zero.
_NORM_EPS = 1e-8


@dataclass(frozen=True)
class _Parts:
    """Per-row quantities shared by the terms and their gradients."""

    mask: Tensor  # B x C one-hot of the target, bool
    p: Tensor  # B x C softmax(z_s / T)
    p_t: Tensor  # (B,) student target probability
    p_hat: Tensor  # B x C student softmax over non-target classes (0 at the target)
    q_t: Tensor  # (B,) teacher target probability
    q_hat: Tensor  # B x C teacher softmax over non-target classes
    tckd_rows: Tensor  # (B,) KL of the binary split, before T^2 and the batch mean
    nckd_rows: Tensor  # (B,) KL among non-target classes


def _check(logits_s: Tensor, logits_t: Tensor, target: Tensor, temperature: float | Tensor) -> None:
    if logits_s.ndim != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"student and teacher logits must both be B x C, got {tuple(logits_s.shape)} "
            f"and {tuple(logits_t.shape)}"
        )
    if logits_s.shape[1] < 3:
        raise ValueError(
            f"DKD needs at least 3 classes (got {logits_s.shape[1]}): with fewer, the "
            "non-target distribution has one class or none and NCKD is undefined; use kd or ce"
        )
    if target.shape != logits_s.shape[:1]:
        raise ValueError(
            f"target must have shape ({logits_s.shape[0]},), got {tuple(target.shape)}"
        )
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@dataclass(frozen=True)
class TeacherStats:
    """The teacher's side of TCKD and NCKD at one temperature: constants of the student.

    When the teacher's logits on the training set are cached, computing these once per run and
    selecting a batch's rows (:meth:`select`) removes about a third of the loss's operations from
    every step. Build with :func:`teacher_stats`.
    """

    mask: Tensor  # N x C one-hot of the target, bool
    q_hat: Tensor  # N x C teacher softmax over non-target classes (0 at the target)
    rows: Tensor  # N x 4: q_t, 1 - q_t, sum of q log q over the binary split, and over q_hat

    def select(self, index: Tensor) -> TeacherStats:
        """The rows of a batch (``index`` into the N examples)."""
        return TeacherStats(self.mask[index], self.q_hat[index], self.rows[index])


def teacher_stats(logits_t: Tensor, target: Tensor, *, temperature: float | Tensor) -> TeacherStats:
    """Precompute the teacher's side of :func:`dgkd_loss` for ``logits_t`` (N x C) at ``T``."""
    with torch.no_grad():
        dtype = torch.promote_types(logits_t.dtype, torch.float32)
        zt = logits_t.to(dtype) / temperature
        mask = F.one_hot(target, zt.shape[1]).bool()
        lsm = torch.log_softmax(zt, dim=1)
        log_qt = lsm.gather(1, target.unsqueeze(1)).squeeze(1)
        log_1m_qt = torch.logsumexp(lsm.masked_fill(mask, float("-inf")), dim=1)
        log_q_hat = torch.log_softmax(zt.masked_fill(mask, float("-inf")), dim=1)
        q_hat = log_q_hat.exp()  # exactly 0 at the target
        q_t, q_nt = log_qt.exp(), log_1m_qt.exp()
        # log q is finite wherever q is 0 except at the masked target, hence the fill.
        binary = q_t * log_qt + q_nt * log_1m_qt
        among = (q_hat * log_q_hat.masked_fill(mask, 0.0)).sum(1)
        return TeacherStats(mask, q_hat, torch.stack([q_t, q_nt, binary, among], dim=1))


def _parts(
    logits_s: Tensor, stats: TeacherStats, target: Tensor, temperature: float | Tensor
) -> _Parts:
    """Student-side quantities; KL = sum q log q (teacher constant) - sum q log p."""
    dtype = torch.promote_types(logits_s.dtype, torch.float32)  # half precision upcast
    zs = logits_s.to(dtype) / temperature
    mask = stats.mask
    lsm = torch.log_softmax(zs, dim=1)
    log_pt = lsm.gather(1, target.unsqueeze(1)).squeeze(1)
    # log(1 - p_t) by log-sum-exp over the non-target classes: finite even when p_t rounds to 1.
    log_1m_pt = torch.logsumexp(lsm.masked_fill(mask, float("-inf")), dim=1)
    log_p_hat = torch.log_softmax(zs.masked_fill(mask, float("-inf")), dim=1)
    q_t, q_nt, binary, among = stats.rows.unbind(1)
    tckd_rows = binary - q_t * log_pt - q_nt * log_1m_pt
    nckd_rows = among - (stats.q_hat * log_p_hat.masked_fill(mask, 0.0)).sum(1)
    return _Parts(
        mask, lsm.exp(), log_pt.exp(), log_p_hat.exp(), q_t, stats.q_hat, tckd_rows, nckd_rows
    )


def _grads(parts: _Parts, temperature: float | Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Closed-form g_T and g_N (B x C), the gradients of batch-mean TCKD and NCKD."""
    c = temperature / batch
    a = (parts.p_t - parts.q_t).unsqueeze(1)
    g_t = torch.where(parts.mask, c * a, -c * a * parts.p_hat)
    g_n = c * (parts.p_hat - parts.q_hat)  # zero at the target: both hats are masked there
    return g_t, g_n


def _row_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Mean row-wise cosine; a zero row counts as 0 (F.cosine_similarity's eps misbehaves at
    the tiny norms g_T and g_N reach once a student fits its teacher)."""
    norms = a.norm(dim=1) * b.norm(dim=1)
    dots = (a * b).sum(1)
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(a.dtype).tiny), 0.0).mean()


def dkd_terms(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, *, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """TCKD and NCKD, each scaled by T^2 and averaged over the batch (differentiable).

    Args:
        logits_s: Student logits, B x C (C >= 3).
        logits_t: Teacher logits, B x C; treated as constants.
        target: Ground-truth class indices, shape (B,).
        temperature: Softmax temperature T > 0 (a number or a 0-d tensor).

    Returns:
        ``(tckd, nckd)`` as scalar tensors.
    """
    _check(logits_s, logits_t, target, temperature)
    parts = _parts(
        logits_s, teacher_stats(logits_t, target, temperature=temperature), target, temperature
    )
    t2 = temperature * temperature
    return t2 * parts.tckd_rows.mean(), t2 * parts.nckd_rows.mean()


def grad_terms(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, *, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Closed-form gradients of TCKD and NCKD with respect to the student logits.

    g_T[i, t] = (T/B)(p_t - q_t), g_T[i, j] = -(T/B)(p_t - q_t) p_hat_j for j != t;
    g_N[i, t] = 0, g_N[i, j] = (T/B)(p_hat_j - q_hat_j). Equal to ``torch.autograd.grad`` of
    :func:`dkd_terms`, without a double backward.

    Returns:
        ``(g_tckd, g_nckd)``, each B x C (float32 or wider), detached.
    """
    _check(logits_s, logits_t, target, temperature)
    with torch.no_grad():
        stats = teacher_stats(logits_t, target, temperature=temperature)
        parts = _parts(logits_s, stats, target, temperature)
        return _grads(parts, temperature, logits_s.shape[0])


class _DGKDFunction(torch.autograd.Function):
    """alpha TCKD + beta NCKD + weight G: forward and closed-form backward in one graph node."""

    @staticmethod
    def forward(ctx, logits_s, stats, target, alpha, beta, weight, temperature, raw):
        batch = logits_s.shape[0]
        parts = _parts(logits_s, stats, target, temperature)
        g_t, g_n = _grads(parts, temperature, batch)
        r = g_t - g_n
        grad_mse = (r * r).mean()
        t2 = temperature * temperature
        tckd = t2 * parts.tckd_rows.mean()
        nckd = t2 * parts.nckd_rows.mean()
        denom = grad_mse if raw else grad_mse + _NORM_EPS
        loss = alpha * tckd + beta * nckd + weight * (grad_mse if raw else grad_mse / denom)
        grad_cos = _row_cosine(g_t, g_n)
        ctx.save_for_backward(parts.mask, parts.p, parts.p_t, parts.p_hat, parts.q_t, g_t, g_n, r)
        ctx.hyper = (alpha, beta, weight, temperature, denom, raw, logits_s.dtype)
        ctx.mark_non_differentiable(tckd, nckd, grad_mse, grad_cos)
        return loss, tckd, nckd, grad_mse, grad_cos

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        mask, p, p_t, p_hat, q_t, g_t, g_n, r = ctx.saved_tensors
        alpha, beta, weight, _temperature, denom, raw, dtype = ctx.hyper
        batch, classes = p.shape
        # dM/dz_s = 2c/(B C T) [p_t (e_t - p)(r_t - S) - (a + 1) p_hat (r - S) on j != t],
        # c = T/B, a = p_t - q_t, S = sum_{j != t} r_j p_hat_j (DESIGN.md section 2); the
        # second product is already zero at the target because p_hat is.
        a = (p_t - q_t).unsqueeze(1)
        r_t = (r * mask).sum(1, keepdim=True)
        s = (r * p_hat).sum(1, keepdim=True)
        d_mse = p_t.unsqueeze(1) * (mask.to(p.dtype) - p) * (r_t - s) - (a + 1) * p_hat * (r - s)
        d_mse = d_mse * (2.0 / (batch * batch * classes))  # 2c / (B C T) with c = T / B
        d_g = d_mse if raw else d_mse / denom
        grad = grad_loss * (alpha * g_t + beta * g_n + weight * d_g)
        return grad.to(dtype), None, None, None, None, None, None, None


def dgkd_loss(
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    *,
    alpha: float | Tensor,
    beta: float | Tensor,
    epsilon: float | Tensor,
    temperature: float | Tensor,
    grad_term: GradTerm = "normalized",
    grad_sign: float = -1.0,
    stats: TeacherStats | None = None,
) -> dict[str, Tensor]:
    """Decoupled Gradient Knowledge Distillation loss.

    ``alpha * TCKD + beta * NCKD + grad_sign * epsilon * G`` where G is the mean-squared
    difference M of the TCKD and NCKD gradients with respect to the student logits, either
    normalized (``M / stopgrad(M)``: value 1, gradient ``grad log M``; the reference code's final
    form) or raw (``M``, as the seed text writes it). ``grad_sign=-1`` maximizes M (the method),
    ``+1`` minimizes it (the ``minimize_mse`` ablation). ``epsilon=0`` is exactly DKD.

    Args:
        logits_s: Student logits, B x C with C >= 3. Gradients flow only to these.
        logits_t: Teacher logits, B x C (constants); may be None when ``stats`` is given.
        target: Class indices, shape (B,).
        alpha: TCKD weight.
        beta: NCKD weight.
        epsilon: Weight of the gradient term.
        temperature: Softmax temperature, > 0.
        grad_term: ``"normalized"`` or ``"raw"``.
        grad_sign: -1.0 or +1.0.
        stats: The batch's rows of :func:`teacher_stats` at the same temperature, to skip
            recomputing the teacher's side (a training loop with cached teacher logits).

    Returns:
        A dict with ``loss`` (differentiable scalar), and detached ``tckd``, ``nckd``,
        ``grad_mse`` (M) and ``grad_cos`` (mean row-wise cosine of g_T and g_N).

    Raises:
        ValueError: for fewer than 3 classes, mismatched shapes, a bad ``grad_term`` or sign.
    """
    if grad_term not in ("normalized", "raw"):
        raise ValueError(f"grad_term must be 'normalized' or 'raw', got {grad_term!r}")
    if grad_sign not in (-1.0, 1.0):
        raise ValueError(f"grad_sign must be -1 or +1, got {grad_sign}")
    if stats is None:
        _check(logits_s, logits_t, target, temperature)
        stats = teacher_stats(logits_t, target, temperature=temperature)
    elif stats.q_hat.shape != logits_s.shape:
        raise ValueError(
            f"stats are for {tuple(stats.q_hat.shape)} logits, got {tuple(logits_s.shape)}"
        )
    loss, tckd, nckd, grad_mse, grad_cos = _DGKDFunction.apply(
        logits_s,
        stats,
        target,
        alpha,
        beta,
        grad_sign * epsilon,
        temperature,
        grad_term == "raw",
    )
    return {"loss": loss, "tckd": tckd, "nckd": nckd, "grad_mse": grad_mse, "grad_cos": grad_cos}


def kd_loss(logits_s: Tensor, logits_t: Tensor, *, temperature: float | Tensor) -> Tensor:
    """Hinton's KD: ``T^2 * mean_i KL(q || p)`` with q, p the tempered softmaxes."""
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(logits_s.float() / temperature, dim=1)
    log_q = F.log_softmax(logits_t.detach().float() / temperature, dim=1)
    return temperature * temperature * (log_q.exp() * (log_q - log_p)).sum(1).mean()
