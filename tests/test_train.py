"""Tests for dgkd.train: config validation, overrides, the training loop and its guarantees."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from contracts import FINAL_METRICS
from fakes import TINY_POOL_ARGS, TINY_POOLS, image_splits

from dgkd.config import METHODS, ConfigError, TrainConfig, coerce, parse_overrides
from dgkd.data import Splits
from dgkd.loop import DivergedError, distill_loss
from dgkd.losses import dgkd_loss, kd_loss
from dgkd.teacher import teacher_config
from dgkd.train import TrainResult, train

SHARES = (
    "val_acc", "test_acc", "published_test_acc", "test_agreement", "test_ece", "train_acc",
    "teacher_test_acc", "teacher_published_test_acc",
)  # fmt: skip


def _same_run(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, bit for bit, except the wall-clock duration."""
    return {k: v for k, v in a.items() if k != "duration_s"} == {
        k: v for k, v in b.items() if k != "duration_s"
    }


# --- TrainConfig -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"method": "foo"}, "method"),
        ({"epochs": 0}, "epochs"),
        ({"teacher_epochs": 0}, "teacher_epochs"),
        ({"milestones": (180, 150)}, "milestones"),
        ({"milestones": (150, 150)}, "milestones"),
        ({"schedule": "multistep"}, "milestones"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"alpha": -1.0}, "alpha"),
        ({"epsilon": float("inf")}, "epsilon"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"grad_term": "log"}, "grad_term"),
        ({"grad_sign": 0.5}, "grad_sign"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"student": "resnet9"}, "student"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"gamma": 0.0}, "gamma"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": "3"}, "epochs"),
        ({"amp": 1}, "amp"),
    ],
)
def test_config_errors_name_the_field(changes, field) -> None:
    with pytest.raises(ConfigError, match=rf"^{field} must be") as info:
        TrainConfig().replace(**changes)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=rf"^{field} must be"):
        TrainConfig(**changes)


def test_unknown_field_in_replace() -> None:
    with pytest.raises(ConfigError, match="unknown config field 'epsilonn'"):
        TrainConfig().replace(epsilonn=1.0)


def test_config_round_trips_through_dict_and_json() -> None:
    cfg = TrainConfig(schedule="multistep", milestones=(3, 7), epochs=9, alpha=0.5)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["milestones"] == [3, 7]
    assert TrainConfig(**data) == cfg


