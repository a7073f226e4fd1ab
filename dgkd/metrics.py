"""Evaluation metrics: accuracy, fidelity to the teacher, calibration, neural collapse.

All functions take full-split tensors (logits, labels, features) and return Python floats, so a
result row is plain data.
"""

from __future__ import annotations

import math

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
    classes. Lower means more compact classes. Classes absent from ``labels`` are skipped; NaN
    when a feature is not finite (a diverged model).

    Evaluated every epoch, so with no loop over classes: Sigma_B = V diag(lam) V^T from the SVD
    of the (classes x features) centered means, and Tr(Sigma_W pinv(Sigma_B)) = sum_j (1/lam_j)
    mean_i (v_j . (h_i - mu_{y_i}))^2 over the lam_j above pinv's cut-off, with no features x
    features product. Float64 throughout: the projections subtract nearly equal numbers as the
    classes collapse, and in float32 they were off by ~1e-8 relative already at a spread of a
    third of the class means' (converting the features costs ~5% of the call).
    """
    h = features.flatten(1).double()
    n, width = h.shape
    counts = torch.bincount(labels, minlength=num_classes)
    sums = _class_sums(h, labels, len(counts))
    if not bool(torch.isfinite(sums).all()):  # a non-finite feature makes its sum one
        return math.nan
    means = sums / counts.clamp(min=1).unsqueeze(1)
    between = means[counts > 0] - sums.sum(0) / n
    _, singular, vh = torch.linalg.svd(between, full_matrices=False)
    lam = singular.square() / len(between)  # Sigma_B's eigenvalues (any others are 0)
    keep = lam > lam.max() * (torch.finfo(lam.dtype).eps * width)  # pinv's default rtol
    basis = vh[keep].T
    proj = h @ basis - (means @ basis)[labels]  # (h_i - mu_{y_i}) . v_j
    return ((proj.square().sum(0) / lam[keep]).sum() / (n * num_classes)).item()


def _class_sums(h: Tensor, labels: Tensor, classes: int) -> Tensor:
    """Per-class sums of the rows of ``h``, the same bits on every run: by ``index_add_`` where
    it adds in order, else by a one-hot product."""
    if _adds_in_order(h.device):
        return h.new_zeros(classes, h.shape[1]).index_add_(0, labels, h)
    return F.one_hot(labels, classes).to(h.dtype).T @ h


def _adds_in_order(device: torch.device) -> bool:
    """Whether ``index_add_`` sums in a fixed order on ``device``: on the CPU; CUDA's uses
    atomics, whose order (and so the last bits) changes from run to run."""
    return device.type == "cpu"
