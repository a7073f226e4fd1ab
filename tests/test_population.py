"""Tests for train_population: member i is the same experiment as train(cfgs[i]).

Equivalence with ``train`` per member, independence from the neighbours, determinism across
processes, pruning and divergence of single members, automatic splitting into populations,
the per-member optimizer, and populations of every model family.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from fakes import assert_image_members_train_alone, image_splits

from dgkd.config import ConfigError, TrainConfig
from dgkd.loop import DivergedError, check_population
from dgkd.models import Population
from dgkd.optim import PopulationOptimizer, build_optimizer
from dgkd.train import max_population, population_groups, train, train_population


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, bit for bit, except the wall-clock duration."""
    drop = ("duration_s",)
    return {k: v for k, v in a.items() if k not in drop} == {
        k: v for k, v in b.items() if k not in drop
    }


def _mixed(tiny: TrainConfig) -> list[TrainConfig]:
    """Members differing in everything a population allows: seed, every loss setting, lr, wd."""
    return [
        tiny.replace(seed=1, method="ce"),
        tiny.replace(seed=2, method="kd", temperature=2.0, kd_weight=0.5, warmup=0),
        tiny.replace(seed=3, method="dkd", beta=2.0, ce_weight=0.5),
        tiny.replace(seed=4, grad_term="raw", grad_sign=1.0, epsilon=0.01, alpha=0.5),
        tiny.replace(seed=5, lr=0.003, temperature=3.0, warmup=1),
        tiny.replace(seed=6, weight_decay=1e-3),  # another teacher (it shares the weight decay)
    ]


def test_each_member_is_its_own_train_run(tiny: TrainConfig) -> None:
    cfgs = _mixed(tiny.replace(epochs=1))
    results = train_population(cfgs)
    assert [r.config for r in results] == cfgs
    for cfg, result in zip(cfgs, results, strict=True):
        alone = train(cfg)
        assert result.error is None and result.model is not None
        assert _same(result.metrics, alone.metrics), cfg
        assert result.history == alone.history, cfg
        for key, value in alone.model.state_dict().items():  # type: ignore[union-attr]
            assert torch.equal(result.model.state_dict()[key], value), key


def test_a_member_does_not_depend_on_its_neighbours(tiny: TrainConfig) -> None:
    seeds = [tiny.replace(seed=s) for s in range(8)]
    beside = train_population(seeds)[3]
    alone = train_population([seeds[3]])[0]
    assert _same(beside.metrics, alone.metrics) and beside.history == alone.history
    assert _same(train(seeds[3]).metrics, alone.metrics)
    assert not _same(beside.metrics, train_population(seeds)[4].metrics)


def test_train_is_a_population_of_one(tiny: TrainConfig) -> None:
    calls: list[tuple] = []
    result = train(tiny, report=lambda epoch, row: calls.append((epoch, row["val_acc"])))
    (member,) = train_population([tiny])
    assert _same(result.metrics, member.metrics)
    assert [epoch for epoch, _ in calls] == [1, 2]
    assert calls[-1][1] == member.metrics["val_acc"]


_CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from dgkd.config import ConfigError, TrainConfig
from dgkd.train import train_population
cfgs = [TrainConfig(epochs=2, teacher_epochs=2, val_pool=200, test_pool=400, seed=s, method=m)
        for s, m in ((0, "dgkd"), (1, "ce"), (2, "kd"))]
