"""The DGKD loss as one autograd node whose forward also computes the closed-form gradient.

``dgkd_loss`` takes one student's B x C logits or a population's K x B x C. For a population
every mean (TCKD, NCKD, M and the normalizing stopgrad(M)) is taken per student over its own
B x C, and the hyperparameters may be per-student (K,) tensors: each student's value and
gradient are those it gets alone. Pass per-student values as float64 tensors: every product of
hyperparameters is then formed in double precision and rounded once, as for Python numbers, so
a student's results are bitwise the same whether its numbers are shared or its own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import repeat
from typing import Literal

import torch
from torch import Tensor

from dgkd.losses.teacher import TeacherStats, split_softmax
from dgkd.losses.terms import check_logits

__all__ = ["GradTerm", "dgkd_loss"]

GradTerm = Literal["normalized", "raw"]

# Added to stopgrad(M) in the normalized term, as in the reference implementation: keeps the
# gradient dM/M finite when a saturated student makes M exactly zero.
_NORM_EPS = 1e-8

_WIDE = (torch.float32, torch.float64)  # logits in other dtypes (half) are computed in float32


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant vector, built once (a fresh tensor costs four operations per step)."""
    return torch.tensor(values, dtype=dtype, device=device)


# Row reductions of the fields (u, d, w, p_hat, q_hat, dz) of _dgkd: w.w, w.p_hat and q_hat.dz
# for the loss and its gradient, then u.u, d.d and u.d for the cosine of g_T and g_N.
_LEFT, _RIGHT = (2, 2, 4, 0, 1, 0), (2, 3, 5, 0, 1, 1)
_GATHER_MAX = 16384  # elements per field up to which two gathers and one product are fastest


def _row_sums(fields: Tensor, cosine: bool) -> tuple[Tensor, ...]:
    """``(w.w, w.p_hat, q_hat.dz[, u.u, d.d, u.d])`` per row, each (..., B, 1).

    Small fields (one student): one product of two gathers, the fewest operations. Larger
    (a population): products of a field with views of adjacent fields, without the gathers'
    copies, which then cost more than the extra operations. Bitwise the same either way.
    """
    if fields[0].numel() <= _GATHER_MAX:
        pairs = 6 if cosine else 3
        left, right = (_constant(i[:pairs], torch.long, fields.device) for i in (_LEFT, _RIGHT))
        products = fields.index_select(0, left) * fields.index_select(0, right)
        return products.sum(-1, keepdim=True).unbind(0)
    u, d, w, _, q_hat, dz = fields.unbind(0)
    ww, wp = (w * fields[2:4]).sum(-1, keepdim=True).unbind(0)
    qz = (q_hat * dz).sum(-1, keepdim=True)
    if not cosine:
        return ww, wp, qz
    uu, ud = (u * fields[0:2]).sum(-1, keepdim=True).unbind(0)
    return ww, wp, qz, uu, (d * d).sum(-1, keepdim=True), ud


def _per_student(v) -> bool:
    return isinstance(v, Tensor) and v.ndim == 1


def _col(v, like: Tensor):
    """A per-student (K,) value as (K, 1, 1) in ``like``'s dtype, to scale the K x B x C fields;
    numbers and 0-d tensors are returned as they are."""
    return v.to(like.device, like.dtype).view(-1, 1, 1) if _per_student(v) else v


def _flat(v, like: Tensor):
    """A per-student (K,) value in ``like``'s dtype, to scale per-student (K,) terms."""
    return v.to(like.device, like.dtype) if _per_student(v) else v


def _vector(values: tuple, like: Tensor) -> Tensor:
    """``values`` (numbers, 0-d or per-student tensors) as a vector, or a K x len(values) matrix."""
    if all(isinstance(v, (int, float)) for v in values):
        return _constant(tuple(float(v) for v in values), like.dtype, like.device)
    lead = like.shape[:-1]
    return torch.stack(
        [torch.as_tensor(v, dtype=like.dtype, device=like.device).expand(lead) for v in values], -1
    )


