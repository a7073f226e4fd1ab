"""The run configuration: ``TrainConfig``, its validation, and ``--set`` parsing.

Imports no torch, so studies, spaces and every ``--help`` load in a fraction of a second. The
names of datasets, models and options live here because validation needs them; ``dgkd.data`` and
``dgkd.models`` build their registries from the same tuples (a test checks they agree).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dgkd import methods

__all__ = [
    "DATASETS",
    "DEVICES",
    "GRAD_TERMS",
    "LOSS_FIELDS",
    "NEUTRAL_FIELDS",
    "METHODS",
    "MODEL_NAMES",
    "OPTIMIZERS",
    "SCHEDULES",
    "SEQUENCE_MODELS",
    "STATE_GLOB",
    "ConfigError",
    "TrainConfig",
    "check_method",
    "check_pool",
    "coerce",
    "field_names",
    "parse_overrides",
]

# The built-in methods (dgkd.methods holds them and every other: a config may also name a
# registered plugin or module:ATTR).
METHODS = tuple(methods.BUILTINS)
# Loss settings and the built-ins whose loss reads them: under a method that does not read one
# (Method.fields) a value changes nothing, so searching it wastes trials (studies refuse that).
LOSS_FIELDS: dict[str, tuple[str, ...]] = methods.builtin_fields()
# Fields that never change a run's results, only how it is carried out: runs that differ in them
# are the same experiment (a resumed search or ablation may change them).
NEUTRAL_FIELDS = ("checkpoint_every",)
# The files dgkd.checkpoint saves a run's state in, every checkpoint_every epochs (named here
# for readers without torch, as the Ray search's driver).
STATE_GLOB = "population-*.pt"
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "multistep")
DEVICES = ("auto", "cpu", "cuda")
GRAD_TERMS = ("normalized", "raw")
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist", "mnist1d", "svhn")
# Architectures by name (dgkd.models builds them); the sequence models take MNIST-1D, the rest
# 32x32 images.
SEQUENCE_MODELS = ("cnn1d", "mlp")
MODEL_NAMES = tuple(
    sorted(
        (
            *SEQUENCE_MODELS,
            *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
            "resnet8x4",
            "resnet32x4",
            "wrn_16_2",
            "wrn_40_2",
        )
    )
)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a run. Same config, same metrics.

    The defaults are the embedded MNIST-1D setup, chosen on validation accuracy so that
    distillation helps (``scripts/default_setup.py``, docs/default-setup.md): a width-64 1-D CNN
    teacher (~95% test accuracy), a width-24 student (~90% alone, ~92% with DKD), alpha 1, beta 1,
    T 4, and epsilon 6 (the reference default).
    """

    # --- data ---
    dataset: str = "mnist1d"  # one of dgkd.data.DATASETS
    data_root: str = ""  # image datasets' directory; "" = $DGKD_CACHE/data
    download: bool = False  # let torchvision download missing image files
    # Share of train held out for validation, in [0, 1): image data, and mnist1d with val_pool 0
    # (the old protocol: 0.2 = 800 examples, one is 0.125 points of val_acc). mnist1d with
    # val_pool > 0 ignores it and trains on all 4000 published training examples.
    val_fraction: float = 0.2
    split_seed: int = 0  # seed of that validation split; shared by all runs so trials compare
    # MNIST-1D: validation examples drawn fresh from the task's generator (a seed of their own,
    # normalized as the published data); 0 = carve val_fraction of the training set instead. A
    # multiple of 10; at ~92% accuracy 10,000 have a binomial sd of 0.27 points (800: 0.9).
    val_pool: int = 10_000
    # MNIST-1D: test examples drawn fresh from the generator; 0 = the published 1000 (which
    # published_test_acc measures either way). A multiple of 10. Image data ignore both pools.
    test_pool: int = 20_000
    # --- models ---
    teacher: str = "cnn1d"  # teacher architecture (dgkd.models.MODEL_NAMES)
    teacher_width: int = 64  # width of a cnn1d/mlp teacher (0 = default); image models ignore it
    teacher_epochs: int = 60  # epochs of the teacher's own (CE) training
    teacher_lr: float = 0.0  # teacher learning rate; 0 = same as lr
    teacher_seed: int = 0  # the teacher's seed (ablations and confirm stages run several from it)
    teacher_checkpoint: str = ""  # state_dict file to load instead of training a teacher
    student: str = "cnn1d"  # student architecture
    student_width: int = 24  # width of a cnn1d/mlp student (0 = default); image models ignore it
    # --- method ---
    method: str = "dgkd"  # ce | kd | dkd | dgkd | kd_ls | module:ATTR (docs/methods.md)
    alpha: float = 1.0  # TCKD weight (DKD default)
    beta: float = 1.0  # NCKD weight (DKD's CIFAR-100 value is 8, for 100 classes; 1 here)
    epsilon: float = 6.0  # weight of the gradient term; 0 = DKD (reference default 6)
    temperature: float = 4.0  # distillation temperature T (dkd, dgkd, kd)
    grad_term: str = "normalized"  # "normalized" = M/stopgrad(M) (reference code), "raw" = M
    grad_sign: float = -1.0  # -1 maximizes M (the method), +1 minimizes it (ablation)
    ce_weight: float = 1.0  # weight of cross-entropy on the labels (all methods)
    kd_weight: float = 4.0  # weight of Hinton's KD term (method kd); 4 won on validation
    warmup: int = 5  # distillation weight = min(epoch / warmup, 1); 0 = no warmup
    # --- optimization ---
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 0.02  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 (sgd, adam) or decoupled (adamw) weight decay
    schedule: str = "cosine"  # constant | cosine | multistep, stepped once per epoch
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1  # multistep decay factor
    epochs: int = 40  # student training epochs
    batch_size: int = 128  # training batch size
    # --- runtime ---
    seed: int = 0  # seeds init, data order and augmentation
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    amp: bool = False  # bfloat16 autocast on CUDA (ignored on the CPU)
    eval_batch_size: int = 1024  # batch size of evaluation passes
    # The per-epoch evaluation (val_acc, val_ece, train_nc1) after every N-th epoch and the
    # last; the others' rows have NaN there, and a search prunes at evaluated epochs only. It
    # costs ~30% of a default run at N = 1, ~6% at 5 (the median pruner's interval at 40 epochs,
    # which the packaged MNIST-1D studies use). Training and final metrics do not depend on it.
    eval_every: int = 1
    # CPU threads for the run, 0 = leave torch's setting (a search then gives each worker
    # cores // workers). Default 1: MNIST-1D-sized models run fastest on one thread, and float
    # results then do not depend on how many workers share the machine.
    threads: int = 1
    # Save the run's state every N epochs, and when interrupted, where it has a place for it
    # (dgkd-train --out, a search trial), so that a killed run resumes with the same metrics;
    # 0 = never. 10: a killed 240-epoch CIFAR run loses at most 10 epochs, while the 40-epoch
    # default writes 3 files of ~30 kB (~1% of its time). Not part of what makes results differ.
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.milestones, list):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        _validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown config field {unknown[0]!r}; see 'dgkd-train --help'")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        return out


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


