"""Every model as a population of K (tiny shapes, CPU): each member is its own model.

A member starts with ``build_model``'s weights under its seed; its forward, gradients and
BatchNorm statistics (training and evaluation) are those of that model alone. Bitwise for the
sequence models; for the grouped image models bitwise in float64 and with PyTorch's native
convolutions, and with oneDNN's (the CPU default) to float32 rounding: its grouped and single
convolution kernels sum in other orders.
"""

from __future__ import annotations

import pytest
import torch

from dgkd.models import MODEL_NAMES, Population, build_model, build_population, count_parameters

SEEDS = (11, 12, 13)
IMAGE = (3, 32, 32)
# The zoo's slowest (resnet110, resnet32x4, wrn_40_2) behave as their smaller siblings.
SMALL_ZOO = ("resnet8", "resnet20", "resnet8x4", "wrn_16_2")


def _shape(name: str) -> tuple[int, ...]:
    return (40,) if name in ("cnn1d", "mlp") else IMAGE


def _width(name: str) -> int | None:
    return {"cnn1d": 8, "mlp": 16}.get(name)


def _members(name: str, seeds=SEEDS) -> list[torch.nn.Module]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(build_model(name, num_classes=10, input_shape=_shape(name), width=_width(name)))
    return out


def _population(name: str, seeds=SEEDS) -> Population:
    return build_population(
        name, num_classes=10, input_shape=_shape(name), width=_width(name), seeds=seeds
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_as_a_population_with_each_member_s_weights(name) -> None:
    pop = _population(name, seeds=SEEDS[:2])
    assert pop.size == 2
    for k, model in enumerate(_members(name, seeds=SEEDS[:2])):
        state = pop.member_state(k)
        assert state.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(state[key], value), (name, key)
        assert count_parameters(pop.member(k)) == count_parameters(model)
    x = torch.randn(2, 3, *_shape(name))
    logits, feats = pop.eval()(x)
    assert logits.shape == (2, 3, 10) and feats.shape[:2] == (2, 3)


def _forward_backward(model, x):
    logits, feats = model(x)
    (logits.square().sum() + feats.sum()).backward()
    return logits.detach(), feats.detach()


@pytest.fixture
def native_convolutions(monkeypatch):
    """Convolutions without oneDNN, whose grouped and single kernels sum in other orders."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _compare(name: str, training: bool, check) -> None:
    pop = _population(name).train(training)
    dtype = next(pop.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(SEEDS), 6, *_shape(name), generator=gen, dtype=dtype)
    if not training:  # distinct running statistics per member first
        pop.train()
        pop(x * 2 + 1)
        pop.eval()
    logits, feats = _forward_backward(pop, x)
    params = dict(pop.core.named_parameters())
    for k, model in enumerate(_members(name)):
        model.load_state_dict(pop.member_state(k))  # the running statistics too
        model.train(training)
        one_logits, one_feats = _forward_backward(model, x[k])
        check(logits[k], one_logits)
        check(feats[k], one_feats)
        for n, p in model.named_parameters():
            check(params[n].grad.view(len(SEEDS), *p.shape)[k], p.grad)


def _bitwise(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["cnn1d", "mlp"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_each_sequence_member_computes_bitwise_as_its_own_model(name, training) -> None:
    _compare(name, training, _bitwise)


@pytest.mark.parametrize("name", SMALL_ZOO)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_each_image_member_computes_bitwise_as_its_own_model_in_float64(
    name, training, float64
) -> None:
    _compare(name, training, _bitwise)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2"])
def test_each_image_member_computes_bitwise_with_native_convolutions(
    name, native_convolutions
) -> None:
    _compare(name, True, _bitwise)


@pytest.mark.parametrize("name", SMALL_ZOO)
def test_image_members_in_float32_differ_by_rounding_only(name) -> None:
    """Forward only: this test loss's gradients through BatchNorm on 6 examples amplify
    float32 rounding (checked exactly in float64 above)."""
    pop = _population(name).eval()
    x = torch.randn(len(SEEDS), 6, *IMAGE, generator=torch.Generator().manual_seed(0))
    logits, _ = pop(x)
    for k, model in enumerate(_members(name)):
        want = model.eval()(x[k])[0]
        torch.testing.assert_close(logits[k], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2"])
def test_batchnorm_keeps_statistics_per_member(name) -> None:
    pop = _population(name).train()
    x = torch.randn(len(SEEDS), 4, *IMAGE)
    x[1] = x[1] * 3 + 2  # member 1 sees other data
    pop(x)
    models = _members(name)
    for k, model in enumerate(models):
        model.train()(x[k])
        state = pop.member_state(k)
        for key, value in model.state_dict().items():
            if "running" in key:
                torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6)
    means = [pop.member_state(k)["bn1.running_mean"] for k in range(len(SEEDS))]
    assert not torch.allclose(means[0], means[1])


def test_a_population_of_one_is_the_plain_model() -> None:
    pop = _population("cnn1d", seeds=(5,))
    (model,) = _members("cnn1d", seeds=(5,))
    assert type(pop.core) is type(model)
    x = torch.randn(1, 7, 40)
    assert torch.equal(pop(x)[0][0], model(x[0])[0])


@pytest.mark.parametrize("name", ["cnn1d", "resnet8"])
def test_select_keeps_members_and_their_state(name) -> None:
    pop = _population(name)
    for p in pop.parameters():
        p.data.add_(torch.randn_like(p))  # trained weights, not the initial ones
    kept = pop.select([2, 0])
    assert kept.size == 2
    for new, old in ((0, 2), (1, 0)):
        for key, value in kept.member_state(new).items():
            assert torch.equal(value, pop.member_state(old)[key]), key
    alone = pop.select([1])
    assert alone.size == 1 and type(alone.core) is type(pop.member(1))
    x = torch.randn(1, 2, *_shape(name))
    torch.testing.assert_close(alone.eval()(x)[0][0], pop.member(1)(x[0])[0])


def test_member_is_a_copy_in_eval_mode() -> None:
    pop = _population("mlp")
    model = pop.member(0)
    assert not model.training
    for p in model.parameters():
        p.data.zero_()
    assert pop.member_state(0)["fc.weight"].abs().sum() > 0


def test_empty_population_rejected() -> None:
    with pytest.raises(ValueError, match="at least one seed"):
        build_population("cnn1d", num_classes=10, input_shape=(40,), seeds=[])
