"""Distillation losses as pure functions of logits and numbers.

Notation (docs/method.md): student logits ``z_s``, teacher logits ``z_t`` (B x C), target
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
a second time.

Every loss also takes a population's K x B x C logits (K students, each with its own batch) and
returns one value per student, each mean over that student's own B x C; the hyperparameters
may then be per-student (K,) tensors. A student's value and gradient do not depend on the
others: they are bitwise those it gets alone.

Numerics: log p_t and log(1 - p_t) come from log-sum-exp shifted by the non-target maximum, and
the target class is excluded by an additive -inf mask, so the terms stay finite for logits up to
1e4 in float32.

Modules: :mod:`~dgkd.losses.fused` (``dgkd_loss``), :mod:`~dgkd.losses.terms` (``dkd_terms``,
``grad_terms``), :mod:`~dgkd.losses.teacher` (``teacher_stats``), :mod:`~dgkd.losses.baselines`
(``kd_loss``, ``cross_entropy``).
"""

from dgkd.losses.baselines import cross_entropy, kd_loss
from dgkd.losses.fused import GradTerm, dgkd_loss
from dgkd.losses.teacher import TeacherStats, teacher_stats
from dgkd.losses.terms import dkd_terms, grad_terms

__all__ = [
    "GradTerm",
    "TeacherStats",
    "cross_entropy",
    "dgkd_loss",
    "dkd_terms",
    "grad_terms",
    "kd_loss",
    "teacher_stats",
]