def _either(raw, if_raw, if_normalized):
    """Per student: ``if_raw`` where its term is raw, else ``if_normalized``."""
    if not isinstance(raw, Tensor):
        return if_raw if raw else if_normalized
    as64 = functools.partial(torch.as_tensor, dtype=torch.float64, device=raw.device)
    return torch.where(raw, as64(if_raw), as64(if_normalized))


def _dgkd(
    logits_s, teacher, target, alpha, beta, weight, temperature, raw, ce_weight, cosine, need_grad
):
    """The loss, its reported terms and (``need_grad``) its closed-form gradient for a unit
    upstream gradient, in one pass while every field is in cache.

    ``teacher`` is the batch's :class:`TeacherStats`, or the teacher's logits: then both sides'
    softmax is one (2, ..., B, C) pass instead of two. ``raw`` is a bool, or a (K,) bool tensor.
    """
    batch, classes = logits_s.shape[-2:]
    population = logits_s.ndim == 3
    z = logits_s if logits_s.dtype in _WIDE else logits_s.float()
    tgt = target.unsqueeze(-1)
    t_col = _col(temperature, z)
    # Six fields in one buffer: u, d, w (below), the non-target softmaxes p_hat and q_hat, and
    # dz = z_s / T, or (z_s - z_t) / T when the teacher comes as logits (then NCKD's
    # q_hat . dz carries the teacher's sum q_hat z_t, and among = -lse_t).
    fields = z.new_empty(6, *z.shape)
    u, d, w, p_hat, q_hat, dz = fields.unbind(0)
    if isinstance(teacher, TeacherStats):
        onehot, neg, q_table, q_t, q_nt, binary, among = teacher.parts()
        torch.div(z, t_col, out=dz)
        q_hat.copy_(q_table)
        _, log_pt, log_npt, lse_nt = split_softmax(dz, dz + neg, tgt, out=p_hat)
        p_t, p_nt = log_pt.exp(), log_npt.exp()
    else:
        onehot = torch.zeros_like(z).scatter_(-1, tgt, 1.0)
        both = torch.stack([z, teacher.to(z.dtype)]) / t_col
        tgts = tgt.expand(2, *tgt.shape)
        masked = both.scatter(-1, tgts, float("-inf"))  # one copy with -inf at the targets
        _, logs_t, logs_nt, lses = split_softmax(both, masked, tgts, out=fields[3:5])
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
    ww, wp, qz, *cos_parts = _row_sums(fields, cosine)
    tckd_rows = torch.addcmul(torch.addcmul(binary, q_t, log_pt, value=-1), q_nt, log_npt, value=-1)
    # sum_j q_hat_j log p_hat_j = q_hat . z_s - lse_nt (q_hat sums to 1 and is 0 at t).
    rows = [tckd_rows, among - qz + lse_nt, ww]
    if ce_weight is not None:  # CE(z_s, y) at temperature 1, per row
        shift = z.amax(-1, keepdim=True)
        e = (z - shift).exp()
        total = e.sum(-1, keepdim=True)
        rows.append(total.log() + shift - z.gather(-1, tgt))
    # The batch means (per student), scaled into (TCKD, NCKD, M[, CE]); their weighted sum is
    # the loss without G (folded in as well when G = M is linear).
    means = torch.cat(rows, -1).mean(-2)
    t2, c = temperature * temperature, temperature / batch
    scale = (t2, t2, c * c / classes, 1.0)[: len(rows)]
    linear = (alpha * t2, beta * t2, _either(raw, weight * c * c / classes, 0.0), ce_weight)
    terms = means * _vector(scale, means)
    vec = _vector(linear[: len(rows)], means)
    if population:  # torch.dot per student: the same reduction as one student's, bit for bit
        rows_vec = vec.unbind(0) if vec.ndim == 2 else repeat(vec)
        loss = torch.stack(
            [torch.dot(m, v) for m, v in zip(means.unbind(0), rows_vec, strict=False)]
        )
    else:
        loss = torch.dot(means, vec)
    tckd, nckd, grad_mse, *ce = terms.unbind(-1)
    denom = grad_mse if raw is True else grad_mse + _NORM_EPS
    if isinstance(raw, Tensor):
        denom = torch.where(raw, grad_mse, denom)
        loss = loss + torch.where(raw, 0.0, _flat(weight, z) * (grad_mse / denom))
    elif not raw:
        loss = loss + _flat(weight, z) * (grad_mse / denom)
    outputs = (loss, tckd, nckd, grad_mse)
    if cosine:  # cos(g_T, g_N) of a row = sign(a) u.d / (|u| |d|); |u| >= 1, d = 0 makes u.d 0
        uu, dd, ud = cos_parts
        tiny = torch.finfo(dd.dtype).tiny
        row_cos = a.sign() * ud * torch.rsqrt(uu * dd.clamp_min(tiny))
        outputs += (row_cos.mean((-2, -1)) if population else row_cos.mean(),)
    outputs += tuple(ce)
    if not need_grad:
        return outputs, None
    # dM/dz_s = 2c/(B C T) [p_t (e_t - p)(r_t - S) - (a + 1) p_hat (r - S) on j != t] with
    # c = T/B, a = p_t - q_t, r = g_T - g_N, S = sum_{j != t} r_j p_hat_j (derived from
    # docs/method.md's g_T and g_N; tests/test_losses.py checks it against autograd).
    # Substituting e_t - p = (1 - p_t) u, r = -c w, r_t = c a and S = -c w.p_hat:
    # dM/dz_s = 2c/(B^2 C) [p_t (1 - p_t)(a + w.p_hat) u + (a + 1) p_hat (w - w.p_hat)];
    # and alpha g_T + beta g_N = c (alpha a u + beta d).
    lam = _col(weight * (2.0 / (batch * batch * classes)), z)
    if raw is not True:  # G = M / stopgrad(M): dG = dM / M, as reciprocal(M) * lam
        recip = (denom[..., None, None] if population else denom).reciprocal()
        if isinstance(raw, Tensor):
            recip = torch.where(raw.view(-1, 1, 1), 1.0, recip)
        lam = recip * lam
    coef_u = _col(alpha, z) * a + lam * (p_t * p_nt * (a + wp))
    grad = torch.addcmul(_col(beta, z) * d, coef_u, u)
    grad.addcmul_(lam * (a + 1), p_hat * (w - wp))
    if ce_weight is not None:  # dCE/dz_s = (softmax(z_s) - e_t) / B; the factor below has T / B
        ce_over_t = ce_weight / temperature
        if isinstance(ce_over_t, Tensor):  # addcmul: the same rounding as add's alpha
            grad.addcmul_(e / total - onehot, _col(ce_over_t, z))
        else:
            grad.add_(e / total - onehot, alpha=ce_over_t)
    grad *= _col(c, z)
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
        outputs, grad = _dgkd(
            logits_s,
            teacher,
            target,
            alpha,
            beta,
            weight,
            temperature,
            raw,
            ce_weight,
            cosine,
            ctx.needs_input_grad[0],
        )
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
        grad = grad * (grad_loss[:, None, None] if grad_loss.ndim else grad_loss)
        return grad if grad.dtype == ctx.dtype else grad.to(ctx.dtype), *(None,) * 9


