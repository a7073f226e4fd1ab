"""Tests for dgkd.config: every validation rule at its boundary, coercion and ``--set`` parsing."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dgkd.config import (
    DATASETS,
    METHODS,
    MODEL_NAMES,
    SEQUENCE_MODELS,
    ConfigError,
    TrainConfig,
    coerce,
    field_names,
    parse_overrides,
)

# (field, the last valid value, the first invalid one, the message for the invalid one)
BOUNDARIES = [
    ("val_fraction", 0.0, -0.01, "val_fraction must be in [0, 1), got -0.01"),
    ("val_fraction", 0.999, 1.0, "val_fraction must be in [0, 1), got 1.0"),
    *[
        (
            name,
            0,
            -10,
            f"{name} must be 0 or a positive multiple of 10 (as many examples of "
            "each class), e.g. 10000, got -10",
        )
        for name in ("val_pool", "test_pool")
    ],
    ("val_pool", 10, 15, "val_pool must be 0 or a positive multiple of 10"),
    ("test_pool", 20_000, 20_001, "test_pool must be 0 or a positive multiple of 10"),
    ("temperature", 1e-6, 0.0, "temperature must be > 0, got 0.0"),
    ("lr", 1e-9, 0.0, "lr must be > 0, got 0.0"),
    ("teacher_lr", 0.0, -1e-9, "teacher_lr must be >= 0 (0 = same as lr), got -1e-09"),
    ("gamma", 1.0, 1.0001, "gamma must be in (0, 1], got 1.0001"),
    ("gamma", 1e-6, 0.0, "gamma must be in (0, 1], got 0.0"),
    *[
        (name, 0.0, -1e-9, f"{name} must be >= 0, got -1e-09")
        for name in ("alpha", "beta", "epsilon", "ce_weight", "kd_weight", "weight_decay")
    ],
    ("momentum", 0.0, -0.5, "momentum must be >= 0, got -0.5"),
    *[
        (name, 1, 0, f"{name} must be >= 1, got 0")
        for name in ("epochs", "teacher_epochs", "batch_size", "eval_batch_size")
    ],
    *[
        (name, 0, -1, f"{name} must be >= 0, got -1")
        for name in ("warmup", "teacher_width", "student_width", "threads")
    ],
    ("grad_sign", 1.0, 0.0, "grad_sign must be -1 or 1, got 0.0"),
    ("grad_sign", -1.0, -2.0, "grad_sign must be -1 or 1, got -2.0"),
    ("milestones", (1,), (0,), "milestones must be increasing positive epochs, e.g. 150,180,210"),
    ("milestones", (3, 4), (4, 3), "milestones must be increasing positive epochs"),
    (
        "milestones",
        (1, 2, 9),
        (1, 1),
        "milestones must be increasing positive epochs, e.g. 150,180,210, got (1, 1)",
    ),
]


@pytest.mark.parametrize(("field", "good", "bad", "message"), BOUNDARIES)
def test_each_rule_at_its_boundary(field: str, good, bad, message: str) -> None:
    assert getattr(TrainConfig().replace(**{field: good}), field) == good
    with pytest.raises(ConfigError) as info:
        TrainConfig().replace(**{field: bad})
    assert str(info.value) == message or str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "dkdx"}, "method must be one of ce, kd, dkd, dgkd, got 'dkdx'"),
        ({"dataset": "mnist2d"}, "dataset must be one of " + ", ".join(DATASETS)),
        ({"optimizer": "lion"}, "optimizer must be one of sgd, adam, adamw, got 'lion'"),
        ({"schedule": "step"}, "schedule must be one of constant, cosine, multistep, got 'step'"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, got 'tpu'"),
        ({"grad_term": "log"}, "grad_term must be 'normalized' or 'raw', got 'log'"),
        ({"teacher": "resnet9"}, "teacher must be one of " + ", ".join(MODEL_NAMES)),
        ({"student": "cnn2d"}, "student must be one of " + ", ".join(MODEL_NAMES) + ", got"),
        ({"schedule": "multistep"}, "milestones must be set for schedule 'multistep', got ()"),
        ({"epochs": True}, "epochs must be of type int, got True"),
        ({"epochs": 2.0}, "epochs must be of type int, got 2.0"),
        ({"alpha": "1"}, "alpha must be of type float, got '1'"),
        ({"alpha": False}, "alpha must be of type float, got False"),
        ({"amp": 1}, "amp must be of type bool, got 1"),
        ({"method": 1}, "method must be of type str, got 1"),
        ({"milestones": (1, True)}, "milestones must be of type list of ints, got (1, True)"),
        ({"milestones": (1.0,)}, "milestones must be of type list of ints"),
        ({"alpha": math.inf}, "alpha must be finite, got inf"),
        ({"lr": -math.inf}, "lr must be finite, got -inf"),
        ({"temperature": math.nan}, "temperature must be finite, got nan"),
        (
            {"dataset": "cifar10"},
            "teacher 'cnn1d' does not fit dataset 'cifar10': use a 32x32 image model",
        ),
        (
            {"dataset": "cifar10", "teacher": "resnet8"},
            "student 'cnn1d' does not fit dataset 'cifar10': use a 32x32 image model",
        ),
        (
            {"student": "resnet8"},
            "student 'resnet8' does not fit dataset 'mnist1d': use a sequence model (cnn1d, mlp)",
        ),
        ({"teacher": "wrn_16_2"}, "teacher 'wrn_16_2' does not fit dataset 'mnist1d'"),
    ],
)
def test_invalid_values_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig().replace(**changes)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_valid_combinations() -> None:
    cfg = TrainConfig(alpha=1, lr=1, gamma=1)  # ints for float fields
    assert (cfg.alpha, cfg.lr, cfg.gamma) == (1, 1, 1)
    images = TrainConfig(dataset="cifar100", teacher="resnet32x4", student="resnet8x4")
    assert images.student == "resnet8x4"
    for model in SEQUENCE_MODELS:
        assert TrainConfig(teacher=model, student=model).teacher == model
    for method in METHODS:
        assert TrainConfig(method=method).method == method
    multistep = TrainConfig(schedule="multistep", milestones=[2, 5])
    assert multistep.milestones == (2, 5) and isinstance(multistep.milestones, tuple)
    assert TrainConfig(milestones=(3,)).milestones == (3,)  # ignored unless multistep
    assert TrainConfig(grad_sign=-1).grad_sign == -1


def test_replace_to_dict_and_field_names() -> None:
    cfg = TrainConfig().replace(epochs=3, milestones=(1, 2))
    assert cfg.epochs == 3 and TrainConfig().epochs == 40  # a copy
    with pytest.raises(
        ConfigError, match=r"^unknown config field 'epoch'; see 'dgkd-train --help'$"
    ):
        TrainConfig().replace(epoch=3, epochs=2)
    with pytest.raises(ConfigError, match="unknown config field 'a'"):
        TrainConfig().replace(zz=1, a=2)  # the first in sorted order
    data = cfg.to_dict()
    assert data["milestones"] == [1, 2] and data["epochs"] == 3
    assert list(data) == list(field_names())
    assert field_names() == tuple(f.name for f in dataclasses.fields(TrainConfig))
    assert field_names()[:3] == ("dataset", "data_root", "download")


@pytest.mark.parametrize(
    ("key", "raw", "want"),
    [
        ("amp", "TRUE", True),
        ("amp", "Yes", True),
        ("amp", "1", True),
        ("amp", "false", False),
        ("amp", "NO", False),
        ("amp", "0", False),
        ("amp", True, True),
        ("amp", False, False),
        ("milestones", "150, 180,", (150, 180)),
        ("milestones", "", ()),
        ("milestones", [3, 4.0], (3, 4)),
        ("milestones", (5,), (5,)),
        ("epochs", "7", 7),
        ("epochs", 7.0, 7),
        ("lr", "1e-3", 0.001),
        ("lr", 2, 2.0),
        ("method", "kd", "kd"),
    ],
)
def test_coerce(key: str, raw, want) -> None:
    got = coerce(key, raw)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("amp", "maybe", "amp must be of type bool, got 'maybe'"),
        ("amp", 2, "amp must be of type bool, got 2"),
        ("epochs", 2.5, "epochs must be of type int, got 2.5"),
        ("epochs", "2.0", "epochs must be of type int, got '2.0'"),
        ("milestones", "1,a", "milestones must be of type list of ints, got '1,a'"),
        ("lr", None, "lr must be of type float, got None"),
    ],
)
def test_coerce_errors(key: str, raw, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        coerce(key, raw)
    assert str(info.value) == message


def test_coerce_with_an_explicit_kind() -> None:
    assert coerce("anything", "3", int) == 3
    assert coerce("flag", "yes", bool) is True


def test_parse_overrides_trims_and_normalizes() -> None:
    got = parse_overrides([" teacher-width = 16 ", "milestones=", "amp=1", "lr= 0.5"])
    assert got == {"teacher_width": 16, "milestones": (), "amp": True, "lr": 0.5}
    assert parse_overrides(["data_root=/a=b"]) == {"data_root": "/a=b"}  # first '=' splits
    for item in ("epochs", "=3", " =3", ""):
        with pytest.raises(ConfigError, match=r"^--set expects key=value, got "):
            parse_overrides([item])
    with pytest.raises(ConfigError) as info:
        parse_overrides(["epochz=3"])
    assert str(info.value) == (
        f"unknown config field 'epochz'; valid fields: {', '.join(field_names())}"
    )


def test_every_field_type_has_a_name_for_its_errors() -> None:
    """Type errors name the field's type; a new field of another kind (an Optional, say) must
    get a name here too."""
    import dataclasses
    import typing

    from dgkd.config import TrainConfig, _type_name

    hints = typing.get_type_hints(TrainConfig)
    names = {_type_name(hints[f.name]) for f in dataclasses.fields(TrainConfig)}
    assert names == {"int", "float", "str", "bool", "list of ints"}