print(json.dumps([r.metrics for r in train_population(cfgs)]))
"""


def test_same_population_same_metrics_in_a_fresh_process(tiny: TrainConfig) -> None:
    cfgs = [tiny.replace(seed=s, method=m) for s, m in ((0, "dgkd"), (1, "ce"), (2, "kd"))]
    want = [r.metrics for r in train_population(cfgs)]
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(_same(g, w) for g, w in zip(got, want, strict=True))


def test_configs_that_cannot_share_are_split_into_populations(tiny: TrainConfig) -> None:
    cfgs = [
        tiny.replace(seed=0),
        tiny.replace(seed=1, student_width=12),  # another architecture
        tiny.replace(seed=2),
        tiny.replace(seed=3, lr=0.03),  # teacher_lr=0: the teacher trains at this lr
        tiny.replace(seed=4, lr=0.03, teacher_lr=0.02),
        tiny.replace(seed=5, teacher_lr=0.02),
    ]
    assert population_groups(cfgs) == [[0, 2], [1], [3], [4, 5]]
    results = train_population(cfgs)
    for cfg, result in zip(cfgs, results, strict=True):
        assert result.config == cfg and _same(result.metrics, train(cfg).metrics)
    with pytest.raises(ValueError, match="must share student_width"):
        check_population(cfgs[:2])


def test_a_population_above_the_cap_trains_as_several_with_the_same_results(
    tiny: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the cap, members train in consecutive populations of near-equal size, one after
    another; each member is still its own run, and the results keep the caller's order."""
    import dgkd.train

    cfgs = [tiny.replace(seed=s, epochs=1) for s in (0, 1, 9, 2, 3, 4)]
    cfgs[2] = cfgs[2].replace(student_width=12)  # a population of its own
    trained: list[list[int]] = []  # the seeds of each population, in training order
    real = dgkd.train._train_population

    def spy(members: list[TrainConfig], **kw):
        trained.append([c.seed for c in members])
        return real(members, **kw)

    monkeypatch.setattr(dgkd.train, "_train_population", spy)
    monkeypatch.setenv("DGKD_MAX_POPULATION", "0")  # no cap
    whole = train_population(cfgs)
    assert trained == [[0, 1, 2, 3, 4], [9]]
    trained.clear()
    monkeypatch.setenv("DGKD_MAX_POPULATION", "2")
    assert population_groups(cfgs) == [[0, 1], [3, 4], [5], [2]]
    cut = train_population(cfgs)
    assert trained == [[0, 1], [2, 3], [4], [9]]
    assert [r.config for r in cut] == cfgs
    for a, b in zip(cut, whole, strict=True):
        assert _same(a.metrics, b.metrics) and a.history == b.history


def test_a_cpu_caps_populations_by_their_members_activations(
    tiny: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DGKD_MAX_POPULATION", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert max_population(tiny, cpu) == 8  # width 24: fastest at 4-8 (BENCHMARKS.md)
    assert 16 <= max_population(tiny.replace(student_width=8), cpu) <= 24  # fastest at 16
    images = TrainConfig(dataset="cifar10", teacher="resnet8", student="resnet8")
    assert max_population(images, cpu) == 1  # one member's activations exceed the budget
    assert max_population(tiny, cuda) == max_population(images, cuda) == 0  # no cap on a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert population_groups([tiny.replace(seed=s) for s in range(20)]) == [
        list(range(0, 7)),
        list(range(7, 14)),
        list(range(14, 20)),
    ]
    monkeypatch.setenv("DGKD_MAX_POPULATION", "3")  # the user's cap, on any device
    assert max_population(tiny, cpu) == max_population(images, cuda) == 3
    monkeypatch.setenv("DGKD_MAX_POPULATION", "many")
    with pytest.raises(ConfigError, match="DGKD_MAX_POPULATION must be a whole number"):
        population_groups([tiny, tiny.replace(seed=1)])


def test_report_stops_single_members_and_drops_them(tiny: TrainConfig, monkeypatch) -> None:
    class Pruned(Exception):
        pass

    kept: list[list[int]] = []
    select = Population.select

    def spy(self, keep):
        kept.append(list(keep))
        return select(self, keep)

    monkeypatch.setattr(Population, "select", spy)
    rows: dict[int, list[int]] = {}

    def report(i: int, epoch: int, row: dict[str, float]) -> None:
        rows.setdefault(i, []).append(epoch)
        if i in (0, 2) and epoch == 1:
            raise Pruned(i)

    cfgs = [tiny.replace(seed=s, epochs=3) for s in range(4)]
    results = train_population(cfgs, report=report)
    assert kept == [[1, 3]]  # both left the stacked tensors after epoch 1
    assert rows == {0: [1], 1: [1, 2, 3], 2: [1], 3: [1, 2, 3]}
    for i in (0, 2):
        assert isinstance(results[i].error, Pruned) and results[i].metrics == {}
        assert len(results[i].history) == 1 and results[i].model is None
    for i in (1, 3):
        assert results[i].error is None and _same(results[i].metrics, train(cfgs[i]).metrics)
    with pytest.raises(Pruned):  # train() raises what its report raised
        train(cfgs[0], report=lambda epoch, row: report(0, epoch, row))


