"""The losses over a population's K x B x C logits: each student's value and gradient are its own.

Every student is checked against float64 autograd (a stable log-sum-exp formulation
differentiated twice, no closed forms) and bitwise against the same loss on its B x C alone,
with shared and per-student hyperparameters, including confident students at logits 1e4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dgkd.losses import (
    TeacherStats,
    cross_entropy,
    dgkd_loss,
    dkd_terms,
    grad_terms,
    kd_loss,
    teacher_stats,
)

K, B, C = 4, 16, 10
TERMS = ("loss", "tckd", "nckd", "grad_mse", "grad_cos", "ce")


def _population(dtype=torch.float64, seed: int = 0):
    """Four students: moderate logits, confident right, confident wrong, random at 1e4."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (K, B), generator=g)
    onehot = F.one_hot(y, C).double()
    wrong = F.one_hot((y + 1) % C, C).double()
    zs = torch.randn(K, B, C, generator=g, dtype=torch.float64) * 3
    zt = torch.randn(K, B, C, generator=g, dtype=torch.float64) * 3
    zs[1], zt[1] = onehot[1] * 1e4, onehot[1] * 1e4 - wrong[1] * 1e4
    zs[2], zt[2] = wrong[2] * 1e4, onehot[2] * 1e4
    zs[3], zt[3] = zs[3] / 3 * 1e4, zt[3] / 3 * 1e4
    return zs.to(dtype), zt.to(dtype), y


# Per-student hyperparameters (float64, as the training loop passes them).
ALPHA = (1.0, 0.5, 2.0, 1.0)
BETA = (8.0, 2.0, 1.0, 0.7)
EPSILON = (6.0, 0.0, 1.0, 0.1)
TEMPERATURE = (4.0, 2.0, 1.0, 3.3)
SIGN = (-1.0, 1.0, -1.0, 1.0)
CE_WEIGHT = (1.0, 0.5, 0.0, 2.0)
GRAD_TERM = ("normalized", "raw", "normalized", "raw")


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _per_student() -> dict:
    return {"alpha": _t(ALPHA), "beta": _t(BETA), "epsilon": _t(EPSILON),
            "temperature": _t(TEMPERATURE), "grad_sign": _t(SIGN), "ce_weight": _t(CE_WEIGHT),
            "grad_term": list(GRAD_TERM)}  # fmt: skip


def _student(k: int) -> dict:
    return {"alpha": ALPHA[k], "beta": BETA[k], "epsilon": EPSILON[k],
            "temperature": TEMPERATURE[k], "grad_sign": SIGN[k], "ce_weight": CE_WEIGHT[k],
            "grad_term": GRAD_TERM[k]}  # fmt: skip


def _reference(zs, zt, y, *, alpha, beta, epsilon, temperature, grad_term, grad_sign, ce_weight):
    """One student's loss and gradient by float64 autograd, twice, from log-sum-exp forms."""
    z = zs.double().detach().requires_grad_(True)
    mask = F.one_hot(y, zs.shape[1]).bool()
    tgt = y.unsqueeze(1)

    def parts(logits):
        s = logits / temperature
        lse = torch.logsumexp(s, 1, keepdim=True)
        masked = s.masked_fill(mask, float("-inf"))
        log_not = torch.logsumexp(masked, 1, keepdim=True) - lse
        return s.gather(1, tgt) - lse, log_not, masked.log_softmax(1)

    (lp_t, lp_n, lp_hat), (lq_t, lq_n, lq_hat) = parts(z), parts(zt.double())
    t2 = temperature**2
    tckd = t2 * (lq_t.exp() * (lq_t - lp_t) + lq_n.exp() * (lq_n - lp_n)).mean()
    among = torch.where(mask, 0.0, lq_hat.exp() * (lq_hat - lp_hat))
    nckd = t2 * among.sum(1).mean()
    g_t = torch.autograd.grad(tckd, z, create_graph=True)[0]
    g_n = torch.autograd.grad(nckd, z, create_graph=True)[0]
    m = ((g_t - g_n) ** 2).mean()
    g = m / (m.detach() + 1e-8) if grad_term == "normalized" else m
    ce = F.cross_entropy(z, y)
    loss = alpha * tckd + beta * nckd + grad_sign * epsilon * g + ce_weight * ce
    (grad,) = torch.autograd.grad(loss, z)
    cos = F.cosine_similarity(g_t, g_n, dim=1).mean()
    out = {"loss": loss, "tckd": tckd, "nckd": nckd, "grad_mse": m, "grad_cos": cos, "ce": ce}
    return {k: v.detach() for k, v in out.items()}, grad