def test_parse_overrides_types() -> None:
    got = parse_overrides(
        [
            "epochs=3",
            "lr=1e-3",
            "alpha= 0.5",
            "amp=true",
            "download=no",
            "milestones=150,180,210",
            "grad_sign=1",
            "student-width=4",
            "dataset=cifar100",
        ]
    )
    assert got == {
        "epochs": 3,
        "lr": 0.001,
        "alpha": 0.5,
        "amp": True,
        "download": False,
        "milestones": (150, 180, 210),
        "grad_sign": 1.0,
        "student_width": 4,
        "dataset": "cifar100",
    }
    assert type(got["epochs"]) is int and type(got["grad_sign"]) is float
    assert parse_overrides([]) == {}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("bogus=1", "unknown config field 'bogus'; valid fields: dataset, "),
        ("epochs", "--set expects key=value"),
        ("=3", "--set expects key=value"),
        ("epochs=abc", "epochs must be of type int, got 'abc'"),
        ("epochs=2.5", "epochs must be of type int"),
        ("amp=maybe", "amp must be of type bool"),
        ("lr=fast", "lr must be of type float"),
        ("milestones=150,x", "milestones must be of type list of ints"),
    ],
)
def test_parse_overrides_errors(item, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert message in str(info.value)


def test_coerce_toml_values() -> None:
    assert coerce("epochs", 3.0) == 3 and coerce("lr", 1) == 1.0
    assert coerce("milestones", [150, 180]) == (150, 180)
    assert coerce("amp", True) is True
    with pytest.raises(ConfigError, match="epochs"):
        coerce("epochs", 2.5)


def test_dkd_cifar100_recipe_is_expressible() -> None:
    # DKD's CIFAR-100 setup (resnet32x4 -> resnet8x4); constructed, not trained.
    recipe = {
        "dataset": "cifar100",
        "teacher": "resnet32x4",
        "student": "resnet8x4",
        "teacher_width": 0,
        "student_width": 0,
        "method": "dkd",
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "multistep",
        "milestones": (150, 180, 210),
        "gamma": 0.1,
        "epochs": 240,
        "teacher_epochs": 240,
        "batch_size": 64,
        "warmup": 20,
    }
    cfg = TrainConfig().replace(**recipe)
    for key, value in recipe.items():
        assert getattr(cfg, key) == value
    # The same recipe as command-line overrides.
    items = [
        f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in recipe.items()
    ]
    assert TrainConfig().replace(**parse_overrides(items)) == cfg
    # The teacher is trained with the same recipe (CE), keeping the milestones it reaches.
    tcfg = teacher_config(cfg)
    assert (tcfg.method, tcfg.student, tcfg.epochs) == ("ce", "resnet32x4", 240)
    assert tcfg.milestones == (150, 180, 210) and tcfg.schedule == "multistep"
    short = teacher_config(cfg.replace(teacher_epochs=160))
    assert short.milestones == (150,)
    assert teacher_config(cfg.replace(teacher_epochs=100)).schedule == "constant"


# --- distill_loss ------------------------------------------------------------------------------


def test_distill_loss_is_ce_plus_weighted_distillation() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    ce = torch.nn.functional.cross_entropy(zs, y)
    cfg = TrainConfig(method="dgkd", ce_weight=0.5)
    loss, terms = distill_loss(cfg, zs, zt, y, 0.25)
    dg = dgkd_loss(zs, zt, y, alpha=cfg.alpha, beta=cfg.beta, epsilon=cfg.epsilon,
                   temperature=cfg.temperature)  # fmt: skip
    torch.testing.assert_close(loss, 0.5 * ce + 0.25 * dg["loss"])
    assert {"ce", "tckd", "nckd", "grad_mse", "grad_cos"} <= terms.keys()
    loss, terms = distill_loss(cfg.replace(method="kd", kd_weight=2.0), zs, zt, y, 0.25)
    torch.testing.assert_close(loss, 0.5 * ce + 0.25 * 2.0 * kd_loss(zs, zt, temperature=4.0))
    loss, terms = distill_loss(cfg.replace(method="ce"), zs, None, y, 0.25)
    torch.testing.assert_close(loss, 0.5 * ce)
    assert set(terms) == {"ce"}


# --- train -------------------------------------------------------------------------------------


def test_every_method_runs_with_finite_final_metrics(tiny: TrainConfig) -> None:
    teacher_acc = set()
    for method in METHODS:
        result = train(tiny.replace(method=method))
        m = result.metrics
        assert set(FINAL_METRICS) <= m.keys(), method
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.values()), (method, m)
        assert all(0.0 <= m[k] <= 1.0 for k in SHARES), method
        assert m["epochs"] == 2.0 and len(result.history) == 2
        assert m["train_loss"] == result.history[-1]["train_loss"]
        assert m["test_acc"] > 0.15, method  # 10 classes: two epochs beat chance
        assert m["train_nc1"] > 0 and m["test_kl_to_teacher"] > 0
        teacher_acc.add(m["teacher_test_acc"])
        terms = {"ce": {"ce"}, "kd": {"ce", "kd"}}.get(method, {"ce", "tckd", "nckd", "grad_mse"})
        assert terms <= result.history[0].keys(), method
    assert len(teacher_acc) == 1  # one shared teacher


def test_report_called_once_per_epoch(tiny: TrainConfig) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    result = train(tiny.replace(epochs=3), report=lambda epoch, row: calls.append((epoch, row)))
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    assert all(0.0 <= row["val_acc"] <= 1.0 and "train_loss" in row for _, row in calls)
    assert calls[-1][1]["val_acc"] == result.metrics["val_acc"]  # last epoch, not best


