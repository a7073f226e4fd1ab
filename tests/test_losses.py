"""Tests for dgkd.losses against independent, naive implementations of DESIGN.md section 2."""

from __future__ import annotations

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