def _run(zs, zt, y, **kw):
    x = zs.clone().requires_grad_(True)
    out = dgkd_loss(x, zt, y, **kw)
    out["loss"].sum().backward()
    return {k: v.detach() for k, v in out.items()}, x.grad


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_student"])
def test_each_student_matches_float64_autograd(shared) -> None:
    zs, zt, y = _population()
    kw = {**_student(0), "grad_term": GRAD_TERM[0]} if shared else _per_student()
    out, grad = _run(zs, zt, y, **kw)
    assert grad.shape == zs.shape and all(out[key].shape == (K,) for key in TERMS)
    for k in range(K):
        want, want_grad = _reference(zs[k], zt[k], y[k], **(_student(0) if shared else _student(k)))
        for key in TERMS:
            if key == "grad_cos" and k > 0:
                continue  # saturated students: rows with g_N ~ 0, where the cosine is 0 by choice
            torch.testing.assert_close(out[key][k], want[key], rtol=1e-6, atol=1e-9, msg=key)
        torch.testing.assert_close(grad[k], want_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stats", [False, True], ids=["logits", "stats"])
def test_each_student_is_bitwise_its_own_loss(dtype, stats) -> None:
    """Per-student float64 numbers give each student exactly its numbers' loss alone."""
    zs, zt, y = _population(dtype)
    kw = _per_student()
    table = None
    if stats:  # one temperature per student: each student's rows from its own table
        table = torch.stack([teacher_stats(zt[k], y[k], temperature=TEMPERATURE[k]).table
                             for k in range(K)])  # fmt: skip
    out, grad = _run(zs, None if stats else zt, y,
                     stats=None if table is None else TeacherStats(table), **kw)  # fmt: skip
    for k in range(K):
        one = None if table is None else TeacherStats(table[k])
        alone, grad_alone = _run(zs[k], None if stats else zt[k], y[k], stats=one, **_student(k))
        for key in TERMS:
            assert torch.equal(out[key][k], alone[key]), (k, key)
            assert torch.isfinite(out[key][k]), (k, key)
        assert torch.equal(grad[k], grad_alone), k
        assert torch.isfinite(grad[k]).all()


def test_students_do_not_couple() -> None:
    """A student's results do not depend on its neighbours (means and M are per student)."""
    zs, zt, y = _population(torch.float32)
    kw = _student(0)
    full, full_grad = _run(zs, zt, y, **kw)
    other = zs.clone()
    other[0] = other[0] * 5 + 1  # change one student only
    changed, changed_grad = _run(other, zt, y, **kw)
    for key in TERMS:
        assert torch.equal(full[key][1:], changed[key][1:]), key
        assert not torch.equal(full[key][0], changed[key][0]) or key == "grad_cos"
    assert torch.equal(full_grad[1:], changed_grad[1:])


def test_a_population_of_one_is_the_single_loss() -> None:
    zs, zt, y = _population(torch.float32)
    kw = _student(0)
    one, grad = _run(zs[:1], zt[:1], y[:1], **kw)
    alone, grad_alone = _run(zs[0], zt[0], y[0], **kw)
    for key in TERMS:
        assert torch.equal(one[key][0], alone[key]), key
    assert torch.equal(grad[0], grad_alone)


def test_dkd_terms_and_grad_terms_per_student() -> None:
    zs, zt, y = _population(torch.float64)
    tckd, nckd = dkd_terms(zs, zt, y, temperature=2.0)
    g_t, g_n = grad_terms(zs, zt, y, temperature=2.0)
    assert tckd.shape == nckd.shape == (K,) and g_t.shape == g_n.shape == zs.shape
    for k in range(K):
        one = dkd_terms(zs[k], zt[k], y[k], temperature=2.0)
        torch.testing.assert_close((tckd[k], nckd[k]), one, rtol=1e-12, atol=0.0)
        g_one = grad_terms(zs[k], zt[k], y[k], temperature=2.0)
        torch.testing.assert_close((g_t[k], g_n[k]), g_one, rtol=1e-12, atol=0.0)


def test_cross_entropy_and_kd_per_student_are_bitwise_the_library_s() -> None:
    zs, zt, y = _population(torch.float32)
    zs[1:] = zs[1:] / 1e3  # moderate logits for KD
    weights = torch.tensor(CE_WEIGHT)
    x = zs.clone().requires_grad_(True)
    ce = cross_entropy(x, y)
    kd = kd_loss(x, zt, temperature=_t(TEMPERATURE))
    (weights * ce + kd).sum().backward()
    for k in range(K):
        xk = zs[k].clone().requires_grad_(True)
        ce_k = F.cross_entropy(xk, y[k])
        kd_k = kd_loss(xk, zt[k], temperature=TEMPERATURE[k])
        (CE_WEIGHT[k] * ce_k + kd_k).backward()
        assert torch.equal(ce[k], ce_k) and torch.equal(kd[k], kd_k), k
        assert torch.equal(x.grad[k], xk.grad), k
    # One student takes the library's own node.
    assert torch.equal(cross_entropy(zs[:1], y[:1])[0], F.cross_entropy(zs[0], y[0]))


def test_per_student_values_are_validated() -> None:
    zs, zt, y = _population(torch.float32)
    kw = _student(0)
    with pytest.raises(ValueError, match="per-student values need K x B x C"):
        dgkd_loss(zs[0], zt[0], y[0], **{**kw, "alpha": _t(ALPHA)})
    with pytest.raises(ValueError, match="shape"):
        dgkd_loss(zs, zt, y, **{**kw, "beta": _t(BETA[:2])})
    with pytest.raises(ValueError, match="grad_sign"):
        dgkd_loss(zs, zt, y, **{**kw, "grad_sign": _t((1.0, -1.0, 0.5, 1.0))})
    with pytest.raises(ValueError, match="grad_term"):
        dgkd_loss(zs, zt, y, **{**kw, "grad_term": ["normalized", "log", "raw", "raw"]})
    with pytest.raises(ValueError, match="target must have shape"):
        dgkd_loss(zs, zt, y[:, :3], **kw)
    stats = TeacherStats(teacher_stats(zt[0], y[0], temperature=4.0).table)
    with pytest.raises(ValueError, match="stats are for"):
        dgkd_loss(zs, None, y, stats=stats, **kw)


def test_a_diverged_error_says_where_and_survives_pickling() -> None:
    """Worker processes and Ray pass the error on pickled: epoch, step and value must arrive."""
    import pickle

    from dgkd.step import DivergedError

    err = pickle.loads(pickle.dumps(DivergedError(3, 17, float("nan"))))
    assert (err.epoch, err.step) == (3, 17) and err.value != err.value  # NaN
    assert str(err) == (
        "loss became nan at epoch 3, step 17; lower lr or epsilon, or use grad_term='normalized'"
    )


def test_one_runs_loss_with_the_teachers_precomputed_side_is_the_same_loss() -> None:
    """distill_loss takes the batch's teacher side (its rows of teacher_stats) as the trainer
    passes it; the loss and its gradient are those computed from the teacher's logits."""
    from dgkd.config import TrainConfig
    from dgkd.losses import teacher_stats
    from dgkd.step import distill_loss

    cfg = TrainConfig(method="dgkd", epsilon=2.0, temperature=3.0, beta=2.0)
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 64, 10, generator=g) * 2
    y = torch.randint(0, 10, (64,), generator=g)
    out = []
    for stats in (None, teacher_stats(zt, y, temperature=3.0)):
        z = zs.clone().requires_grad_()
        loss, terms = distill_loss(cfg, z, zt, y, 0.5, stats=stats)
        loss.backward()
        out.append((loss.detach(), terms["tckd"], z.grad))
    torch.testing.assert_close(out[1], out[0], rtol=1e-6, atol=1e-7)