def test_exception_in_report_stops_training(tiny: TrainConfig) -> None:
    class Prune(Exception):
        pass

    epochs: list[int] = []

    def report(epoch: int, row: dict[str, float]) -> None:
        epochs.append(epoch)
        if epoch == 2:
            raise Prune

    with pytest.raises(Prune):
        train(tiny.replace(epochs=5), report=report)
    assert epochs == [1, 2]


def test_same_seed_same_metrics_in_process(tiny: TrainConfig) -> None:
    a, b = train(tiny), train(tiny)
    assert _same_run(a.metrics, b.metrics)
    assert a.history == b.history
    other = train(tiny.replace(seed=1))
    assert other.metrics["train_loss"] != a.metrics["train_loss"]
    assert not _same_run(other.metrics, a.metrics)


def test_same_seed_same_metrics_in_fresh_process(tiny: TrainConfig) -> None:
    want = train(tiny).metrics
    exe = shutil.which("dgkd-train", path=str(Path(sys.executable).parent))
    assert exe, "the dgkd-train console script is not installed next to this Python"
    proc = subprocess.run(
        [exe, "--json", "--set", "epochs=2", "--set", "teacher_epochs=2", *TINY_POOL_ARGS],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["metrics"]
    assert set(got) == set(want)
    assert _same_run(got, want)


def test_dgkd_with_epsilon_zero_is_dkd(tiny: TrainConfig) -> None:
    dkd = train(tiny.replace(method="dkd"))
    dgkd = train(tiny.replace(method="dgkd", epsilon=0.0))
    assert _same_run(dkd.metrics, dgkd.metrics)
    assert not _same_run(dkd.metrics, train(tiny.replace(method="dgkd")).metrics)


@pytest.mark.parametrize(
    "changes",
    [
        {"lr": 1e30, "teacher_lr": 0.01},  # the teacher trains normally; the student blows up
        {"optimizer": "sgd", "grad_term": "raw", "epsilon": 1e30, "teacher_width": 16},
    ],
    ids=["huge_lr", "raw_huge_epsilon"],
)
def test_non_finite_loss_raises_diverged(tiny: TrainConfig, changes) -> None:
    cfg = tiny.replace(**changes)
    teacher_cfg = teacher_config(cfg)
    # the teacher trains normally, at teacher_lr or else the default lr, whatever the student does
    assert teacher_cfg.lr == changes.get("teacher_lr", TrainConfig().lr)
    assert teacher_cfg.epsilon == cfg.epsilon
    with pytest.raises(DivergedError) as info:
        train(cfg)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.epoch == 1 and err.step >= 1 and not math.isfinite(err.value)
    assert f"epoch {err.epoch}, step {err.step}" in str(err)


def test_warmup_scales_distillation_weight(tiny: TrainConfig) -> None:
    # With warmup=4 the distillation weight is 1/4 in epoch 1 and 2/4 in epoch 2, so each
    # epoch's mean loss is mean CE + w * (alpha mean TCKD + beta mean NCKD).
    cfg = tiny.replace(method="dkd", warmup=4, alpha=1.0, beta=8.0)
    history = train(cfg).history
    for row, weight in zip(history, (0.25, 0.5), strict=True):
        rebuilt = row["ce"] + weight * (row["tckd"] + 8.0 * row["nckd"])
        assert row["train_loss"] == pytest.approx(rebuilt, rel=1e-5)
        full = row["ce"] + (row["tckd"] + 8.0 * row["nckd"])
        assert row["train_loss"] != pytest.approx(full, rel=1e-3)
    # warmup=0: full weight from the first epoch.
    row = train(cfg.replace(warmup=0)).history[0]
    assert row["train_loss"] == pytest.approx(row["ce"] + row["tckd"] + 8 * row["nckd"], rel=1e-5)


def test_no_validation_split(tiny: TrainConfig) -> None:
    rows: list[dict[str, float]] = []
    cfg = tiny.replace(val_pool=0, val_fraction=0.0, teacher_width=16)
    result = train(cfg, report=lambda epoch, row: rows.append(row))
    assert math.isnan(result.metrics["val_acc"])
    assert math.isfinite(result.metrics["test_acc"])
    assert len(rows) == 2 and all(math.isnan(row["val_acc"]) for row in rows)


# --- the protocol: last epoch, the test split once, validation and test on generated pools ----


@dataclasses.dataclass
class _Recorded:
    result: TrainResult
    splits: Splits
    calls: list[tuple[str, object, torch.Tensor]]  # (module, model, inputs) of every predict
    teacher_forwards: int  # forward passes of the teacher model during the run
    wall_s: float  # the run's wall time, measured around train()


def _recorded_run(cfg: TrainConfig) -> _Recorded:
    """Train ``cfg`` recording every evaluation pass (by the loop and by the final metrics)."""
    import dgkd.loop
    import dgkd.train

    calls: list[tuple[str, object, torch.Tensor]] = []
    seen: list[Splits] = []
    with pytest.MonkeyPatch.context() as mp:
        for module in (dgkd.loop, dgkd.train):
            real = module.predict

            def recorder(model, splits, x, *, _real=real, _name=module.__name__, **kw):
                calls.append((_name, model, x))
                return _real(model, splits, x, **kw)

            mp.setattr(module, "predict", recorder)
        real_splits = dgkd.train.splits_for
        mp.setattr(dgkd.train, "splits_for", lambda c: seen.append(real_splits(c)) or seen[-1])
        forwards: list[int] = []
        real_teacher = dgkd.train.load_teacher

        def load_teacher(*args, **kwargs):
            bundle = real_teacher(*args, **kwargs)
            hooks.append(bundle.model.register_forward_hook(lambda *_: forwards.append(1)))
            return bundle

        hooks: list = []
        mp.setattr(dgkd.train, "load_teacher", load_teacher)
        start = time.perf_counter()
        try:
            result = train(cfg)
        finally:
            for hook in hooks:
                hook.remove()
        wall = time.perf_counter() - start
    return _Recorded(result, seen[0], calls, len(forwards), wall)


# A validation pool twice the per-epoch prefix (patched down from EPOCH_VAL_EXAMPLES, so that
# the pool stays small), so that the per-epoch and the final val_acc read different examples.
_PREFIX = 200


def _non_monotone(monkeypatch: pytest.MonkeyPatch) -> _Recorded:
    """A run whose (per-epoch) validation accuracy peaks before the last epoch (a constant, high
    learning rate; the first of a few seeds where it does), so 'last' and 'best' differ."""
    import dgkd.data

    monkeypatch.setattr(dgkd.data, "EPOCH_VAL_EXAMPLES", _PREFIX)
    base = TrainConfig(epochs=4, teacher_epochs=2, lr=0.05, schedule="constant",
                       val_pool=2 * _PREFIX, test_pool=400)  # fmt: skip
    train(base.replace(epochs=1))  # the teacher trains here, not in the recorded runs
    for seed in range(4):
        run = _recorded_run(base.replace(seed=seed))
        vals = [row["val_acc"] for row in run.result.history]
        if max(vals) > vals[-1]:
            return run
    pytest.fail("no seed gave a validation accuracy that is not highest at the last epoch")


def test_protocol_last_epoch_test_split_once_validation_on_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One recorded run, every protocol rule checked on it (one test, so that a rule broken
    anywhere in the run is caught by the test that ran it)."""
    from dgkd import metrics
    from dgkd.loop import predict

    run = _non_monotone(monkeypatch)
    result, splits, student = run.result, run.splits, run.result.model
    assert student is not None
    assert set(FINAL_METRICS) <= result.metrics.keys()

    # The final metrics are the last epoch's, not the best epoch's: the per-epoch val_acc (on
    # the pool's prefix) of the returned model is the last row's, and not the highest.
    kw = {"device": torch.device("cpu"), "batch_size": 1024}
    history = result.history
    assert [row["epoch"] for row in history] == [1.0, 2.0, 3.0, 4.0]
    vals = [row["val_acc"] for row in history]
    prefix_logits, _ = predict(student, splits, splits.val_x[:_PREFIX], **kw)
    assert metrics.accuracy(prefix_logits, splits.val_y[:_PREFIX]) == vals[-1] != max(vals)
    losses = [row["train_loss"] for row in history]
    assert len(set(losses)) == 4  # so that only the last one matches
    assert result.metrics["train_loss"] == losses[-1]
    assert result.metrics["epochs"] == 4.0
    assert 0 < result.duration_s == result.metrics["duration_s"] <= run.wall_s

    # ... measured on the returned (final) model, each split for its own metric: val_acc on the
    # whole validation pool, the test metrics on the test pool, published_test_acc on the
    # published 1000.
    test_logits, _ = predict(student, splits, splits.test_x, **kw)
    train_logits, train_feats = predict(student, splits, splits.train_x, **kw)
    val_logits, _ = predict(student, splits, splits.val_x, **kw)
    published_logits, _ = predict(student, splits, splits.published_test_x, **kw)
    m = result.metrics
    assert m["val_acc"] == metrics.accuracy(val_logits, splits.val_y) != vals[-1]
    assert m["test_acc"] == metrics.accuracy(test_logits, splits.test_y)
    assert m["test_ece"] == metrics.ece(test_logits, splits.test_y)
    assert m["published_test_acc"] == metrics.accuracy(published_logits, splits.published_test_y)
    assert m["train_acc"] == metrics.accuracy(train_logits, splits.train_y)
    assert m["train_nc1"] == metrics.nc1(train_feats, splits.train_y, splits.num_classes)
    values = {m["val_acc"], m["test_acc"], m["published_test_acc"], m["train_acc"]}
    assert len(values) == 4  # four different splits

    def passes(x: torch.Tensor) -> list[tuple[str, object]]:
        return [
            (mod, model)
            for mod, model, seen in run.calls
            if seen.shape == x.shape and torch.equal(seen.cpu(), x)
        ]

    # The test pool and the published test set are evaluated once, at the end, on the student.
    assert passes(splits.test_x) == [("dgkd.train", student)]
    assert passes(splits.published_test_x) == [("dgkd.train", student)]
    # The loop validates on the pool's prefix once per epoch (and never sees a test split); the
    # whole pool is evaluated once, at the end.
    assert [mod for mod, _ in passes(splits.val_x[:_PREFIX])] == ["dgkd.loop"] * 4
    assert passes(splits.val_x) == [("dgkd.train", student)]

    # Un-augmented data: the teacher's cached logits are used, the teacher itself never runs.
    assert run.teacher_forwards == 0

    # Training uses the whole published training set; validation and test are generated pools,
    # disjoint from it, from the published test set and from each other.
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (4000, 400, 400)
    assert len(splits.published_test_y) == 1000
    rows = [{r.numpy().tobytes() for r in x} for x in
            (splits.train_x, splits.val_x, splits.test_x, splits.published_test_x)]  # fmt: skip
    assert len(set().union(*rows)) == sum(map(len, rows)) == 5800


def test_val_pool_zero_is_the_old_protocol(tiny: TrainConfig) -> None:
    """val_pool = test_pool = 0: validation carved from the training set (val_fraction), the
    published 1000 as the test split, so published_test_acc is test_acc; every epoch validates
    on the whole carve, so the last row's val_acc is the final one."""
    from dgkd import metrics
    from dgkd.loop import predict
    from dgkd.train import splits_for

    cfg = tiny.replace(val_pool=0, test_pool=0, val_fraction=0.2)
    result = train(cfg)
    splits, student, m = splits_for(cfg), result.model, result.metrics
    assert student is not None
    assert (len(splits.train_y), len(splits.val_y), len(splits.test_y)) == (3200, 800, 1000)
    kw = {"device": torch.device("cpu"), "batch_size": 1024}
    val_logits, _ = predict(student, splits, splits.val_x, **kw)
    test_logits, _ = predict(student, splits, splits.test_x, **kw)
    assert (
        m["val_acc"] == metrics.accuracy(val_logits, splits.val_y) == result.history[-1]["val_acc"]
    )
    assert m["published_test_acc"] == m["test_acc"] == metrics.accuracy(test_logits, splits.test_y)
    assert m["teacher_published_test_acc"] == m["teacher_test_acc"]
    pooled = train(tiny).metrics  # the same published test set, another training set (4000)
    assert pooled["published_test_acc"] != pooled["test_acc"]
    assert pooled["train_loss"] != m["train_loss"]


def test_image_data_report_published_test_acc_as_test_acc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the test split is the published one, published_test_acc is test_acc (and the
    teacher's alike), from one pass over the test split, not two."""
    import dgkd.train
    from dgkd.loop import predict
    from dgkd.models import build_model
    from dgkd.teacher import TeacherBundle
    from dgkd.train import evaluate

    splits = image_splits(train=16)
    assert splits.published_is_test  # not given: the test split
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    student, teacher = (build_model("resnet8", num_classes=10, input_shape=(3, 32, 32)).eval()
                        for _ in range(2))  # fmt: skip
    kw = {"device": cpu, "batch_size": 64}
    test_logits = predict(teacher, splits, splits.test_x, **kw)[0]
    train_logits = predict(teacher, splits, splits.train_x, **kw)[0]
    bundle = TeacherBundle(teacher, train_logits, test_logits, test_logits, "key", "test")
    passes: list[torch.Tensor] = []
    real = dgkd.train.predict
    monkeypatch.setattr(
        dgkd.train, "predict", lambda m, s, x, **k: passes.append(x) or real(m, s, x, **k)
    )
    cfg = TrainConfig(dataset="cifar10", teacher="resnet8", student="resnet8", device="cpu")
    m = evaluate(cfg, splits, student, bundle, device=cpu)
    assert m["published_test_acc"] == m["test_acc"]
    assert m["teacher_published_test_acc"] == m["teacher_test_acc"]
    assert sum(x is splits.test_x for x in passes) == 1


@pytest.mark.parametrize(
    ("method", "classes", "refused"),
    [("dkd", 2, True), ("dgkd", 2, True), ("dkd", 3, False), ("kd", 2, False), ("ce", 2, False)],
)
def test_dkd_needs_three_classes(
    monkeypatch: pytest.MonkeyPatch, method: str, classes: int, refused: bool
) -> None:
    """Checked before the teacher is loaded (here replaced by a stop)."""
    import dgkd.train

    class Reached(Exception):
        pass

    def splits_for(cfg: TrainConfig) -> Splits:
        x, y = torch.zeros(4, 40), torch.arange(4) % classes
        return Splits("toy", classes, (40,), x, y, x, y, x, y)

    def load_teacher(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(dgkd.train, "splits_for", splits_for)
    monkeypatch.setattr(dgkd.train, "load_teacher", load_teacher)
    cfg = TrainConfig(method=method, epochs=1)
    if refused:
        with pytest.raises(ConfigError) as info:
            train(cfg)
        assert str(info.value) == (
            f"method {method} needs at least 3 classes (mnist1d has {classes}): NCKD is "
            "undefined; use kd or ce"
        )
    else:
        with pytest.raises(Reached):
            train(cfg)


def test_a_stopped_member_keeps_its_config_and_history_and_the_others_finish() -> None:
    """train_population: member 0 is pruned after epoch 2 (its report raises); member 1 runs on
    and gets its final metrics, as it would alone."""
    from dgkd.train import train_population

    class Prune(Exception):
        pass

    def report(i: int, epoch: int, row: dict[str, float]) -> None:
        if i == 0 and epoch == 2:
            raise Prune

    base = TrainConfig(epochs=3, teacher_epochs=2, **TINY_POOLS)
    cfgs = [base.replace(seed=1), base.replace(seed=2)]
    stopped, done = train_population(cfgs, report=report)
    assert isinstance(stopped.error, Prune)
    assert stopped.config == cfgs[0] and stopped.metrics == {} and stopped.model is None
    assert [row["epoch"] for row in stopped.history] == [1.0, 2.0]
    assert done.error is None and done.config == cfgs[1] and done.model is not None
    assert [row["epoch"] for row in done.history] == [1.0, 2.0, 3.0]
    assert done.metrics["train_loss"] == done.history[-1]["train_loss"]
    alone = train(cfgs[1])
    assert {k: v for k, v in alone.metrics.items() if k != "duration_s"} == {
        k: v for k, v in done.metrics.items() if k != "duration_s"
    }
