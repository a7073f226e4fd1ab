"""``kd_ls``: Hinton's KD on standardized logits (logit standardization, Sun et al., CVPR 2024).

Each side's logits are z-scored per sample, ``(z - mean(z)) / std(z)`` over the classes, before
the temperature softmax: the student then matches the teacher's logit *relations* rather than
their magnitudes, which a smaller student may not reach. Written as any method of your own would
be (docs/methods.md): one function and a :class:`~dgkd.methods.Method`; it runs member by
member in a population.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dgkd.methods import Method

__all__ = ["KD_LS", "kd_ls_loss", "standardize"]

# Added to the standard deviation, as in the authors' code: keeps constant logits finite.
_STD_EPS = 1e-7


def standardize(logits: Tensor) -> Tensor:
    """Each row's z-score over the classes (Bessel-corrected standard deviation)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + _STD_EPS)


def kd_ls_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor,
    settings: Mapping[str, Any],
) -> Tensor:
    """``kd_weight * T^2 * mean_i KL(q || p)``, q and p the tempered softmaxes of the teacher's
    and the student's standardized logits."""
    assert teacher_logits is not None, "kd_ls needs the teacher's logits"
    t = settings["temperature"]
    log_p = F.log_softmax(standardize(student_logits.float()) / t, dim=-1)
    with torch.no_grad():
        log_q = F.log_softmax(standardize(teacher_logits.float()) / t, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    return settings["kd_weight"] * t * t * kl


KD_LS = Method("kd_ls", kd_ls_loss, ("temperature", "kd_weight"))