def test_a_populations_loss_settings_are_each_members_own_numbers() -> None:
    """The numbers a population's loss runs with: each member's own grad_term, grad_sign and
    temperature, its weights scaled by its warmup factor (epsilon only for dgkd); one plain
    number where every member agrees, as a single run has."""
    from dgkd.config import TrainConfig
    from dgkd.step import loss_settings

    base = TrainConfig()  # dgkd: normalized term, sign -1, alpha 1, beta 1, epsilon 6, T 4
    other = base.replace(seed=1, grad_term="raw", grad_sign=1.0, alpha=0.5, temperature=2.0)
    dkd = base.replace(seed=2, method="dkd")
    s = loss_settings([base, other, dkd], [1.0, 0.5, 1.0], torch.device("cpu"))
    assert s["grad_term"] == ["normalized", "raw", "normalized"]
    assert s["grad_sign"].tolist() == [-1.0, 1.0, -1.0]
    assert s["temperature"].tolist() == [4.0, 2.0, 4.0]
    assert s["alpha"].tolist() == [1.0, 0.25, 1.0]
    assert s["beta"].tolist() == [1.0, 0.5, 1.0]
    assert s["epsilon"].tolist() == [6.0, 3.0, 0.0]  # dkd has no gradient term
    assert s["ce_weight"] == 1.0 and s["alpha"].dtype == torch.float64
    same = loss_settings([base, base.replace(seed=1)], [1.0, 1.0], torch.device("cpu"))
    assert same == {"ce_weight": 1.0, "alpha": 1.0, "beta": 1.0, "epsilon": 6.0,
                    "temperature": 4.0, "grad_term": "normalized", "grad_sign": -1.0}  # fmt: skip
    kd = loss_settings([base.replace(method="kd"), base.replace(method="kd", kd_weight=2.0)],
                       [0.5, 1.0], torch.device("cpu"))  # fmt: skip
    assert kd == {"ce_weight": 1.0, "temperature": 4.0, "kd_weight": 2.0}  # 0.5 x 4 = 1 x 2


