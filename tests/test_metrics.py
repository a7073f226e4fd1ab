"""Tests for dgkd.metrics on small hand-made tensors with hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from dgkd.metrics import accuracy, agreement, ece, kl_to_teacher, nc1


def test_accuracy_and_agreement() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])  # predictions 0, 1, 2, 0: two right
    teacher = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 4.0, 0.0]])
    assert accuracy(logits, labels) == 0.5
    assert agreement(logits, teacher) == 0.5  # teacher predicts 0, 2, 2, 1
    assert agreement(logits, logits) == 1.0
    assert isinstance(accuracy(logits, labels), float)


def _logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs``."""
    return torch.tensor(probs, dtype=torch.float64).log()


def test_ece_against_hand_computed_value() -> None:
    # Confidences 0.9 (right), 0.62 (wrong), 0.85 (right), 0.64 (right); with 15 bins, 0.62 and
    # 0.64 share bin (0.6, 0.667]: accuracy 0.5, confidence 0.63. The other two are alone.
    probs = [[0.9, 0.05, 0.05], [0.62, 0.3, 0.08], [0.1, 0.85, 0.05], [0.2, 0.16, 0.64]]
    labels = torch.tensor([0, 1, 1, 2])
    logits = _logits_for(probs)
    want = 0.25 * abs(1 - 0.9) + 0.25 * abs(1 - 0.85) + 0.5 * abs(0.5 - 0.63)  # = 0.1275
    assert ece(logits, labels) == pytest.approx(want, abs=1e-12)
    # One bin: |overall accuracy - mean confidence| = |0.75 - 0.7525|.
    assert ece(logits, labels, bins=1) == pytest.approx(0.0025, abs=1e-12)


def test_ece_zero_when_calibrated_and_one_when_certainly_wrong() -> None:
    logits = _logits_for([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]])
    assert ece(logits, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)
    confident = torch.tensor([[100.0, 0.0, 0.0], [0.0, 100.0, 0.0]])
    assert ece(confident, torch.tensor([1, 0])) == pytest.approx(1.0)


def _features(spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(4, 6, generator=g) * 3
    labels = torch.arange(40) % 4
    noise = torch.randn(40, 6, generator=g)
    noise -= torch.stack([noise[labels == c].mean(0) for c in range(4)])[labels]
    return means[labels] + spread * noise, labels


def test_nc1_zero_when_collapsed_and_grows_with_spread() -> None:
    collapsed, labels = _features(0.0)
    assert nc1(collapsed, labels, 4) == pytest.approx(0.0, abs=1e-12)
    small = nc1(*_features(0.1), 4)
    large = nc1(*_features(1.0), 4)
    assert 0 < small < large
    # Within-class scatter enters quadratically: 10x the spread gives 100x NC1.
    assert large == pytest.approx(100 * small, rel=1e-5)


def test_nc1_accepts_image_shaped_features() -> None:
    feats, labels = _features(0.5)
    assert nc1(feats.view(40, 2, 3), labels, 4) == pytest.approx(nc1(feats, labels, 4))


def test_kl_to_teacher() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g)
    assert kl_to_teacher(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert kl_to_teacher(logits + 3.0, logits) == pytest.approx(0.0, abs=1e-12)  # shift-free
    teacher = torch.randn(8, 5, generator=g)
    p = torch.softmax(logits.double(), 1)
    q = torch.softmax(teacher.double(), 1)
    want = (q * (q / p).log()).sum(1).mean().item()  # KL(teacher || student)
    assert kl_to_teacher(logits, teacher) == pytest.approx(want, rel=1e-12)
    assert not math.isclose(kl_to_teacher(teacher, logits), want, rel_tol=1e-3)
