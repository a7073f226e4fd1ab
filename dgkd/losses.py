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
    "dgkd_loss",
    "dkd_terms",
    "grad_terms",
    "kd_loss",
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


def _split(z: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stable log p_t, log(1 - p_t), p_hat and log p_hat of scaled logits ``z``."""
    lse = torch.logsumexp(z, dim=1)
    z_nt = z.masked_fill(mask, float("-inf"))
    lse_nt = torch.logsumexp(z_nt, dim=1)
    log_pt = z.gather(1, target.unsqueeze(1)).squeeze(1) - lse
    log_1m_pt = lse_nt - lse
    # Fill the target entry after log_softmax (not before): exact zeros there, no -inf * 0.
    log_hat = (z_nt - lse_nt.unsqueeze(1)).masked_fill(mask, 0.0)
    hat = log_hat.exp().masked_fill(mask, 0.0)
    return log_pt, log_1m_pt, hat, log_hat


def _parts(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, temperature: float | Tensor
) -> _Parts:
    dtype = torch.promote_types(logits_s.dtype, torch.float32)  # half precision upcast
    zs = logits_s.to(dtype) / temperature
    zt = logits_t.to(dtype) / temperature
    mask = F.one_hot(target, zs.shape[1]).bool()
    s_lpt, s_l1mpt, p_hat, s_lhat = _split(zs, target, mask)
    t_lpt, t_l1mpt, q_hat, t_lhat = _split(zt, target, mask)
    q_t = t_lpt.exp()
    q_nt = -torch.expm1(t_lpt)  # 1 - q_t without cancellation
    tckd_rows = q_t * (t_lpt - s_lpt) + q_nt * (t_l1mpt - s_l1mpt)
    nckd_rows = (q_hat * (t_lhat - s_lhat)).sum(1)
    p = torch.softmax(zs, dim=1)
    return _Parts(mask, p, s_lpt.exp(), p_hat, q_t, q_hat, tckd_rows, nckd_rows)


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
    parts = _parts(logits_s, logits_t.detach(), target, temperature)
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
        parts = _parts(logits_s, logits_t, target, temperature)
        return _grads(parts, temperature, logits_s.shape[0])


class _DGKDFunction(torch.autograd.Function):
    """alpha TCKD + beta NCKD + weight G: forward and closed-form backward in one graph node."""

    @staticmethod
    def forward(ctx, logits_s, logits_t, target, alpha, beta, weight, temperature, raw):
        batch = logits_s.shape[0]
        parts = _parts(logits_s, logits_t, target, temperature)
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
    logits_t: Tensor,
    target: Tensor,
    *,
    alpha: float | Tensor,
    beta: float | Tensor,
    epsilon: float | Tensor,
    temperature: float | Tensor,
    grad_term: GradTerm = "normalized",
    grad_sign: float = -1.0,
) -> dict[str, Tensor]:
    """Decoupled Gradient Knowledge Distillation loss.

    ``alpha * TCKD + beta * NCKD + grad_sign * epsilon * G`` where G is the mean-squared
    difference M of the TCKD and NCKD gradients with respect to the student logits, either
    normalized (``M / stopgrad(M)``: value 1, gradient ``grad log M``; the reference code's final
    form) or raw (``M``, as the seed text writes it). ``grad_sign=-1`` maximizes M (the method),
    ``+1`` minimizes it (the ``minimize_mse`` ablation). ``epsilon=0`` is exactly DKD.

    Args:
        logits_s: Student logits, B x C with C >= 3. Gradients flow only to these.
        logits_t: Teacher logits, B x C (constants).
        target: Class indices, shape (B,).
        alpha: TCKD weight.
        beta: NCKD weight.
        epsilon: Weight of the gradient term.
        temperature: Softmax temperature, > 0.
        grad_term: ``"normalized"`` or ``"raw"``.
        grad_sign: -1.0 or +1.0.

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
    _check(logits_s, logits_t, target, temperature)
    loss, tckd, nckd, grad_mse, grad_cos = _DGKDFunction.apply(
        logits_s,
        logits_t.detach(),
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
