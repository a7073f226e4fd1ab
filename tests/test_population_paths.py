"""The population contract on every loss path of dgkd.step: members that differ in method and in
every loss setting are each bitwise the same run as alone, whether their batches go through the
stacked loss (a multiple of 64 examples), member by member (any other size), or both (full
batches stacked, the epoch's last, partial batch member by member); on the sequence models and
on an image model. And how an epoch's data is laid out for a population: the memory bound on
gathering it once, the loss families, each member's own training transform."""

from __future__ import annotations

import pytest
import torch
from fakes import TINY_POOLS, assert_image_members_train_alone, image_splits

from dgkd.config import TrainConfig
from dgkd.train import train, train_population


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    drop = ("duration_s",)
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def members(base: TrainConfig) -> list[TrainConfig]:
    """One loss family apart from another, and inside each every loss setting apart: epsilon
    (0 and 2), alpha, beta, temperature, grad_term, grad_sign, ce_weight, kd_weight."""
    return [
        base.replace(seed=1, method="ce", ce_weight=0.5),
        base.replace(seed=2, method="kd", temperature=2.0, kd_weight=1.0),
        base.replace(seed=3, method="kd", temperature=4.0, kd_weight=4.0),
        base.replace(seed=4, epsilon=0.0),
        base.replace(seed=5, epsilon=2.0, alpha=0.5, temperature=2.0),
        base.replace(seed=6, epsilon=2.0, beta=3.0, grad_term="raw", grad_sign=1.0),
        base.replace(seed=7, method="dkd", beta=2.0, ce_weight=0.5, temperature=3.0),
    ]


# MNIST-1D trains on 4000 examples with a generated validation pool, 3200 without one.
PATHS = {
    "stacked": {"batch_size": 128, "val_pool": 0},  # 25 batches of 128: every batch stacked
    "per-member": {"batch_size": 100},  # 40 batches of 100: every batch member by member
    "stacked+tail": {"batch_size": 128},  # 31 batches of 128 stacked, the last 32 per member
}


@pytest.mark.parametrize(
    ("student", "path"),
    [("cnn1d", "stacked"), ("cnn1d", "per-member"), ("cnn1d", "stacked+tail"),
     ("mlp", "per-member")],
)  # fmt: skip
def test_each_member_matches_its_run_alone_on_every_loss_path(student: str, path: str) -> None:
    base = TrainConfig(epochs=1, teacher_epochs=1, warmup=2, **{**TINY_POOLS, **PATHS[path]})
    if student == "mlp":
        base = base.replace(student="mlp", student_width=16)
    cfgs = members(base)
    results = train_population(cfgs)
    for cfg, result in zip(cfgs, results, strict=True):
        alone = train(cfg)
        assert result.error is None, cfg
        assert _same(result.metrics, alone.metrics), (cfg, result.metrics, alone.metrics)
        assert result.history == alone.history, cfg


@pytest.fixture
def native_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Convolutions without oneDNN (its single and grouped kernels sum in different orders)."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.mark.usefixtures("native_convolutions")
def test_image_members_with_other_loss_settings_match_their_runs_alone() -> None:
    """resnet8 on 70 augmented images in batches of 64: the first stacked, the last (6) member
    by member; the members' losses differ in method, epsilon, alpha, beta and temperature."""
    splits = image_splits(train=70)
    base = TrainConfig(dataset="cifar10", teacher="resnet8", student="resnet8", epochs=1,
                       batch_size=64, optimizer="sgd", lr=0.05, warmup=0, device="cpu")  # fmt: skip
    cfgs = [
        base.replace(seed=1, method="kd", temperature=2.0),
        base.replace(seed=2, method="kd", temperature=5.0, kd_weight=1.0),
        base.replace(seed=3, epsilon=0.0),
        base.replace(seed=4, epsilon=2.0, alpha=0.5, beta=2.0, temperature=3.0),
    ]
    assert_image_members_train_alone(cfgs, splits)


def _epoch(
    cfgs: list[TrainConfig], perms: torch.Tensor, x: torch.Tensor, splits: object = None
):  # -> EpochData
    from types import SimpleNamespace

    from dgkd.step import EpochData

    splits = splits or SimpleNamespace(augment=False, inputs=lambda batch, train: batch)
    y = torch.arange(x.shape[0]) % 3
    return EpochData(cfgs, splits, perms, x, y, None, {}, [1.0] * len(cfgs))  # type: ignore[arg-type]