def _raw(grad_term: GradTerm | Sequence[GradTerm], like: Tensor) -> bool | Tensor:
    """Whether G is raw: one bool, or a (K,) bool tensor when the students differ."""
    terms = [grad_term] if isinstance(grad_term, str) else list(grad_term)
    for term in terms:
        if term not in ("normalized", "raw"):
            raise ValueError(f"grad_term must be 'normalized' or 'raw', got {term!r}")
    if len(set(terms)) == 1:
        return terms[0] == "raw"
    return torch.tensor([t == "raw" for t in terms], device=like.device)


def _check_students(logits_s: Tensor, values: dict) -> None:
    """Per-student (K,) hyperparameters need K x B x C logits with the same K."""
    for name, v in values.items():
        if not (isinstance(v, Tensor) and v.ndim > 0):
            continue
        if logits_s.ndim != 3 or v.shape != logits_s.shape[:1]:
            raise ValueError(
                f"{name} has shape {tuple(v.shape)}: per-student values need K x B x C "
                f"logits and shape (K,), got logits {tuple(logits_s.shape)}"
            )
    sign = values["grad_sign"]
    if isinstance(sign, Tensor):
        if not bool(((sign == 1.0) | (sign == -1.0)).all()):
            raise ValueError(f"grad_sign must be -1 or +1, got {sign.tolist()}")
    elif sign not in (-1.0, 1.0):
        raise ValueError(f"grad_sign must be -1 or +1, got {sign}")


