"""Tests for dgkd.metrics on small hand-made tensors with hand-computed answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
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


# --- pinned values: hand-worked cases that a wrong bin, count or axis changes -----------------


def _quiet(fn, *args, **kwargs):
    """Call a metric with warnings as errors: an implicit (deprecated) softmax axis or a
    degenerate reduction warns, and a metric must not rely on either."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_accuracy_and_agreement_away_from_one_half() -> None:
    # Predictions 0, 1, 2, 2 against labels 0, 1, 2, 0: three right. At 0.5 (the case above) a
    # flipped comparison would give the same number.
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 1, 4], [1, 0, 2]])
    labels = torch.tensor([0, 1, 2, 0])
    assert _quiet(accuracy, logits, labels) == 0.75
    teacher = torch.tensor([[5.0, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])  # predicts 0, 2, 2, 2
    assert _quiet(agreement, logits, teacher) == 0.75
    assert _quiet(agreement, teacher, logits) == 0.75
    assert _quiet(accuracy, logits, torch.tensor([1, 0, 0, 1])) == 0.0


def _conf(probs: list[float]) -> float:
    return torch.softmax(_logits_for([probs]), dim=1).max().item()


def test_ece_keeps_adjacent_top_bins_apart() -> None:
    # 15 bins: 0.9 lies in (13/15, 14/15], 0.95 in (14/15, 1]. Separate bins give
    # (|1 - 0.9| + |0 - 0.95|) / 2 = 0.525; merged into one they would give |0.5 - 0.925| = 0.425.
    probs = [[0.9, 0.05, 0.05], [0.03, 0.95, 0.02]]
    got = _quiet(ece, _logits_for(probs), torch.tensor([0, 0]))  # right, then wrong
    assert got == pytest.approx(0.525, abs=1e-12)


def test_ece_keeps_the_two_lowest_bins_apart() -> None:
    # Two bins: 0.4 in (0, 0.5], 0.8 in (0.5, 1]: (|1 - 0.4| + |0 - 0.8|) / 2 = 0.7 (merged: 0.1).
    logits = _logits_for([[0.4, 0.3, 0.3], [0.1, 0.8, 0.1]])
    assert _quiet(ece, logits, torch.tensor([0, 0]), bins=2) == pytest.approx(0.7, abs=1e-12)
    # 15 bins over 20 classes: 0.05 in (0, 1/15], 0.1 in (1/15, 2/15].
    low = [0.05] * 20
    second = [0.1] * 10 + [0.0] * 10
    logits = _logits_for([low, second])
    assert [_conf(low), _conf(second)] == [pytest.approx(0.05), pytest.approx(0.1)]
    # right at 0.05, wrong at 0.1: (0.95 + 0.1) / 2; merged it would be |0.5 - 0.075|.
    got = _quiet(ece, logits, torch.tensor([0, 15]))
    assert got == pytest.approx((0.95 + 0.1) / 2, abs=1e-12)


def test_ece_confidence_on_a_bin_edge_belongs_to_the_lower_bin() -> None:
    # Bins are (b/B, (b+1)/B]. Confidences exactly 0.4 = 6/15, 0.5 and 1.0 (exact in binary).
    edge = [0.4, 0.3, 0.3]
    assert _conf(edge) == 0.4 and _conf(edge) * 15 == 6.0
    above = [0.41, 0.3, 0.29]  # in (6/15, 7/15]
    logits = _logits_for([edge, above])
    # 0.4 right alone in (5/15, 6/15]; 0.41 wrong alone: (0.6 + 0.41) / 2. Put in the upper bin,
    # 0.4 would share it with 0.41: |0.5 - 0.405| = 0.095.
    assert _quiet(ece, logits, torch.tensor([0, 2])) == pytest.approx(0.505, abs=1e-12)
    # Two bins: 0.5 (two tied classes; argmax takes the first) is in (0, 0.5], 1.0 in (0.5, 1].
    half = torch.tensor([[0.0, 0.0, -math.inf], [0.0, -math.inf, -math.inf]], dtype=torch.float64)
    assert torch.softmax(half, 1).max(1).values.tolist() == [0.5, 1.0]
    # 0.5 wrong, 1.0 right: (0.5 + 0) / 2; merged into one bin: |0.5 - 0.75| = 0.25.
    assert _quiet(ece, half, torch.tensor([1, 0]), bins=2) == pytest.approx(0.25, abs=1e-12)
    assert _quiet(ece, half, torch.tensor([1, 0]), bins=1) == pytest.approx(0.25, abs=1e-12)


def _naive_nc1(h: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Papyan et al.'s NC1 written out sample by sample, with numpy's pseudo-inverse."""
    x = h.double().flatten(1).numpy()
    y = labels.numpy()
    classes = sorted(set(y.tolist()))
    mu_g = x.mean(0)
    mu = {c: x[y == c].mean(0) for c in classes}
    d = x.shape[1]
    sigma_w = np.zeros((d, d))
    for row, c in zip(x, y, strict=True):
        v = row - mu[c]
        sigma_w += np.outer(v, v)
    sigma_w /= len(x)
    sigma_b = np.zeros((d, d))
    for c in classes:
        v = mu[c] - mu_g
        sigma_b += np.outer(v, v)
    sigma_b /= len(classes)
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / num_classes)


def test_nc1_absolute_value_by_hand() -> None:
    # One feature. Class 0: {0, 2} (mean 1), class 1: {4, 6} (mean 5), global mean 3.
    # Sigma_W = (1 + 1 + 1 + 1) / 4 = 1; Sigma_B = ((1 - 3)^2 + (5 - 3)^2) / 2 = 4;
    # NC1 = Sigma_W / Sigma_B / C = 1 / 4 / 2. Labels interleaved to check the class lookup.
    feats = torch.tensor([[4.0], [0.0], [6.0], [2.0]])
    labels = torch.tensor([1, 0, 1, 0])
    assert _quiet(nc1, feats, labels, 2) == pytest.approx(0.125, rel=1e-12)
    # C counts every class of the task; Sigma_B averages over the classes present.
    assert _quiet(nc1, feats, labels, 3) == pytest.approx(1 / 12, rel=1e-12)


def test_nc1_matches_the_naive_formula() -> None:
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 1, 2, 3, 4] * 7 + [0, 2])  # unequal class sizes
    feats = torch.randn(len(labels), 3, 2, generator=g) + 2.0  # image-shaped, not centred
    feats += torch.randn(5, 3, 2, generator=g)[labels] * 3
    want = _naive_nc1(feats, labels, 6)
    assert _quiet(nc1, feats, labels, 6) == pytest.approx(want, rel=1e-9)
    # More features than classes: Sigma_B is singular and its pseudo-inverse is what counts.
    wide = torch.randn(len(labels), 8, generator=g) + torch.randn(5, 8, generator=g)[labels]
    assert _quiet(nc1, wide, labels, 5) == pytest.approx(_naive_nc1(wide, labels, 5), rel=1e-9)


def _loop_nc1(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """The class-by-class float64 loop :func:`nc1` replaced, kept as its reference."""
    h = features.double().flatten(1)
    present = torch.unique(labels)
    means = torch.stack([h[labels == c].mean(0) for c in present.tolist()])
    mu_g = h.mean(0)
    centered = h - means[torch.searchsorted(present, labels)]
    sigma_w = centered.T @ centered / h.shape[0]
    between = means - mu_g
    sigma_b = between.T @ between / len(present)
    return (torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / num_classes).item()


def _clustered(
    n: int, width: int, classes: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 features around random class means, ReLU'd like a network's penultimate layer."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    means = torch.randn(classes, width, generator=g) * 3
    return (means[labels] + spread * torch.randn(n, width, generator=g)).relu(), labels


@pytest.mark.parametrize(
    ("n", "width", "classes", "spread"),
    [
        (3200, 120, 10, 1.0),  # the default student's training split
        (3200, 120, 10, 1e-3),  # nearly collapsed: the projections cancel
        (500, 7, 12, 0.5),  # fewer features than classes
        (300, 40, 3, 2.0),
        (60, 200, 10, 1.0),  # more features than examples
    ],
)
def test_nc1_matches_the_class_by_class_loop(
    n: int, width: int, classes: int, spread: float
) -> None:
    for seed in range(3):
        feats, labels = _clustered(n, width, classes, spread, seed)
        want = _loop_nc1(feats, labels, classes)
        assert _quiet(nc1, feats, labels, classes) == pytest.approx(want, rel=1e-9)
        wide = feats.double()  # float64 features too
        assert _quiet(nc1, wide, labels, classes) == pytest.approx(want, rel=1e-9)


def test_nc1_matches_the_loop_on_degenerate_cases() -> None:
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(40, 5, generator=g)
    cases = {
        "one example per class": (feats[:6], torch.tensor([4, 0, 5, 1, 3, 2]), 6),
        "features of width 1": (feats[:, :1], torch.arange(40) % 4, 4),
        "absent classes skipped": (feats, torch.tensor([0, 3, 8]).repeat(14)[:40], 10),
        "one class present": (feats, torch.full((40,), 2), 10),
        "class means all equal": (torch.ones(40, 5), torch.arange(40) % 4, 4),
        "collapsed onto the means": (feats[:4][torch.arange(40) % 4], torch.arange(40) % 4, 4),
        "image-shaped": (feats.view(40, 1, 5), torch.arange(40) % 3, 3),
    }
    for name, (x, y, classes) in cases.items():
        want = _loop_nc1(x, y, classes)
        got = _quiet(nc1, x, y, classes)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), name
    # The degenerate values themselves: no scatter within the classes is zero NC1.
    assert nc1(feats[:6], torch.arange(6), 6) == 0.0
    assert nc1(feats[:4][torch.arange(40) % 4], torch.arange(40) % 4, 4) == 0.0


def test_nc1_by_one_hot_class_sums_matches_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from dgkd import metrics

    monkeypatch.setattr(metrics, "_adds_in_order", lambda device: False)  # as on CUDA
    feats, labels = _clustered(3200, 120, 10, 1.0, 0)
    assert nc1(feats, labels, 10) == pytest.approx(_loop_nc1(feats, labels, 10), rel=1e-9)
    y = torch.tensor([0, 3, 8]).repeat(10)  # absent classes
    want = _loop_nc1(feats[:30], y, 10)
    assert nc1(feats[:30], y, 10) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nc1_is_nan_for_features_that_are_not_finite(bad: float) -> None:
    feats, labels = _clustered(50, 6, 3, 1.0, 0)
    feats[7, 2] = bad
    assert math.isnan(nc1(feats, labels, 3))
    feats[7, 2], feats[8, 2] = math.inf, -math.inf  # cancelling infinities in one column
    labels[8] = labels[7]
    assert math.isnan(nc1(feats, labels, 3))


def test_kl_to_teacher_by_hand() -> None:
    # Teacher (1/2, 1/4, 1/4), student uniform: KL = 1/2 ln(3/2) + 2 (1/4) ln(3/4) = ln(9/8) / 2.
    teacher = _logits_for([[0.5, 0.25, 0.25]])
    student = torch.zeros(1, 3, dtype=torch.float64)
    assert _quiet(kl_to_teacher, student, teacher) == pytest.approx(math.log(9 / 8) / 2, rel=1e-12)
    # The other direction: 3 (1/3) ln((1/3) / q) = ln(1/3) - (ln(1/2) + 2 ln(1/4)) / 3.
    reverse = math.log(1 / 3) - (math.log(0.5) + 2 * math.log(0.25)) / 3
    assert _quiet(kl_to_teacher, teacher, student) == pytest.approx(reverse, rel=1e-12)
    # The mean over rows: a second, identical pair halves it; a row softmax, not a column one.
    both = _quiet(
        kl_to_teacher,
        torch.cat([student, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)]),
        torch.cat([teacher, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)]),
    )
    assert both == pytest.approx(math.log(9 / 8) / 4, rel=1e-12)
