"""The end-of-epoch evaluation: val_acc, val_ece and train_nc1 in every epoch's history row,
measured without changing the training (eval mode, no random numbers)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import dgkd.loop
from dgkd import metrics
from dgkd.config import TrainConfig
from dgkd.epoch_metrics import EPOCH_METRICS, epoch_metrics
from dgkd.loop import predict, resolve_device
from dgkd.train import splits_for, train, train_population


def test_every_epoch_records_the_curves_and_the_last_matches_the_final_metrics(
    tiny: TrainConfig,
) -> None:
    result = train(tiny)
    assert [row["epoch"] for row in result.history] == [1.0, 2.0]
    for row in result.history:
        assert set(EPOCH_METRICS) <= row.keys()
        assert all(math.isfinite(row[k]) for k in EPOCH_METRICS)
    # The same model, inputs and metric as the final ones (bit for bit on a CPU, where the
    # stacked forward is the single model's; within rounding on a GPU).
    last = result.history[-1]
    assert last["train_nc1"] == pytest.approx(result.metrics["train_nc1"], rel=1e-6)
    assert last["val_acc"] == result.metrics["val_acc"]
    splits = splits_for(tiny)
    assert result.model is not None
    device = resolve_device(tiny.device)
    logits, _ = predict(result.model, splits, splits.val_x, device=device, batch_size=1024)
    assert last["val_ece"] == pytest.approx(metrics.ece(logits, splits.val_y.to(device)), rel=1e-6)


def test_the_evaluation_leaves_the_training_unchanged(tiny: TrainConfig, monkeypatch) -> None:
    cfgs = [tiny.replace(seed=s, method=m) for s, m in ((0, "dgkd"), (1, "ce"))]
    with_curves = train_population(cfgs)

    def val_acc_only(predict, val, train, num_classes):  # what the loop did before
        logits, _ = predict(val[0])
        return [{"val_acc": metrics.accuracy(row, val[1])} for row in logits]

    monkeypatch.setattr(dgkd.loop, "epoch_metrics", val_acc_only)
    without = train_population(cfgs)
    for a, b in zip(with_curves, without, strict=True):
        drop = ("duration_s",)
        assert {k: v for k, v in a.metrics.items() if k not in drop} == {
            k: v for k, v in b.metrics.items() if k not in drop
        }
        for ra, rb in zip(a.history, b.history, strict=True):
            curves = ("val_ece", "train_nc1")
            assert {k: v for k, v in ra.items() if k not in curves} == {
                k: v for k, v in rb.items() if k not in curves
            }


def _fake_predict(feats: torch.Tensor, logits: torch.Tensor):
    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[:, : len(x)], feats[:, : len(x)]

    return run


def test_non_finite_features_give_nan_and_no_validation_split_gives_nan_accuracy() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 3
    feats = torch.randn(2, 30, 4, generator=gen) + 3 * torch.nn.functional.one_hot(y, 4)
    feats[1, 5, 0] = float("nan")  # member 1 diverged this epoch
    logits = torch.randn(2, 30, 3, generator=gen)
    x = torch.zeros(30, 1)
    run = _fake_predict(feats, logits)
    rows = epoch_metrics(run, (x[:10], y[:10]), (x, y), 3)
    assert rows[0]["train_nc1"] == metrics.nc1(feats[0], y, 3)
    assert math.isnan(rows[1]["train_nc1"])
    assert rows[1]["val_ece"] == metrics.ece(logits[1, :10], y[:10])
    empty = epoch_metrics(run, (x[:0], y[:0]), (x, y), 3)
    assert math.isnan(empty[0]["val_acc"]) and math.isnan(empty[0]["val_ece"])
    assert empty[0]["train_nc1"] == rows[0]["train_nc1"]


def test_the_helper_is_pure_evaluation(tiny: TrainConfig) -> None:
    from dgkd.models import build_population

    splits = splits_for(tiny)
    pop = build_population(
        "cnn1d",
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        width=8,
        seeds=[0, 1],
    )
    pop.train()
    before = {k: v.clone() for k, v in pop.state_dict().items()}
    run = functools.partial(predict, pop, splits, device=torch.device("cpu"), batch_size=512)
    rng = torch.get_rng_state()
    val, train_split = (splits.val_x, splits.val_y), (splits.train_x, splits.train_y)
    rows = epoch_metrics(run, val, train_split, splits.num_classes)
    assert len(rows) == 2 and rows[0] != rows[1]
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in pop.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(v, before[k]), k


def test_eval_every_evaluates_only_those_epochs_and_the_last_and_changes_nothing_else(
    tiny: TrainConfig,
) -> None:
    every = train(tiny.replace(epochs=5))
    thinned = train(tiny.replace(epochs=5, eval_every=2))
    assert [r["epoch"] for r in thinned.history] == [1, 2, 3, 4, 5]
    for a, b in zip(every.history, thinned.history, strict=True):
        evaluated = b["epoch"] in (2, 4, 5)  # every 2nd epoch, and the last
        for key in EPOCH_METRICS:
            assert (b[key] == a[key]) if evaluated else math.isnan(b[key]), (b["epoch"], key)
        assert {k: v for k, v in a.items() if k not in EPOCH_METRICS} == {
            k: v for k, v in b.items() if k not in EPOCH_METRICS
        }  # the training is the same, epoch by epoch
    drop = ("duration_s",)
    assert {k: v for k, v in every.metrics.items() if k not in drop} == {
        k: v for k, v in thinned.metrics.items() if k not in drop
    }


def test_eval_every_saves_checkpoints_at_evaluated_epochs(tiny: TrainConfig, tmp_path) -> None:
    """A state is written once a multiple of checkpoint_every has passed, at the first evaluated
    epoch from there (the report a Tune trial attaches it to)."""
    from dgkd.checkpoint import Checkpoint

    cfg = tiny.replace(epochs=9, checkpoint_every=2, eval_every=3)
    saved: list[int | None] = []
    ckpt = Checkpoint(tmp_path)
    train(cfg, report=lambda epoch, row: saved.append(ckpt.saved_epoch), checkpoint=ckpt)
    assert sorted({s for s in saved if s is not None}) == [3, 6]  # not 9: the run ends there
