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

``dgkd_loss`` is one autograd Function whose forward computes every term and the closed-form
gradient (alpha g_T + beta g_N + the hand-derived dG/dz_s, optionally + CE's) in one pass; the
backward only scales it. At these sizes a tensor operation costs microseconds whatever its size,
so the design counts operations: one masked exponential per side instead of ``log_softmax`` plus
``logsumexp``, every row reduction as one product of two gathers, the teacher's side precomputed
once per run (:func:`teacher_stats`). The autograd formulation differentiates through g_T and g_N
a second time. Hyperparameters may be Python numbers or 0-d tensors, so a population of students
can share the function.

Numerics: log p_t and log(1 - p_t) come from log-sum-exp shifted by the non-target maximum, and
the target class is excluded by an additive -inf mask, so the terms stay finite for logits up to
1e4 in float32.
"""

from __future__ import annotations

import functools
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

_WIDE = (torch.float32, torch.float64)  # logits in other dtypes (half) are computed in float32


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


def _split_softmax(
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

    One N x (3C + 4) table, so that a batch's rows are a single ``index_select``: the one-hot
    target, the additive mask (-inf at the target), the teacher's non-target softmax ``q_hat``,
    then ``q_t``, ``1 - q_t`` and the teacher's entropy parts ``sum q log q`` of the binary split
    and of ``q_hat``. Computing it once per run removes the teacher's operations from every
    step. Build with :func:`teacher_stats`.
    """

    table: Tensor

    @property
    def classes(self) -> int:
        return (self.table.shape[1] - 4) // 3

    def parts(self) -> tuple[Tensor, ...]:
        """``(onehot, neg, q_hat, q_t, q_nt, binary, among)``, views of the table."""
        c = self.classes
        return self.table.split([c, c, c, 1, 1, 1, 1], dim=1)

    def select(self, index: Tensor) -> TeacherStats:
        """The rows of a batch (``index`` into the N examples)."""
        return TeacherStats(self.table.index_select(0, index))

    def rows(self, part: slice) -> TeacherStats:
        """A contiguous range of rows, as a view (a batch of an epoch already in order)."""
        return TeacherStats(self.table[part])


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
        _, log_qt, log_qnt, lse_nt = _split_softmax(zt, zt + neg, tgt, out=q_hat)
        torch.exp(log_qt, out=q_t)
        torch.exp(log_qnt, out=q_nt)
        torch.addcmul(q_t * log_qt, q_nt, log_qnt, out=binary)
        # sum_j q_hat_j log q_hat_j = sum_j q_hat_j z_j - lse_nt: q_hat sums to 1 and is 0 at t.
        torch.sub((q_hat * zt).sum(1, keepdim=True), lse_nt, out=among)
        return TeacherStats(table)


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
    p_hat, log_pt, log_npt, lse_nt = _split_softmax(zs, zs + neg, target.unsqueeze(1))
    tckd_rows = binary - q_t * log_pt - q_nt * log_npt
    # sum_j q_hat_j log p_hat_j = sum_j q_hat_j z_j - lse_nt, as in teacher_stats.
    nckd_rows = among - (q_hat * zs).sum(1, keepdim=True) + lse_nt
    return _Student(p_hat, log_pt.exp(), tckd_rows, nckd_rows)


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
    s = _student(logits_s, teacher_stats(logits_t, target, temperature=temperature), target,
                 temperature)  # fmt: skip
    t2 = temperature * temperature
    return t2 * s.tckd_rows.mean(), t2 * s.nckd_rows.mean()


def _grads(s: _Student, stats: TeacherStats, temperature, batch: int) -> tuple[Tensor, ...]:
    """Closed-form g_T, g_N (B x C, gradients of batch-mean TCKD and NCKD), and the shared
    factors ``u = e_t - p_hat`` and ``a = p_t - q_t`` (B, 1)."""
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
    :func:`dkd_terms`, without a double backward.

    Returns:
        ``(g_tckd, g_nckd)``, each B x C (float32 or wider), detached.
    """
    _check(logits_s, logits_t, target, temperature)
    with torch.no_grad():
        stats = teacher_stats(logits_t, target, temperature=temperature)
        s = _student(logits_s, stats, target, temperature)
        return _grads(s, stats, temperature, logits_s.shape[0])[:2]


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant vector, built once (a fresh tensor costs four operations per step)."""
    return torch.tensor(values, dtype=dtype, device=device)


# Row reductions as one product of two gathers of the fields (u, d, w, p_hat, q_hat, dz) of
# _dgkd: w.w, w.p_hat and q_hat.dz for the loss and its gradient, then u.u, d.d and u.d for the
# cosine of g_T and g_N.
_LEFT, _RIGHT = (2, 2, 4, 0, 1, 0), (2, 3, 5, 0, 1, 1)


def _vector(values: tuple, like: Tensor) -> Tensor:
    """``values`` (numbers or 0-d tensors, e.g. a population's hyperparameters) as a vector."""
    if all(isinstance(v, (int, float)) for v in values):
        return _constant(tuple(float(v) for v in values), like.dtype, like.device)
    return torch.stack([torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in values])


def _dgkd(
    logits_s, teacher, target, alpha, beta, weight, temperature, raw, ce_weight, cosine, need_grad
):
    """The loss, its reported terms and (``need_grad``) its closed-form gradient for a unit
    upstream gradient, in one pass while every field is in cache.

    ``teacher`` is the batch's :class:`TeacherStats`, or the teacher's logits: then both sides'
    softmax is one (2, B, C) pass instead of two.
    """
    batch, classes = logits_s.shape
    z = logits_s if logits_s.dtype in _WIDE else logits_s.float()
    tgt = target.unsqueeze(1)
    # Six B x C fields in one buffer: u, d, w (below), the non-target softmaxes p_hat and q_hat,
    # and dz = z_s / T, or (z_s - z_t) / T when the teacher comes as logits (then NCKD's
    # q_hat . dz carries the teacher's sum q_hat z_t, and among = -lse_t).
    fields = z.new_empty(6, batch, classes)
    u, d, w, p_hat, q_hat, dz = fields.unbind(0)
    if isinstance(teacher, TeacherStats):
        onehot, neg, q_table, q_t, q_nt, binary, among = teacher.parts()
        torch.div(z, temperature, out=dz)
        q_hat.copy_(q_table)
        _, log_pt, log_npt, lse_nt = _split_softmax(dz, dz + neg, tgt, out=p_hat)
        p_t, p_nt = log_pt.exp(), log_npt.exp()
    else:
        onehot = torch.zeros_like(z).scatter_(1, tgt, 1.0)
        both = torch.stack([z, teacher.to(z.dtype)]) / temperature
        tgts = tgt.expand(2, -1, -1)
        masked = both.scatter(2, tgts, float("-inf"))  # one copy with -inf at the targets
        _, logs_t, logs_nt, lses = _split_softmax(both, masked, tgts, out=fields[3:5])
        (log_pt, log_qt), (log_npt, log_qnt), (lse_nt, lse_t) = (
            logs_t.unbind(0),
            logs_nt.unbind(0),
            lses.unbind(0),
        )
        (p_t, q_t), (p_nt, q_nt) = logs_t.exp().unbind(0), logs_nt.exp().unbind(0)
        binary = torch.addcmul(q_t * log_qt, q_nt, log_qnt)
        among = -lse_t
        torch.sub(both[0], both[1], out=dz)
    a = p_t - q_t
    torch.sub(onehot, p_hat, out=u)  # e_t - p_hat: g_T = c a u with c = T / B
    torch.sub(p_hat, q_hat, out=d)  # g_N = c d
    torch.addcmul(d, a, u, value=-1, out=w)  # d - a u = -(g_T - g_N) / c
    pairs = 6 if cosine else 3
    left, right = (_constant(i[:pairs], torch.long, z.device) for i in (_LEFT, _RIGHT))
    products = fields.index_select(0, left) * fields.index_select(0, right)
    ww, wp, qz, *cos_parts = products.sum(2, keepdim=True).unbind(0)
    tckd_rows = torch.addcmul(torch.addcmul(binary, q_t, log_pt, value=-1), q_nt, log_npt,
                              value=-1)  # fmt: skip
    # sum_j q_hat_j log p_hat_j = q_hat . z_s - lse_nt (q_hat sums to 1 and is 0 at t).
    rows = [tckd_rows, among - qz + lse_nt, ww]
    if ce_weight is not None:  # CE(z_s, y) at temperature 1, per row
        shift = z.amax(1, keepdim=True)
        e = (z - shift).exp()
        total = e.sum(1, keepdim=True)
        rows.append(total.log() + shift - z.gather(1, tgt))
    # The batch means, scaled into (TCKD, NCKD, M[, CE]); their weighted sum is the loss without
    # G (folded in as well when G = M is linear).
    means = torch.cat(rows, 1).mean(0)
    t2, c = temperature * temperature, temperature / batch
    scale = (t2, t2, c * c / classes, 1.0)[: len(rows)]
    linear = (alpha * t2, beta * t2, weight * c * c / classes if raw else 0.0, ce_weight)
    terms = means * _vector(scale, means)
    loss = torch.dot(means, _vector(linear[: len(rows)], means))
    tckd, nckd, grad_mse, *ce = terms.unbind()
    denom = grad_mse if raw else grad_mse + _NORM_EPS
    if not raw:
        loss = loss + weight * (grad_mse / denom)
    outputs = (loss, tckd, nckd, grad_mse)
    if cosine:  # cos(g_T, g_N) of a row = sign(a) u.d / (|u| |d|); |u| >= 1, d = 0 makes u.d 0
        uu, dd, ud = cos_parts
        tiny = torch.finfo(dd.dtype).tiny
        outputs += ((a.sign() * ud * torch.rsqrt(uu * dd.clamp_min(tiny))).mean(),)
    outputs += tuple(ce)
    if not need_grad:
        return outputs, None
    # dM/dz_s = 2c/(B C T) [p_t (e_t - p)(r_t - S) - (a + 1) p_hat (r - S) on j != t] with
    # c = T/B, a = p_t - q_t, r = g_T - g_N, S = sum_{j != t} r_j p_hat_j (DESIGN.md section
    # 2). Substituting e_t - p = (1 - p_t) u, r = -c w, r_t = c a and S = -c w.p_hat:
    # dM/dz_s = 2c/(B^2 C) [p_t (1 - p_t)(a + w.p_hat) u + (a + 1) p_hat (w - w.p_hat)];
    # and alpha g_T + beta g_N = c (alpha a u + beta d).
    lam = weight * (2.0 / (batch * batch * classes))
    if not raw:
        lam = lam / denom
    coef_u = alpha * a + lam * (p_t * p_nt * (a + wp))
    grad = torch.addcmul(beta * d, coef_u, u)
    grad.addcmul_(lam * (a + 1), p_hat * (w - wp))
    if ce_weight is not None:  # dCE/dz_s = (softmax(z_s) - e_t) / B; the factor below has T / B
        if isinstance(ce_weight / temperature, Tensor):
            grad.add_((e / total - onehot) * (ce_weight / temperature))
        else:
            grad.add_(e / total - onehot, alpha=ce_weight / temperature)
    grad *= c
    return outputs, grad


class _DGKDFunction(torch.autograd.Function):
    """ce_weight CE + alpha TCKD + beta NCKD + weight G as one graph node: the forward computes
    the closed-form gradient too, and the backward only scales it. About 90 tensor operations
    from raw logits, forward and backward (the autograd formulation dispatches about 130, through
    two graphs); at these sizes every operation costs microseconds whatever its size, so their
    number is the cost (``python -m benchmarks --only profile``)."""

    @staticmethod
    def forward(
        ctx, logits_s, teacher, target, alpha, beta, weight, temperature, raw, ce_weight, cosine
    ):
        ctx.set_materialize_grads(False)
        outputs, grad = _dgkd(logits_s, teacher, target, alpha, beta, weight, temperature, raw,
                              ce_weight, cosine, ctx.needs_input_grad[0])  # fmt: skip
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.dtype = logits_s.dtype
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        if grad_loss is None:
            return (None,) * 10
        (grad,) = ctx.saved_tensors
        grad = grad * grad_loss
        return grad if grad.dtype == ctx.dtype else grad.to(ctx.dtype), *(None,) * 9


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
    ce_weight: float | Tensor | None = None,
    cosine: bool = True,
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
        ce_weight: If given, ``ce_weight * CE(logits_s, target)`` (temperature 1) is added to
            ``loss`` in the same graph node, and CE is returned as ``ce``: a training step's
            whole loss then costs one forward and one closed-form backward.
        cosine: Also return ``grad_cos``, the diagnostic mean row-wise cosine of g_T and g_N
            (about a tenth of the call's cost; the loss and its gradient do not need it).

    Returns:
        A dict with ``loss`` (differentiable scalar), and detached ``tckd``, ``nckd``,
        ``grad_mse`` (M), ``grad_cos`` (with ``cosine``) and ``ce`` (with ``ce_weight``).

    Raises:
        ValueError: for fewer than 3 classes, mismatched shapes, a bad ``grad_term`` or sign.
    """
    if grad_term not in ("normalized", "raw"):
        raise ValueError(f"grad_term must be 'normalized' or 'raw', got {grad_term!r}")
    if grad_sign not in (-1.0, 1.0):
        raise ValueError(f"grad_sign must be -1 or +1, got {grad_sign}")
    if stats is None:
        _check(logits_s, logits_t, target, temperature)
    elif (len(stats.table), stats.classes) != logits_s.shape:
        raise ValueError(
            f"stats are for {(len(stats.table), stats.classes)} logits, got {tuple(logits_s.shape)}"
        )
    out = _DGKDFunction.apply(
        logits_s,
        logits_t.detach() if stats is None else stats,
        target,
        alpha,
        beta,
        grad_sign * epsilon,
        temperature,
        grad_term == "raw",
        ce_weight,
        cosine,
    )
    names = (
        ["loss", "tckd", "nckd", "grad_mse"]
        + ["grad_cos"] * cosine
        + ["ce"] * (ce_weight is not None)
    )
    return dict(zip(names, out, strict=True))


def kd_loss(logits_s: Tensor, logits_t: Tensor, *, temperature: float | Tensor) -> Tensor:
    """Hinton's KD: ``T^2 * mean_i KL(q || p)`` with q, p the tempered softmaxes."""
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(logits_s.float() / temperature, dim=1)
    log_q = F.log_softmax(logits_t.detach().float() / temperature, dim=1)
    return temperature * temperature * (log_q.exp() * (log_q - log_p)).sum(1).mean()