def dgkd_loss(
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    *,
    alpha: float | Tensor,
    beta: float | Tensor,
    epsilon: float | Tensor,
    temperature: float | Tensor,
    grad_term: GradTerm | Sequence[GradTerm] = "normalized",
    grad_sign: float | Tensor = -1.0,
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
        logits_s: Student logits, B x C with C >= 3, or K x B x C for K students trained at
            once (each term then per student, over its own B x C). Gradients flow only here.
        logits_t: Teacher logits of the same shape (constants); may be None with ``stats``.
        target: Class indices, shape (B,) or (K, B).
        alpha: TCKD weight.
        beta: NCKD weight.
        epsilon: Weight of the gradient term.
        temperature: Softmax temperature, > 0.
        grad_term: ``"normalized"`` or ``"raw"``, or one per student.
        grad_sign: -1.0 or +1.0.
        stats: The batch's rows of :func:`teacher_stats` at the same temperature, to skip
            recomputing the teacher's side (a training loop with cached teacher logits).
        ce_weight: If given, ``ce_weight * CE(logits_s, target)`` (temperature 1) is added to
            ``loss`` in the same graph node, and CE is returned as ``ce``: a training step's
            whole loss then costs one forward and one closed-form backward.
        cosine: Also return ``grad_cos``, the diagnostic mean row-wise cosine of g_T and g_N
            (about a tenth of the call's cost; the loss and its gradient do not need it).

    The numbers may be Python numbers, 0-d tensors, or with K x B x C logits (K,) tensors of
    per-student values (float64 for results bitwise equal to Python numbers).

    Returns:
        A dict with ``loss`` (differentiable), and detached ``tckd``, ``nckd``, ``grad_mse``
        (M), ``grad_cos`` (with ``cosine``) and ``ce`` (with ``ce_weight``): scalars, or (K,)
        tensors of per-student values for K x B x C logits.

    Raises:
        ValueError: for fewer than 3 classes, mismatched shapes, a bad ``grad_term`` or sign.
    """
    raw = _raw(grad_term, logits_s)
    values = {
        "alpha": alpha,
        "beta": beta,
        "epsilon": epsilon,
        "temperature": temperature,
        "grad_sign": grad_sign,
        "ce_weight": ce_weight,
    }
    _check_students(logits_s, values)
    if stats is None:
        check_logits(logits_s, logits_t, target, temperature)
    elif (*stats.table.shape[:-1], stats.classes) != tuple(logits_s.shape):
        raise ValueError(
            f"stats are for {(*stats.table.shape[:-1], stats.classes)} logits, got "
            f"{tuple(logits_s.shape)}"
        )
    out = _DGKDFunction.apply(
        logits_s,
        logits_t.detach() if stats is None else stats,  # type: ignore[union-attr]
        target,
        alpha,
        beta,
        grad_sign * epsilon,
        temperature,
        raw,
        ce_weight,
        cosine,
    )
    names = (
        ["loss", "tckd", "nckd", "grad_mse"]
        + ["grad_cos"] * cosine
        + ["ce"] * (ce_weight is not None)
    )
    return dict(zip(names, out, strict=True))
