"""Tests for dgkd.models: shapes, published parameter counts, validation, determinism."""

import pytest
import torch

from dgkd.models import MODEL_NAMES, build_model, count_parameters

SEQUENCE_MODELS = ("cnn1d", "mlp")
IMAGE_MODELS = tuple(n for n in MODEL_NAMES if n not in SEQUENCE_MODELS)

# Parameter counts with 100 classes as published (RepDistiller / CRD, mdistiller).
PUBLISHED_PARAMS = {
    "resnet20": 0.28e6,
    "resnet56": 0.86e6,
    "resnet8x4": 1.23e6,
    "resnet32x4": 7.43e6,
    "wrn_16_2": 0.70e6,
    "wrn_40_2": 2.26e6,
}


def test_model_names_sorted_and_complete() -> None:
    assert list(MODEL_NAMES) == sorted(MODEL_NAMES)
    assert set(PUBLISHED_PARAMS) | set(SEQUENCE_MODELS) <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
@pytest.mark.parametrize("shape", [(2, 40), (2, 1, 40)])
def test_sequence_model_shapes(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, num_classes=10, input_shape=(40,))
    logits, feats = model(torch.randn(shape))
    assert logits.shape == (2, 10)
    assert feats.dim() == 2 and feats.shape[0] == 2


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_image_model_shapes(name: str, channels: int) -> None:
    model = build_model(name, num_classes=7, input_shape=(channels, 32, 32)).eval()
    with torch.no_grad():
        logits, feats = model(torch.randn(2, channels, 32, 32))
    assert logits.shape == (2, 7)
    assert feats.dim() == 2 and feats.shape[0] == 2
    # Features are exactly what the final classifier consumes.
    torch.testing.assert_close(model.fc(feats), logits)


@pytest.mark.parametrize(("name", "expected"), PUBLISHED_PARAMS.items())
def test_published_parameter_counts(name: str, expected: float) -> None:
    model = build_model(name, num_classes=100, input_shape=(3, 32, 32))
    assert count_parameters(model) == pytest.approx(expected, rel=0.03)


def test_cnn1d_width() -> None:
    narrow = build_model("cnn1d", num_classes=10, input_shape=(40,), width=25)
    default = build_model("cnn1d", num_classes=10, input_shape=(40,))
    assert count_parameters(narrow) < count_parameters(default)
    # MNIST-1D paper CNN: 3 convs of 25 channels, 40 -> 19 -> 10 -> 5 steps, linear 125 -> 10.
    assert count_parameters(narrow) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    assert narrow(torch.randn(2, 40))[1].shape == (2, 125)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose one of: cnn1d, mlp"):
        build_model("nope", num_classes=10, input_shape=(40,))


def test_width_on_image_model_rejected() -> None:
    with pytest.raises(ValueError, match="no width parameter"):
        build_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width=16)


@pytest.mark.parametrize("width", [0, -3])
def test_nonpositive_width_rejected(width: int) -> None:
    with pytest.raises(ValueError, match="width must be >= 1"):
        build_model("cnn1d", num_classes=10, input_shape=(40,), width=width)


def test_bad_input_shape_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(C, 32, 32\)"):
        build_model("resnet8", num_classes=10, input_shape=(3, 64, 64))
    with pytest.raises(ValueError, match=r"\(L,\)"):
        build_model("mlp", num_classes=10, input_shape=(3, 32, 32))


@pytest.mark.parametrize("name", ["cnn1d", "mlp", "resnet8", "wrn_16_2"])
def test_same_seed_same_weights(name: str) -> None:
    shape = (40,) if name in SEQUENCE_MODELS else (3, 32, 32)
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(name, num_classes=10, input_shape=shape).state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)
    torch.manual_seed(124)
    other = build_model(name, num_classes=10, input_shape=shape).state_dict()
    assert any(not torch.equal(states[0][k], other[k]) for k in other)


@pytest.mark.parametrize(("width", "length"), [(8, 40), (64, 40), (3, 13), (5, 8)])
def test_cnn1d_equals_standard_conv1d_forward_and_backward(width: int, length: int) -> None:
    """The im2col forward is the architecture's nn.Conv1d layers, value and gradients."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model("cnn1d", num_classes=10, input_shape=(length,), width=width).double()
    x = torch.randn(17, length, dtype=torch.float64)
    logits, feats = model(x)
    (logits.square().sum() + feats.sum()).backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    h = x.unsqueeze(1)
    for conv in model.features[0::2]:
        h = torch.relu(F.conv1d(h, conv.weight, conv.bias, stride=2, padding=1))
    ref_feats = h.flatten(1)
    ref_logits = model.fc(ref_feats)
    (ref_logits.square().sum() + ref_feats.sum()).backward()
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-12, atol=1e-12)
    for got, want in zip(ours, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_cnn1d_state_dict_is_that_of_conv1d_layers() -> None:
    """Checkpoints and the teacher cache stay loadable: no extra persistent entries."""
    model = build_model("cnn1d", num_classes=10, input_shape=(40,), width=8)
    assert sorted(model.state_dict()) == sorted(
        [f"features.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
        + ["fc.weight", "fc.bias"]
    )
