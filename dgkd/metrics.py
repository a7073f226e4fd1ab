"""Evaluation metrics: accuracy, fidelity to the teacher, calibration, neural collapse.

All functions take full-split tensors (logits, labels, features) and return Python floats, so a
result row is plain data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["accuracy", "agreement", "ece", "kl_to_teacher", "nc1"]


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (logits.argmax(1) == labels).float().mean().item()


def agreement(logits_s: Tensor, logits_t: Tensor) -> float:
    """Share of examples where student and teacher predict the same class (top-1 fidelity)."""
    return (logits_s.argmax(1) == logits_t.argmax(1)).float().mean().item()


def kl_to_teacher(logits_s: Tensor, logits_t: Tensor) -> float:
    """Mean KL(teacher || student) of the untempered predictive distributions, in nats."""
    log_p = F.log_softmax(logits_s.double(), dim=1)
    log_q = F.log_softmax(logits_t.double(), dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean().item()


def ece(logits: Tensor, labels: Tensor, *, bins: int = 15) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins (Guo et al., 2017).

    ECE = sum_b (n_b / N) |accuracy_b - confidence_b|.
    """
    probs = torch.softmax(logits.double(), dim=1)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; confidence is always > 0.
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).double()
    gap = torch.bincount(idx, weights=correct - conf, minlength=bins).abs()
    return (gap.sum() / counts.sum()).item()


def nc1(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """Neural-collapse NC1 = Tr(Sigma_W pinv(Sigma_B)) / C (Papyan, Han & Donoho, 2020).

    Sigma_W is the within-class covariance of the features around their class means, averaged
    over samples; Sigma_B the covariance of the class means around the global mean, averaged over
    classes. Lower means more compact classes. Classes absent from ``labels`` are skipped.
    """
    h = features.double().flatten(1)
    present = torch.unique(labels)
    means = torch.stack([h[labels == c].mean(0) for c in present.tolist()])
    mu_g = h.mean(0)
    centered = h - means[torch.searchsorted(present, labels)]
    sigma_w = centered.T @ centered / h.shape[0]
    between = means - mu_g
    sigma_b = between.T @ between / len(present)
    return (torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / num_classes).item()