@functools.cache
def _field_types() -> dict[str, Any]:
    """Each field's type, resolved once: ``get_type_hints`` evaluates every annotation string
    again on each call, which made it most of the cost of building a config."""
    return typing.get_type_hints(TrainConfig)


def _validate(cfg: TrainConfig) -> None:
    hints = _field_types()
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), hints[f.name]
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(kind, True)
        if kind == tuple[int, ...]:
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ConfigError(f"{f.name} must be of type {_type_name(kind)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be finite, got {value}")

    def need(ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{name} must be {allowed}, got {getattr(cfg, name)!r}")

    need(cfg.dataset in DATASETS, "dataset", "one of " + ", ".join(DATASETS))
    need(cfg.teacher in MODEL_NAMES, "teacher", "one of " + ", ".join(MODEL_NAMES))
    need(cfg.student in MODEL_NAMES, "student", "one of " + ", ".join(MODEL_NAMES))
    check_method(cfg.method)
    sequence_data = cfg.dataset == "mnist1d"
    for name in ("teacher", "student"):
        arch = getattr(cfg, name)
        if (arch in SEQUENCE_MODELS) != sequence_data:
            kind = "a sequence model (cnn1d, mlp)" if sequence_data else "a 32x32 image model"
            raise ConfigError(f"{name} {arch!r} does not fit dataset {cfg.dataset!r}: use {kind}")
    need(cfg.optimizer in OPTIMIZERS, "optimizer", "one of " + ", ".join(OPTIMIZERS))
    need(cfg.schedule in SCHEDULES, "schedule", "one of " + ", ".join(SCHEDULES))
    need(cfg.device in DEVICES, "device", "one of " + ", ".join(DEVICES))
    need(cfg.grad_term in GRAD_TERMS, "grad_term", "'normalized' or 'raw'")
    need(cfg.grad_sign in (-1.0, 1.0), "grad_sign", "-1 or 1")
    need(0.0 <= cfg.val_fraction < 1.0, "val_fraction", "in [0, 1)")
    check_pool("val_pool", cfg.val_pool)
    check_pool("test_pool", cfg.test_pool)
    need(cfg.temperature > 0, "temperature", "> 0")
    for name in ("alpha", "beta", "epsilon", "ce_weight", "kd_weight", "weight_decay", "momentum"):
        need(getattr(cfg, name) >= 0, name, ">= 0")
    need(cfg.lr > 0, "lr", "> 0")
    need(cfg.teacher_lr >= 0, "teacher_lr", ">= 0 (0 = same as lr)")
    need(0 < cfg.gamma <= 1, "gamma", "in (0, 1]")
    for name in ("epochs", "teacher_epochs", "batch_size", "eval_batch_size", "eval_every"):
        need(getattr(cfg, name) >= 1, name, ">= 1")
    for name in ("warmup", "teacher_width", "student_width", "threads", "checkpoint_every"):
        need(getattr(cfg, name) >= 0, name, ">= 0")
    need(
        list(cfg.milestones) == sorted(set(cfg.milestones)) and all(m >= 1 for m in cfg.milestones),
        "milestones",
        "increasing positive epochs, e.g. 150,180,210",
    )
    need(
        cfg.schedule != "multistep" or bool(cfg.milestones),
        "milestones",
        "set for schedule 'multistep'",
    )


def check_method(name: str) -> methods.Method:
    """The method ``name`` stands for (:func:`dgkd.methods.get`), whose settings must be config
    fields.

    Raises:
        ConfigError: one line on what does not resolve.
    """
    try:
        method = methods.get(name)
    except methods.MethodError as exc:
        raise ConfigError(str(exc)) from None
    unknown = [r for r in method.reads if r not in field_names()]
    if unknown:
        raise ConfigError(
            f"method {name!r} reads {unknown[0]!r}, which is not a config field: a method "
            "reads existing fields (temperature, alpha, kd_weight, ...)"
        )
    return method


def check_pool(name: str, size: int) -> None:
    """Raise :class:`ConfigError` unless ``size`` fits the pool field ``name``: 0 (no pool) or a
    positive multiple of 10, since the MNIST-1D generator makes as many examples of each class
    (refused rather than rounded, so that a pool always has the size asked for)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0 or size % 10:
        raise ConfigError(
            f"{name} must be 0 or a positive multiple of 10 (as many examples of each class), "
            f"e.g. 10000, got {size!r}"
        )


def _type_name(kind: Any) -> str:
    """A field type in words: every field is an int, float, str, bool or tuple of ints."""
    return "list of ints" if kind == tuple[int, ...] else kind.__name__


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings into typed config changes (for ``--set``).

    Booleans accept true/false/1/0/yes/no; milestones a comma-separated list of ints.

    Raises:
        ConfigError: malformed item, unknown key, or a value of the wrong type.
    """
    hints = _field_types()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in hints:
            raise ConfigError(
                f"unknown config field {key!r}; valid fields: {', '.join(field_names())}"
            )
        out[key] = coerce(key, raw.strip(), hints[key])
    return out


def coerce(key: str, raw: Any, kind: Any = None) -> Any:
    """Convert a string (from the command line) or a TOML value to the field's type."""
    kind = kind or _field_types()[key]
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "1", "yes")
        if kind == tuple[int, ...]:
            if isinstance(raw, (list, tuple)):
                return tuple(int(v) for v in raw)
            return tuple(int(v) for v in str(raw).split(",") if v.strip())
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {_type_name(kind)}, got {raw!r}") from None