def test_two_members_of_a_partial_batch_are_each_their_own_loss_and_report_their_terms() -> None:
    """Two kd members, two dgkd members, on 15 examples (not a multiple of 64: member by
    member): each bitwise its own loss, and the terms a history reports (ce, kd; tckd, nckd,
    ...) under their names."""
    from dgkd.config import TrainConfig
    from dgkd.step import population_loss

    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(2, 15, C, generator=g), torch.randn(2, 15, C, generator=g)
    y = torch.randint(0, C, (2, 15), generator=g)
    base = TrainConfig()
    for cfgs in (
        [base.replace(method="kd"), base.replace(seed=1, method="kd", temperature=2.0)],
        [base, base.replace(seed=1, epsilon=2.0, alpha=0.5)],
    ):
        loss, terms = population_loss(cfgs, zs, zt, y, [1.0, 0.5])
        for k in range(2):
            one, one_terms = population_loss(cfgs[k : k + 1], zs[k : k + 1], zt[k : k + 1],
                                             y[k : k + 1], [1.0, 0.5][k : k + 1])  # fmt: skip
            assert torch.equal(loss[k : k + 1], one)
            assert terms.keys() == one_terms.keys()
            assert all(torch.equal(terms[t][k : k + 1], one_terms[t]) for t in terms)
    kd_cfgs = [base.replace(method="kd"), base.replace(seed=1, method="kd")]
    _, terms = population_loss(kd_cfgs, zs, zt, y, [1.0, 1.0])
    assert set(terms) == {"ce", "kd"}
    assert torch.equal(terms["kd"], kd_loss(zs, zt, temperature=4.0).detach())
