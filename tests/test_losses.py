"""Tests for dgkd.losses against independent, naive implementations of docs/method.md's
formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dgkd.losses import dgkd_loss, dkd_terms, grad_terms, kd_loss

SHAPES = [(64, 100), (128, 10), (7, 3)]
TEMPERATURES = [1.0, 4.0, 0.5]


def _batch(shape: tuple[int, int], seed: int = 0, scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    b, c = shape
    zs = (torch.randn(b, c, generator=g) * scale).to(dtype)
    zt = (torch.randn(b, c, generator=g) * scale).to(dtype)
    target = torch.randint(0, c, (b,), generator=g)
    return zs, zt, target


def _naive_dkd(zs, zt, target, temperature):
    """TCKD and NCKD written out with explicit probabilities, one row at a time."""
    p = torch.softmax(zs / temperature, dim=1)
    q = torch.softmax(zt / temperature, dim=1)
    tckd, nckd = [], []
    for i, t in enumerate(target.tolist()):
        pt, qt = p[i, t], q[i, t]
        tckd.append(qt * torch.log(qt / pt) + (1 - qt) * torch.log((1 - qt) / (1 - pt)))
        others = [j for j in range(p.shape[1]) if j != t]
        p_hat = p[i, others] / (1 - pt)
        q_hat = q[i, others] / (1 - qt)
        nckd.append((q_hat * torch.log(q_hat / p_hat)).sum())
    t2 = temperature**2
    return t2 * torch.stack(tckd).mean(), t2 * torch.stack(nckd).mean()


def _autograd_dgkd(zs, zt, target, *, alpha, beta, epsilon, temperature, grad_term, grad_sign):
    """The loss as the seed writes it, differentiated twice by autograd (no closed forms)."""
    zs = zs.detach().requires_grad_(True)
    tckd, nckd = _naive_dkd(zs, zt, target, temperature)
    g_t = torch.autograd.grad(tckd, zs, create_graph=True)[0]
    g_n = torch.autograd.grad(nckd, zs, create_graph=True)[0]
    m = ((g_t - g_n) ** 2).mean()
    g = m / (m.detach() + 1e-8) if grad_term == "normalized" else m
    loss = alpha * tckd + beta * nckd + grad_sign * epsilon * g
    (grad,) = torch.autograd.grad(loss, zs)
    cos = F.cosine_similarity(g_t, g_n, dim=1).mean()
    return loss.detach(), grad, m.detach(), cos.detach()


# --- dkd_terms and grad_terms ------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_dkd_terms_match_naive_formulas(shape, temperature) -> None:
    zs, zt, target = _batch(shape, seed=1)
    tckd, nckd = dkd_terms(zs, zt, target, temperature=temperature)
    want_t, want_n = _naive_dkd(zs, zt, target, temperature)
    torch.testing.assert_close(tckd, want_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(nckd, want_n, rtol=1e-10, atol=1e-12)
    assert tckd > 0 and nckd > 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_grad_terms_equal_autograd_of_dkd_terms(shape, temperature) -> None:
    zs, zt, target = _batch(shape, seed=2)
    zs.requires_grad_(True)
    tckd, nckd = dkd_terms(zs, zt, target, temperature=temperature)
    want_t = torch.autograd.grad(tckd, zs, retain_graph=True)[0]
    want_n = torch.autograd.grad(nckd, zs)[0]
    g_t, g_n = grad_terms(zs, zt, target, temperature=temperature)
    assert g_t.shape == g_n.shape == shape and g_t.dtype == torch.float64
    torch.testing.assert_close(g_t, want_t, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(g_n, want_n, rtol=1e-9, atol=1e-14)
    # g_N has no component on the target class.
    assert torch.all(g_n.gather(1, target.unsqueeze(1)) == 0)


# --- dgkd_loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 100), (128, 10), (5, 3)])
@pytest.mark.parametrize("grad_term", ["normalized", "raw"])
@pytest.mark.parametrize("grad_sign", [-1.0, 1.0])
def test_dgkd_loss_value_and_gradient_match_autograd(shape, grad_term, grad_sign) -> None:
    zs, zt, target = _batch(shape, seed=3)
    # Raw M is ~1e-5: a large epsilon makes its gradient comparable to the DKD part.
    hyper = {"alpha": 1.5, "beta": 8.0, "temperature": 4.0}
    epsilon = 6.0 if grad_term == "normalized" else 3e4
    want_loss, want_grad, want_m, want_cos = _autograd_dgkd(
        zs, zt, target, epsilon=epsilon, grad_term=grad_term, grad_sign=grad_sign, **hyper
    )
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(
        x, zt, target, epsilon=epsilon, grad_term=grad_term, grad_sign=grad_sign, **hyper
    )
    assert {"loss", "tckd", "nckd", "grad_mse", "grad_cos"} <= out.keys()
    out["loss"].backward()
    torch.testing.assert_close(out["loss"], want_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(out["grad_mse"], want_m, rtol=1e-9, atol=0.0)
    torch.testing.assert_close(out["grad_cos"], want_cos, rtol=1e-9, atol=1e-12)
    # The gradient term changes the gradient, and the sign decides in which direction.
    dkd_grad = 1.5 * grad_terms(zs, zt, target, temperature=4.0)[0]
    dkd_grad += 8.0 * grad_terms(zs, zt, target, temperature=4.0)[1]
    assert not torch.allclose(x.grad, dkd_grad, rtol=1e-3, atol=0)


def test_dgkd_loss_float32_matches_float64() -> None:
    zs, zt, target = _batch((64, 100), seed=4)
    grads = []
    for dtype in (torch.float32, torch.float64):
        x = zs.to(dtype).requires_grad_(True)
        out = dgkd_loss(x, zt.to(dtype), target, alpha=1.0, beta=8.0, epsilon=6.0, temperature=4)
        out["loss"].backward()
        assert x.grad.dtype == dtype
        grads.append(x.grad.double())
    # Whole-field relative error: single entries of dM/M lose digits to cancellation.
    assert (grads[0] - grads[1]).norm() < 1e-4 * grads[1].norm()


@pytest.mark.parametrize("grad_term", ["normalized", "raw"])
def test_epsilon_zero_is_exactly_dkd(grad_term) -> None:
    zs, zt, target = _batch((128, 10), seed=5, dtype=torch.float32)
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(
        x, zt, target, alpha=1.0, beta=8.0, epsilon=0.0, temperature=4.0, grad_term=grad_term
    )
    out["loss"].backward()
    tckd, nckd = dkd_terms(zs, zt, target, temperature=4.0)
    g_t, g_n = grad_terms(zs, zt, target, temperature=4.0)
    # The same values up to float32 rounding (dgkd_loss computes both sides' softmax in one
    # pass and factors T/B out of both gradient fields).
    torch.testing.assert_close(out["loss"], 1.0 * tckd + 8.0 * nckd, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, 1.0 * g_t + 8.0 * g_n, rtol=1e-6, atol=1e-9)
    # ... and that is autograd's DKD gradient.
    y = zs.clone().requires_grad_(True)
    a, b = dkd_terms(y, zt, target, temperature=4.0)
    (a + 8.0 * b).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-8)


def test_normalized_term_has_value_one() -> None:
    zs, zt, target = _batch((32, 10), seed=6)
    base = dgkd_loss(zs, zt, target, alpha=1.0, beta=2.0, epsilon=0.0, temperature=2.0)
    for sign in (-1.0, 1.0):
        out = dgkd_loss(
            zs, zt, target, alpha=1.0, beta=2.0, epsilon=3.0, temperature=2.0, grad_sign=sign
        )
        m = out["grad_mse"]
        torch.testing.assert_close(out["loss"] - base["loss"], sign * 3.0 * m / (m + 1e-8))


def test_grad_cos_is_mean_row_cosine() -> None:
    zs, zt, target = _batch((50, 10), seed=7)
    g_t, g_n = grad_terms(zs, zt, target, temperature=3.0)
    want = torch.stack(
        [torch.dot(a, b) / (a.norm() * b.norm()) for a, b in zip(g_t, g_n, strict=True)]
    ).mean()
    out = dgkd_loss(zs, zt, target, alpha=1.0, beta=8.0, epsilon=1.0, temperature=3.0)
    torch.testing.assert_close(out["grad_cos"], want, rtol=1e-10, atol=1e-12)
    assert -1.0 <= out["grad_cos"].item() <= 1.0


def test_tensor_hyperparameters_match_numbers() -> None:
    zs, zt, target = _batch((16, 10), seed=8)
    grads = []
    for conv in (float, lambda v: torch.tensor(v, dtype=torch.float64)):
        x = zs.clone().requires_grad_(True)
        hyper = {k: conv(v) for k, v in {"alpha": 1.0, "beta": 8.0, "epsilon": 6.0}.items()}
        out = dgkd_loss(x, zt, target, temperature=conv(4.0), **hyper)
        out["loss"].backward()
        grads.append((out["loss"].detach(), x.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=0.0)


# --- numerical stability -----------------------------------------------------------------------


def _extreme_cases():
    g = torch.Generator().manual_seed(9)
    b, c = 32, 10
    target = torch.randint(0, c, (b,), generator=g)
    onehot = F.one_hot(target, c).float()
    wrong = F.one_hot((target + 1) % c, c).float()
    random = torch.randn(b, c, generator=g) * 1e4
    return {
        "random_1e4": (random, torch.randn(b, c, generator=g) * 1e4, target),
        "confident_right": (onehot * 1e4, onehot * 1e4 - wrong * 1e4, target),
        "confident_wrong": (wrong * 1e4, onehot * 1e4, target),
        "identical": (random, random.clone(), target),
        "zeros": (torch.zeros(b, c), torch.zeros(b, c), target),
    }


@pytest.mark.parametrize("case", list(_extreme_cases()))
@pytest.mark.parametrize("grad_term", ["normalized", "raw"])
@pytest.mark.parametrize("grad_sign", [-1.0, 1.0])
def test_large_float32_logits_stay_finite(case, grad_term, grad_sign) -> None:
    zs, zt, target = _extreme_cases()[case]
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(
        x,
        zt,
        target,
        alpha=1.0,
        beta=8.0,
        epsilon=6.0,
        temperature=4.0,
        grad_term=grad_term,
        grad_sign=grad_sign,
    )
    out["loss"].backward()
    for key, value in out.items():
        assert torch.isfinite(value), key
    assert torch.isfinite(x.grad).all()
    g_t, g_n = grad_terms(zs, zt, target, temperature=4.0)
    assert torch.isfinite(g_t).all() and torch.isfinite(g_n).all()
    if case == "identical":
        assert out["tckd"].abs() < 1e-4 and out["nckd"].abs() < 1e-4
    if case == "confident_wrong":
        # log(1 - p_t) of a near-certain wrong student is ~ -1e4 / T, not -inf.
        assert out["tckd"] > 1e3


def test_kd_loss_stays_finite_for_large_logits() -> None:
    zs, zt, _ = _extreme_cases()["confident_wrong"]
    x = zs.clone().requires_grad_(True)
    loss = kd_loss(x, zt, temperature=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [1, 2])
def test_fewer_than_three_classes_rejected(classes) -> None:
    zs, zt, target = _batch((4, classes), seed=10)
    for fn in (dkd_terms, grad_terms):
        with pytest.raises(ValueError, match="at least 3 classes"):
            fn(zs, zt, target, temperature=4.0)
    with pytest.raises(ValueError, match="at least 3 classes"):
        dgkd_loss(zs, zt, target, alpha=1.0, beta=8.0, epsilon=1.0, temperature=4.0)


def test_bad_arguments_rejected() -> None:
    zs, zt, target = _batch((4, 5), seed=11)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 1.0, "temperature": 4.0}
    with pytest.raises(ValueError, match="grad_term"):
        dgkd_loss(zs, zt, target, grad_term="log", **kw)
    with pytest.raises(ValueError, match="grad_sign"):
        dgkd_loss(zs, zt, target, grad_sign=0.5, **kw)
    with pytest.raises(ValueError, match="temperature"):
        dgkd_loss(zs, zt, target, **{**kw, "temperature": 0.0})
    with pytest.raises(ValueError, match="B x C"):
        dgkd_loss(zs, zt[:, :4], target, **kw)
    with pytest.raises(ValueError, match="target"):
        dgkd_loss(zs, zt, target[:3], **kw)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(zs, zt, temperature=-1.0)


# --- KD ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_is_t2_kl_teacher_to_student(temperature) -> None:
    zs, zt, _ = _batch((20, 10), seed=12)
    p = torch.softmax(zs / temperature, dim=1)
    q = torch.softmax(zt / temperature, dim=1)
    want = temperature**2 * (q * torch.log(q / p)).sum(1).mean()
    got = kd_loss(zs, zt, temperature=temperature)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    assert kd_loss(zt, zt, temperature=temperature).abs() < 1e-6


def test_precomputed_teacher_stats_give_the_same_loss_and_gradient() -> None:
    from dgkd.losses import teacher_stats

    gen = torch.Generator().manual_seed(3)
    zs = torch.randn(32, 10, generator=gen, dtype=torch.float64)
    zt = torch.randn(32, 10, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (32,), generator=gen)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 6.0, "temperature": 2.0}
    a = zs.clone().requires_grad_(True)
    ref = dgkd_loss(a, zt, y, **kw)
    ref["loss"].backward()
    # Stats over a larger "training set", then the batch's rows selected by index.
    full_t = torch.cat([torch.randn(5, 10, dtype=torch.float64), zt])
    full_y = torch.cat([torch.zeros(5, dtype=torch.long), y])
    stats = teacher_stats(full_t, full_y, temperature=2.0).select(torch.arange(5, 37))
    b = zs.clone().requires_grad_(True)
    out = dgkd_loss(b, None, y, stats=stats, **kw)
    out["loss"].backward()
    for key in ("loss", "tckd", "nckd", "grad_mse", "grad_cos"):
        torch.testing.assert_close(out[key], ref[key])
    torch.testing.assert_close(b.grad, a.grad)
    with pytest.raises(ValueError, match="stats are for"):
        dgkd_loss(zs[:4], None, y[:4], stats=stats, **kw)


@pytest.mark.parametrize("ce_weight", [1.0, 0.5, 0.0])
def test_fused_cross_entropy_equals_separate_terms(ce_weight) -> None:
    """ce_weight adds CE(z_s, y) in the same node: value and gradient as if added outside."""
    zs, zt, target = _batch((32, 10), seed=13)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 6.0, "temperature": 4.0}
    a = zs.clone().requires_grad_(True)
    fused = dgkd_loss(a, zt, target, ce_weight=ce_weight, **kw)
    fused["loss"].backward()
    b = zs.clone().requires_grad_(True)
    ce = F.cross_entropy(b, target)
    separate = dgkd_loss(b, zt, target, **kw)
    (ce_weight * ce + separate["loss"]).backward()
    torch.testing.assert_close(fused["loss"], ce_weight * ce + separate["loss"])
    torch.testing.assert_close(fused["ce"], ce.detach())
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert "ce" not in separate
    # A tensor weight (a population's) gives the same.
    c = zs.clone().requires_grad_(True)
    out = dgkd_loss(c, zt, target, ce_weight=torch.tensor(ce_weight, dtype=zs.dtype), **kw)
    out["loss"].backward()
    torch.testing.assert_close(c.grad, a.grad, rtol=1e-12, atol=0.0)


def test_fused_cross_entropy_stays_finite_for_confident_students() -> None:
    zs, zt, target = _extreme_cases()["confident_wrong"]
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(x, zt, target, alpha=1.0, beta=8.0, epsilon=6.0, temperature=4.0, ce_weight=1.0)
    out["loss"].backward()
    assert torch.isfinite(out["ce"]) and out["ce"] > 1e3  # ~1e4: the wrong class wins by 1e4
    assert torch.isfinite(x.grad).all()


def test_without_the_cosine_the_loss_and_gradient_are_unchanged() -> None:
    zs, zt, target = _batch((16, 10), seed=14)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 6.0, "temperature": 4.0, "ce_weight": 1.0}
    grads, outs = [], []
    for cosine in (True, False):
        x = zs.clone().requires_grad_(True)
        out = dgkd_loss(x, zt, target, cosine=cosine, **kw)
        out["loss"].backward()
        grads.append(x.grad)
        outs.append(out)
    assert "grad_cos" in outs[0] and "grad_cos" not in outs[1]
    assert sorted(outs[1]) == ["ce", "grad_mse", "loss", "nckd", "tckd"]
    for key in outs[1]:
        torch.testing.assert_close(outs[1][key], outs[0][key], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


# --- every reported term against the naive formulas --------------------------------------------


def _naive_m_and_cos(zs, zt, target, temperature):
    """M = mean (g_T - g_N)^2 and the mean row cosine, from autograd of the naive terms."""
    x = zs.detach().clone().requires_grad_(True)
    tckd, nckd = _naive_dkd(x, zt, target, temperature)
    g_t = torch.autograd.grad(tckd, x, retain_graph=True)[0]
    g_n = torch.autograd.grad(nckd, x)[0]
    cos = F.cosine_similarity(g_t, g_n, dim=1).mean()
    return ((g_t - g_n) ** 2).mean(), cos


@pytest.mark.parametrize("shape", [(9, 3), (16, 10)])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("precomputed", [False, True])
@pytest.mark.parametrize("grad_term", ["normalized", "raw"])
def test_dgkd_loss_reports_every_term_by_the_naive_formulas(
    shape, temperature, precomputed, grad_term
) -> None:
    """tckd, nckd, grad_mse, grad_cos and ce each against a formula computed on its own, with
    the teacher as logits and as precomputed stats, and each hyperparameter distinct so that a
    swapped weight shows."""
    from dgkd.losses import teacher_stats

    zs, zt, target = _batch(shape, seed=20)
    want_t, want_n = _naive_dkd(zs, zt, target, temperature)
    want_m, want_cos = _naive_m_and_cos(zs, zt, target, temperature)
    want_ce = F.cross_entropy(zs, target)
    kw = {"alpha": 1.5, "beta": 7.0, "epsilon": 0.25, "temperature": temperature}
    teacher = {"stats": teacher_stats(zt, target, temperature=temperature)} if precomputed else {}
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(
        x, None if precomputed else zt, target, grad_term=grad_term, ce_weight=0.75, **kw, **teacher
    )
    torch.testing.assert_close(out["tckd"], want_t, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out["nckd"], want_n, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(out["grad_mse"], want_m, rtol=1e-9, atol=0.0)
    torch.testing.assert_close(out["grad_cos"], want_cos, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out["ce"], want_ce, rtol=1e-12, atol=0.0)
    g = want_m if grad_term == "raw" else want_m / (want_m + 1e-8)
    want = 0.75 * want_ce + 1.5 * want_t + 7.0 * want_n - 0.25 * g
    torch.testing.assert_close(out["loss"], want, rtol=1e-10, atol=1e-13)
    for key in ("tckd", "nckd", "grad_mse", "grad_cos", "ce"):
        assert not out[key].requires_grad, key


def test_dkd_terms_by_hand_on_one_row() -> None:
    # One row, three classes, T = 1, target 0. Teacher q = (1/2, 1/4, 1/4), student p uniform.
    # TCKD = KL([1/2, 1/2] || [1/3, 2/3]) = 1/2 ln(3/2) + 1/2 ln(3/4) = ln(9/8) / 2;
    # NCKD = KL((1/2, 1/2) || (1/2, 1/2)) = 0.
    zt = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64).log()
    zs = torch.zeros(1, 3, dtype=torch.float64)
    target = torch.tensor([0])
    tckd, nckd = dkd_terms(zs, zt, target, temperature=1.0)
    assert tckd.item() == pytest.approx(math.log(9 / 8) / 2, rel=1e-12)
    assert nckd.item() == pytest.approx(0.0, abs=1e-15)
    # Target 1 instead: q_t = 1/4, p_t = 1/3; q_hat = (2/3, 1/3), p_hat = (1/2, 1/2).
    t1, n1 = dkd_terms(zs, zt, torch.tensor([1]), temperature=1.0)
    want_t1 = 0.25 * math.log(0.75) + 0.75 * math.log(0.75 / (2 / 3))
    want_n1 = (2 / 3) * math.log(4 / 3) + (1 / 3) * math.log(2 / 3)
    assert t1.item() == pytest.approx(want_t1, rel=1e-12)
    assert n1.item() == pytest.approx(want_n1, rel=1e-12)
    # T = 2 scales the logits by 1/2 and the terms by 4.
    out = dgkd_loss(zs, zt * 2, torch.tensor([1]), alpha=1.0, beta=1.0, epsilon=0.0, temperature=2)
    assert out["tckd"].item() == pytest.approx(4 * want_t1, rel=1e-12)
    assert out["nckd"].item() == pytest.approx(4 * want_n1, rel=1e-12)


# --- populations: every student gets exactly what it gets alone --------------------------------

K_SIZES = [(3, 16, 10), (4, 64, 100)]  # the second exceeds the small-field path (K B C > 16384)
STUDENT_HYPER = {
    "alpha": (1.0, 1.5, 0.5, 2.0),
    "beta": (8.0, 2.0, 4.0, 1.0),
    "epsilon": (6.0, 0.0, 2.0, 3e4),
    "temperature": (4.0, 1.0, 2.0, 0.5),
    "ce_weight": (1.0, 0.5, 0.0, 2.0),
    "grad_sign": (-1.0, 1.0, -1.0, 1.0),
}
GRAD_TERMS = ("normalized", "raw", "normalized", "raw")


def _population(shape: tuple[int, int, int], seed: int = 30):
    g = torch.Generator().manual_seed(seed)
    k, b, c = shape
    zs = torch.randn(k, b, c, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(k, b, c, generator=g, dtype=torch.float64) * 3
    return zs, zt, torch.randint(0, c, (k, b), generator=g)


def _close(a, b) -> None:
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", K_SIZES)
def test_population_dkd_and_grad_terms_are_per_student(shape) -> None:
    zs, zt, y = _population(shape)
    tckd, nckd = dkd_terms(zs, zt, y, temperature=2.0)
    g_t, g_n = grad_terms(zs, zt, y, temperature=2.0)
    assert tckd.shape == nckd.shape == (shape[0],) and g_t.shape == g_n.shape == shape
    for k in range(shape[0]):
        want_t, want_n = _naive_dkd(zs[k], zt[k], y[k], 2.0)
        _close(tckd[k], want_t)
        _close(nckd[k], want_n)
        alone_t, alone_n = grad_terms(zs[k], zt[k], y[k], temperature=2.0)
        _close(g_t[k], alone_t)
        _close(g_n[k], alone_n)


@pytest.mark.parametrize("shape", K_SIZES)
@pytest.mark.parametrize("precomputed", [False, True])
def test_population_dgkd_loss_is_per_student(shape, precomputed) -> None:
    """Per-student numbers (float64 (K,) tensors), one grad_term and sign each, teacher as
    logits or as precomputed stats; each student's terms and gradient as alone, with a
    different upstream weight per student to show whose gradient is whose."""
    from dgkd.losses import TeacherStats, teacher_stats

    k = shape[0]
    zs, zt, y = _population(shape, seed=31)
    hyper = {n: torch.tensor(v[:k], dtype=torch.float64) for n, v in STUDENT_HYPER.items()}
    terms = list(GRAD_TERMS[:k])
    if precomputed:  # one temperature for the shared table
        hyper["temperature"] = torch.tensor(2.0, dtype=torch.float64)
        flat = teacher_stats(zt.flatten(0, 1), y.flatten(), temperature=2.0)
        teacher = {"logits_t": None, "stats": TeacherStats(flat.table.view(k, shape[1], -1))}
    else:
        teacher = {"logits_t": zt}
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(x, target=y, grad_term=terms, **teacher, **hyper)
    weights = torch.arange(1.0, k + 1, dtype=torch.float64)
    (out["loss"] * weights).sum().backward()
    assert out["loss"].shape == (k,) and out["grad_cos"].shape == (k,)
    for i in range(k):
        alone = {n: v[i].item() if v.ndim else v.item() for n, v in hyper.items()}
        xi = zs[i].clone().requires_grad_(True)
        ref = dgkd_loss(xi, zt[i], y[i], grad_term=terms[i], **alone)
        ref["loss"].backward()
        for key in ("loss", "tckd", "nckd", "grad_mse", "grad_cos", "ce"):
            _close(out[key][i], ref[key])
        _close(x.grad[i], weights[i] * xi.grad)


def test_population_with_shared_numbers_and_one_grad_term() -> None:
    zs, zt, y = _population((3, 8, 5), seed=32)
    for grad_term in ("normalized", "raw"):
        x = zs.clone().requires_grad_(True)
        kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 0.5, "temperature": 3.0}
        out = dgkd_loss(x, zt, y, grad_term=grad_term, cosine=False, **kw)
        out["loss"].sum().backward()
        assert "grad_cos" not in out and "ce" not in out
        for i in range(3):
            xi = zs[i].clone().requires_grad_(True)
            ref = dgkd_loss(xi, zt[i], y[i], grad_term=grad_term, cosine=False, **kw)
            ref["loss"].backward()
            for key in ("loss", "tckd", "nckd", "grad_mse"):
                _close(out[key][i], ref[key])
            _close(x.grad[i], xi.grad)


def test_population_kd_loss_and_cross_entropy_are_per_student() -> None:
    from dgkd.losses import cross_entropy

    zs, zt, y = _population((3, 12, 7), seed=33)
    temps = torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64)
    weights = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    for temperature in (temps, 2.0):
        x = zs.clone().requires_grad_(True)
        kd = kd_loss(x, zt, temperature=temperature)
        (kd * weights).sum().backward()
        assert kd.shape == (3,)
        for i in range(3):
            t = temperature if isinstance(temperature, float) else temps[i].item()
            xi = zs[i].clone().requires_grad_(True)
            ref = kd_loss(xi, zt[i], temperature=t)
            ref.backward()
            torch.testing.assert_close(kd[i], ref.to(kd.dtype), rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(x.grad[i], weights[i] * xi.grad, rtol=1e-5, atol=1e-7)
    x = zs.clone().requires_grad_(True)
    ce = cross_entropy(x, y)
    (ce * weights).sum().backward()
    assert ce.shape == (3,)
    for i in range(3):
        xi = zs[i].float().clone().requires_grad_(True)
        ref = F.cross_entropy(xi, y[i])
        ref.backward()
        torch.testing.assert_close(ce[i], ref, rtol=0, atol=0)
        torch.testing.assert_close(x.grad[i].float(), weights[i].float() * xi.grad)
    one = zs[:1].clone().requires_grad_(True)
    value = cross_entropy(one, y[:1])
    value.sum().backward()
    assert value.shape == (1,)
    torch.testing.assert_close(value[0], F.cross_entropy(zs[0].float(), y[0]))


def test_per_student_values_need_a_population() -> None:
    zs, zt, y = _population((3, 8, 5), seed=34)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 1.0, "temperature": 4.0}
    three = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^alpha has shape \(3,\): per-student values need K x B"):
        dgkd_loss(zs[0], zt[0], y[0], **{**kw, "alpha": three})
    with pytest.raises(ValueError, match=r"^beta has shape \(2,\): .* got logits \(3, 8, 5\)$"):
        dgkd_loss(zs, zt, y, **{**kw, "beta": three[:2]})
    with pytest.raises(ValueError, match=r"grad_sign must be -1 or \+1, got \[-1.0, 0.5, 1.0\]"):
        dgkd_loss(zs, zt, y, grad_sign=torch.tensor([-1.0, 0.5, 1.0]), **kw)
    with pytest.raises(ValueError, match="grad_term must be 'normalized' or 'raw', got 'log'"):
        dgkd_loss(zs, zt, y, grad_term=["raw", "log", "raw"], **kw)
    # A 0-d tensor is a shared number, fine for one student.
    out = dgkd_loss(zs[0], zt[0], y[0], **{**kw, "alpha": torch.tensor(1.0)})
    torch.testing.assert_close(out["loss"], dgkd_loss(zs[0], zt[0], y[0], **kw)["loss"])


@pytest.mark.parametrize("fn", [dkd_terms, grad_terms])
def test_terms_validate_their_inputs(fn) -> None:
    zs, zt, y = _batch((4, 5), seed=35)
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got 0.0$"):
        fn(zs, zt, y, temperature=0.0)
    shapes = r"both be B x C \(or K x B x C\), got \(4, 5\) and \(4, 4\)"
    with pytest.raises(ValueError, match=shapes):
        fn(zs, zt[:, :4], y, temperature=1.0)
    with pytest.raises(ValueError, match=r"^target must have shape \(4,\), got \(3,\)$"):
        fn(zs, zt, y[:3], temperature=1.0)
    with pytest.raises(ValueError, match="both be B x C"):
        fn(zs[0], zt[0], y, temperature=1.0)


def test_the_losses_emit_no_warnings() -> None:
    """No deprecated implicit softmax axis, no resized outputs: every loss, one student and a
    population, with warnings as errors."""
    import warnings

    from dgkd.losses import cross_entropy, teacher_stats

    zs, zt, y = _batch((8, 5), seed=36)
    pop_s, pop_t, pop_y = _population((2, 8, 5), seed=36)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 1.0, "temperature": 2.0, "ce_weight": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for s, t, target in ((zs, zt, y), (pop_s, pop_t, pop_y)):
            x = s.clone().requires_grad_(True)
            dgkd_loss(x, t, target, **kw)["loss"].sum().backward()
            dkd_terms(s, t, target, temperature=2.0)
            grad_terms(s, t, target, temperature=2.0)
            kd_loss(s, t, temperature=2.0)
        stats = teacher_stats(zt, y, temperature=2.0)
        dgkd_loss(zs, None, y, stats=stats, **kw)
        cross_entropy(pop_s, pop_y)
        cross_entropy(pop_s[:1], pop_y[:1])


def test_half_precision_logits_are_computed_in_float32() -> None:
    """Half logits: the terms of their float32 copy, and a half gradient."""
    zs, zt, y = _batch((16, 10), seed=37, dtype=torch.float32)
    half = zs.half()
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 2.0, "temperature": 4.0, "ce_weight": 1.0}
    x = half.clone().requires_grad_(True)
    out = dgkd_loss(x, zt, y, **kw)
    out["loss"].backward()
    ref_x = half.float().requires_grad_(True)
    ref = dgkd_loss(ref_x, zt, y, **kw)
    ref["loss"].backward()
    assert x.grad.dtype == torch.float16 and out["loss"].dtype == torch.float32
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.grad, ref_x.grad.half())


def test_a_wider_teacher_is_cast_to_the_students_dtype() -> None:
    zs, zt, y = _batch((16, 10), seed=38, dtype=torch.float32)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 2.0, "temperature": 4.0}
    wide = dgkd_loss(zs, zt.double(), y, **kw)
    same = dgkd_loss(zs, zt, y, **kw)
    for key in same:
        assert wide[key].dtype == torch.float32
        torch.testing.assert_close(wide[key], same[key], rtol=0, atol=0)


@pytest.mark.parametrize("grad_term", ["normalized", "raw"])
def test_population_with_per_student_numbers_and_one_grad_term(grad_term) -> None:
    zs, zt, y = _population((3, 8, 5), seed=39)
    hyper = {n: torch.tensor(v[:3], dtype=torch.float64) for n, v in STUDENT_HYPER.items()}
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(x, zt, y, grad_term=grad_term, **hyper)
    out["loss"].sum().backward()
    for i in range(3):
        alone = {n: v[i].item() for n, v in hyper.items()}
        xi = zs[i].clone().requires_grad_(True)
        ref = dgkd_loss(xi, zt[i], y[i], grad_term=grad_term, **alone)
        ref["loss"].backward()
        for key in ref:
            _close(out[key][i], ref[key])
        _close(x.grad[i], xi.grad)


def test_kd_needs_a_positive_temperature_and_two_students_are_two() -> None:
    from dgkd.losses import cross_entropy

    zs, zt, y = _population((2, 6, 4), seed=40)
    for bad in (0.0, -1.0, 0):
        with pytest.raises(ValueError, match=rf"^temperature must be > 0, got {bad}$"):
            kd_loss(zs[0], zt[0], temperature=bad)
    ce = cross_entropy(zs, y)
    for i in range(2):
        torch.testing.assert_close(ce[i], F.cross_entropy(zs[i].float(), y[i]))


def test_half_precision_terms_and_teacher_table_are_float32() -> None:
    from dgkd.losses import teacher_stats

    # T = 3: dividing by it rounds differently in half and float precision (by 2 would not).

    zs, zt, y = _batch((16, 10), seed=41, dtype=torch.float32)
    hs, ht = zs.half(), zt.half()
    table = teacher_stats(ht, y, temperature=3.0).table
    assert table.dtype == torch.float32
    torch.testing.assert_close(table, teacher_stats(ht.float(), y, temperature=3.0).table)
    for fn in (dkd_terms, grad_terms):
        got = fn(hs, ht, y, temperature=3.0)
        want = fn(hs.float(), ht.float(), y, temperature=3.0)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)


def test_population_shape_errors_name_the_population() -> None:
    from dgkd.losses import TeacherStats, teacher_stats

    zs, zt, y = _population((3, 8, 2), seed=42)
    with pytest.raises(ValueError) as info:
        dkd_terms(zs, zt, y, temperature=1.0)
    assert str(info.value) == (
        "DKD needs at least 3 classes (got 2): with fewer, the non-target distribution has one "
        "class or none and NCKD is undefined; use kd or ce"
    )
    zs, zt, y = _population((3, 8, 5), seed=42)
    with pytest.raises(ValueError, match=r"^target must have shape \(3, 8\), got \(3, 7\)$"):
        grad_terms(zs, zt, y[:, :7], temperature=1.0)
    flat = teacher_stats(zt.flatten(0, 1), y.flatten(), temperature=1.0)
    stats = TeacherStats(flat.table.view(3, 8, -1))
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 1.0, "temperature": 1.0}
    with pytest.raises(ValueError) as info:
        dgkd_loss(zs[:, :4], None, y[:, :4], stats=stats, **kw)
    assert str(info.value) == "stats are for (3, 8, 5) logits, got (3, 4, 5)"
    three = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for name in ("epsilon", "temperature", "ce_weight"):
        with pytest.raises(ValueError, match=rf"^{name} has shape \(3,\): per-student values"):
            dgkd_loss(zs[0], zt[0], y[0], **{**kw, name: three})


def test_population_with_shared_numbers_and_mixed_grad_terms_is_bitwise_alone() -> None:
    """Python numbers, one student normalized and one raw: each bit for bit as alone (the
    per-student coefficients are formed in double precision, as for numbers)."""
    zs, zt, y = _population((2, 8, 5), seed=43)
    kw = {"alpha": 1.3, "beta": 7.1, "epsilon": 3.3, "temperature": 3.7, "ce_weight": 0.7}
    terms = ["normalized", "raw"]
    for dtype in (torch.float32, torch.float64):
        x = zs.to(dtype).clone().requires_grad_(True)
        out = dgkd_loss(x, zt.to(dtype), y, grad_term=terms, **kw)
        out["loss"].sum().backward()
        for i, term in enumerate(terms):
            xi = zs[i].to(dtype).clone().requires_grad_(True)
            ref = dgkd_loss(xi, zt[i].to(dtype), y[i], grad_term=term, **kw)
            ref["loss"].backward()
            for key in ref:
                torch.testing.assert_close(out[key][i], ref[key], rtol=0, atol=0)
            torch.testing.assert_close(x.grad[i], xi.grad, rtol=0, atol=0)


def test_population_cross_entropy_with_one_example_each() -> None:
    from dgkd.losses import cross_entropy

    zs, _, y = _population((3, 1, 6), seed=44)
    ce = cross_entropy(zs, y)
    assert ce.shape == (3,)
    for i in range(3):
        torch.testing.assert_close(ce[i], F.cross_entropy(zs[i].float(), y[i]))