def test_an_epochs_examples_are_gathered_once_only_when_every_members_copy_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """K members' shuffled copies of the training set are gathered up front only within the
    memory bound (a large population on a large dataset would hold K copies); beyond it each
    batch is gathered on its own. The inputs are the same either way."""
    from dgkd import step

    x = torch.randn(10, 3)  # 10 examples of 12 bytes
    g = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(10, generator=g) for _ in range(3)])
    cfgs = [TrainConfig(seed=s) for s in range(3)]
    monkeypatch.setattr(step, "_EPOCH_BYTES", 3 * 10 * 12)  # exactly the three copies
    fits = _epoch(cfgs, perms, x)
    assert fits.xs is not None and torch.equal(fits.xs, x[perms])
    monkeypatch.setattr(step, "_EPOCH_BYTES", 3 * 10 * 12 - 1)
    too_big = _epoch(cfgs, perms, x)
    assert too_big.xs is None
    for batch in (slice(0, 4), slice(4, 10)):
        expected = x[perms[:, batch]]
        assert torch.equal(fits.inputs(batch, []), expected)
        assert torch.equal(too_big.inputs(batch, []), expected)
    monkeypatch.setattr(step, "_EPOCH_BYTES", 0)  # one member: its own run gathers it too
    alone = _epoch(cfgs[:1], perms[:1], x)
    assert alone.xs is not None and torch.equal(alone.xs, x[perms[:1]])


def test_consecutive_members_of_one_loss_family_share_one_kernel_call() -> None:
    """dkd and dgkd share the fused kernel, ce and kd have their own; a population is cut
    where the family changes."""
    from dgkd.step import family

    assert family("dkd") == family("dgkd") == (2, "")
    assert len({family("ce"), family("kd"), family("dkd")}) == 3
    assert family("ce") < family("kd") < family("dkd")
    methods = ["dkd", "dgkd", "ce", "ce", "kd", "dgkd"]
    cfgs = [TrainConfig(seed=k, method=m) for k, m in enumerate(methods)]
    perms = torch.stack([torch.arange(4)] * len(cfgs))
    data = _epoch(cfgs, perms, torch.randn(4, 3))
    assert data.families == [slice(0, 2), slice(2, 4), slice(4, 5), slice(5, 6)]


def test_training_inputs_are_augmented_per_member_with_its_own_generator() -> None:
    """Each member's batch goes through the training transform (augmentation when the data has
    it) with that member's own generator, as in its own run; without augmentation, through the
    training transform once for all."""
    from types import SimpleNamespace

    calls: list[tuple[bool, object]] = []

    def inputs(batch: torch.Tensor, train: bool, generator: object = None) -> torch.Tensor:
        calls.append((train, generator))
        return batch + 1.0 if train else batch

    x = torch.randn(6, 3)
    perms = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(k))
                         for k in range(3)])  # fmt: skip
    cfgs = [TrainConfig(seed=k) for k in range(3)]
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    data = _epoch(cfgs, perms, x, SimpleNamespace(augment=True, inputs=inputs))
    assert torch.equal(data.inputs(slice(1, 5), gens), x[perms[:, 1:5]] + 1.0)
    assert calls == [(True, g) for g in gens]
    calls.clear()
    data = _epoch(cfgs, perms, x, SimpleNamespace(augment=False, inputs=inputs))
    assert torch.equal(data.inputs(slice(1, 5), gens), x[perms[:, 1:5]] + 1.0)
    assert calls == [(True, None)]


def test_a_family_without_a_teacher_never_runs_the_teacher_model() -> None:
    """A population's ce members get no teacher logits, even on image data where the teacher
    runs per batch for the distilling members."""

    def teacher(batch: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher ran for a family that does not need it")

    cfgs = [TrainConfig(seed=0, method="ce"), TrainConfig(seed=1, method="ce")]
    data = _epoch(cfgs, torch.stack([torch.arange(4)] * 2), torch.randn(4, 3))
    x = data.inputs(slice(0, 4), [])
    assert data.teacher(0, slice(0, 4), x, teacher) == (None, None)  # type: ignore[arg-type]