def test_a_diverging_member_stops_alone(tiny: TrainConfig) -> None:
    cfgs = [tiny.replace(seed=0, lr=1e30, teacher_lr=0.01), tiny.replace(seed=1, teacher_lr=0.01)]
    bad, good = train_population(cfgs)
    assert isinstance(bad.error, DivergedError) and bad.error.epoch == 1
    assert not math.isfinite(bad.error.value) and bad.metrics == {} and bad.history == []
    assert good.error is None and _same(good.metrics, train(cfgs[1]).metrics)
    with pytest.raises(DivergedError) as info:
        train(cfgs[0])
    assert (info.value.epoch, info.value.step) == (bad.error.epoch, bad.error.step)


def test_mlp_members_are_their_own_runs(tiny: TrainConfig) -> None:
    cfgs = [tiny.replace(student="mlp", student_width=16, seed=s, method=m)
            for s, m in ((0, "dgkd"), (1, "ce"))]  # fmt: skip
    for cfg, result in zip(cfgs, train_population(cfgs), strict=True):
        assert _same(result.metrics, train(cfg).metrics)


@pytest.fixture
def native_convolutions(monkeypatch):
    """Convolutions without oneDNN: its single and grouped kernels sum in different orders
    (measured: float32 rounding, amplified to percents in ill-conditioned gradients; the
    single model's own float32 kernel was the one far from float64), the native ones alike."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


@pytest.mark.parametrize("student", ["resnet8", "wrn_16_2"])
def test_image_populations_train_each_member_as_alone(student, native_convolutions) -> None:
    """Augmented images, a teacher forward per member's batch, BatchNorm per member (batches
    of 8 and a last one of 6): each member's run is bitwise its own."""
    splits = image_splits(train=24)
    base = TrainConfig(dataset="cifar10", teacher="resnet8", student=student, epochs=2,
                       batch_size=9, optimizer="sgd", lr=0.05, warmup=1, device="cpu")  # fmt: skip
    cfgs = [base.replace(seed=1), base.replace(seed=2, method="kd"), base.replace(seed=3)]
    assert_image_members_train_alone(cfgs, splits)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_the_optimizer_updates_each_member_as_torch_optim(kind, fused) -> None:
    """Per-member lr and weight decay, each member's update bitwise torch.optim's alone."""
    g = torch.Generator().manual_seed(0)
    cfgs = [TrainConfig(optimizer=kind, lr=0.01 * (k + 1), weight_decay=1e-3 * k) for k in range(3)]
    cfgs[2] = cfgs[2].replace(lr=cfgs[0].lr)  # two members share an lr
    shapes = [(5, 3), (7,), (10,)]
    stacked = [torch.nn.Parameter(torch.randn(3, *s, generator=g)) for s in shapes]
    alone = [[torch.nn.Parameter(p.detach()[k].clone()) for p in stacked] for k in range(3)]
    opt = PopulationOptimizer(cfgs, stacked, torch.device("cpu"), fused=fused)
    refs = [
        build_optimizer(c, ps, c.lr, torch.device("cpu")) for c, ps in zip(cfgs, alone, strict=True)
    ]
    for ref in refs:
        for group in ref.param_groups:
            group["fused"] = fused
    for _ in range(4):
        grads = [torch.randn(3, *s, generator=g) for s in shapes]
        for p, grad in zip(stacked, grads, strict=True):
            p.grad.add_(grad)  # type: ignore[union-attr]
        opt.step([c.lr for c in cfgs])
        for k, ref in enumerate(refs):
            for p, grad in zip(alone[k], grads, strict=True):
                p.grad = grad[k].clone()
            ref.step()
    for k in range(3):
        for p, q in zip(stacked, alone[k], strict=True):
            assert torch.equal(p.detach()[k], q.detach())
    kept = opt.select([2, 0], [cfgs[2], cfgs[0]], [torch.nn.Parameter(p.detach()[[2, 0]])
                                                     for p in stacked])  # fmt: skip
    assert kept.size == 2
