"""The confirm stage: fresh seeds, the plan, confirm.csv, resume after a kill, and the verdict's
statistics against values worked by hand."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dgkd.config import TrainConfig
from dgkd.search.confirm import (
    CONFIRM_FILE,
    VERDICT_FILE,
    confirm_seeds,
    plan_confirm,
    run_confirm,
)
from dgkd.search.records import TrialRecord
from dgkd.search.verdict import judge
from dgkd.study import load_study


@dataclass
class FakeResult:
    metrics: dict[str, float]
    error: Exception | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def fake_metrics(cfg: TrainConfig) -> dict[str, float]:
    """A deterministic function of (epsilon, seed): epsilon 2 is 0.05 better than 0 on every
    seed; the seed moves both by the same amount (what pairing removes)."""
    shift = (cfg.seed % 7) / 100
    gain = 0.025 * cfg.epsilon
    return {
        "val_acc": 0.6 + shift + gain,
        "test_acc": 0.5 + shift + gain,
        "test_agreement": 0.7 + shift,
        "test_kl_to_teacher": 1.0 - shift,
        "test_ece": 0.1,
        "train_nc1": 2.0 + shift - gain,
    }


class FakeTrainer:
    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, cfgs: list[TrainConfig]) -> list[FakeResult]:
        self.calls.append([c.seed for c in cfgs])
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # killed mid-stage
        return [FakeResult(fake_metrics(c)) for c in cfgs]


def records() -> list[TrialRecord]:
    points = [(0, 0.0, 0.60), (1, 2.0, 0.66), (2, 1.0, 0.64), (3, 3.0, 0.50), (4, 2.0, 0.66)]
    out = [TrialRecord(n, "COMPLETE", v, {"epsilon": e}) for n, e, v in points]
    out.append(TrialRecord(5, "PRUNED", None, {"epsilon": 9.0}))
    return out


def test_confirm_seeds_are_disjoint_from_the_search_seeds() -> None:
    assert confirm_seeds([0, 1, 2, 3], 3) == (10_000, 10_001, 10_002)
    late = confirm_seeds([0, 10_004], 2)
    assert late == (10_005, 10_006)
    assert not set(confirm_seeds(range(20_000), 5)) & set(range(20_000))


def test_plan_takes_the_top_configs_and_the_enqueued_baseline() -> None:
    study = load_study("smoke")  # enqueue = [{epsilon = 0.0}], maximize val_acc
    plan = plan_confirm(study, records(), top=2, seeds=4, search_seeds=[0])
    assert plan is not None
    assert plan.configs == {
        "baseline": {"epsilon": 0.0},
        "trial 1": {"epsilon": 2.0},  # trial 4 repeats the same point: kept once
        "trial 2": {"epsilon": 1.0},
    }
    assert plan.trials["baseline"] == 0
    assert plan.winner == "trial 1" and plan.winner_search_value == pytest.approx(0.66)
    assert plan.seeds == (10_000, 10_001, 10_002, 10_003)
    assert plan_confirm(study, records(), top=0, seeds=4, search_seeds=[0]) is None
    assert plan_confirm(study, [], top=3, seeds=4, search_seeds=[0]) is None


def test_run_confirm_writes_rows_and_a_verdict(tmp_path: Path) -> None:
    study = load_study("smoke")
    plan = plan_confirm(study, records(), top=2, seeds=4, search_seeds=[0])
    assert plan is not None
    trainer = FakeTrainer()
    v = run_confirm(study, plan, tmp_path, trainer=trainer, log=lambda _: None)
    rows = list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))
    assert len(rows) == 3 * 4
    assert {int(r["seed"]) for r in rows} == set(plan.seeds)
    assert trainer.calls == [list(plan.seeds)] * 3  # one population per config
    # epsilon 2 is +0.05 on every seed: a constant shift, p = 0, supported on val and test.
    by = {(c.config, c.metric): c for c in v.comparisons}
    top = by[("trial 1", "val_acc")]
    assert top.delta == pytest.approx(0.05) and top.p == 0.0 and top.verdict == "supported"
    assert by[("trial 1", "train_nc1")].verdict == "supported"  # lower NC1 is better
    assert by[("trial 1", "test_agreement")].verdict == "no difference"
    shifts = [(s % 7) / 100 for s in plan.seeds]
    assert v.winner_confirmed_value == pytest.approx(0.65 + sum(shifts) / 4)
    text = (tmp_path / VERDICT_FILE).read_text()
    assert "trial 1 (epsilon=2)" in text and "supported" in text


def test_a_killed_confirm_stage_resumes_where_it_stopped(tmp_path: Path) -> None:
    study = load_study("smoke")
    plan = plan_confirm(study, records(), top=2, seeds=3, search_seeds=[0])
    assert plan is not None
    with pytest.raises(KeyboardInterrupt):
        run_confirm(study, plan, tmp_path, trainer=FakeTrainer(fail_on_call=2), log=print)
    assert len(list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))) == 3  # the baseline
    again = FakeTrainer()
    resumed = run_confirm(study, plan, tmp_path, trainer=again, log=print)
    assert len(again.calls) == 2  # only the two configs that had not finished
    fresh = run_confirm(study, plan, tmp_path / "clean", trainer=FakeTrainer(), log=print)
    assert resumed.to_dict() == fresh.to_dict()


def test_judge_matches_a_paired_t_test_and_holm_worked_by_hand() -> None:
    seeds = [1, 2, 3]
    values: dict[str, dict[str, list[float]]] = {
        "baseline": {"val_acc": [0.5, 0.6, 0.7]},
        "a": {"val_acc": [0.6, 0.8, 0.8]},  # differences 0.1, 0.2, 0.1
        "b": {"val_acc": [0.5, 0.6, 0.7]},  # identical: p = 1
    }
    v = judge(
        values, baseline="baseline", winner="a", winner_search_value=0.9, metric="val_acc",
        seeds=seeds,
    )  # fmt: skip
    a = next(c for c in v.comparisons if c.config == "a" and c.metric == "val_acc")
    # mean 0.1333, sd 0.05774, se 0.03333: t = 4 with 2 degrees of freedom, so the two-sided
    # p = 1 - 4 / sqrt(2 + 16) = 0.057191; Holm over two p-values doubles the smaller.
    assert a.delta == pytest.approx(0.4 / 3)
    assert a.p == pytest.approx(1 - 4 / math.sqrt(18), abs=1e-9)
    assert a.p_holm == pytest.approx(2 * (1 - 4 / math.sqrt(18)), abs=1e-9)
    assert a.verdict == "inconclusive"  # the bootstrap CI excludes 0, the corrected p does not
    assert v.winner_confirmed_value == pytest.approx(2.2 / 3)
    assert "selection bias" in v.headline and "+0.1667 selection bias" in v.headline
    # metrics a config never reported are "not checked", never a false verdict
    nc1 = next(c for c in v.comparisons if c.config == "a" and c.metric == "train_nc1")
    assert nc1.verdict == "not checked" and nc1.n_pairs == 0


def test_when_the_baseline_wins_the_headline_compares_the_runner_up_with_it() -> None:
    values = {
        "baseline": {"val_acc": [0.5, 0.6, 0.7]},
        "a": {"val_acc": [0.4, 0.6, 0.6]},  # the runner-up: differences -0.1, 0, -0.1
        "b": {"val_acc": [0.5, 0.6, 0.7]},
    }
    v = judge(
        values, baseline="baseline", winner="baseline", winner_search_value=0.7,
        metric="val_acc", seeds=[1, 2, 3],
    )  # fmt: skip
    assert v.headline.startswith("baseline won the search; runner-up a vs baseline on val_acc")
    assert "-0.0667" in v.headline and "baseline's search 0.7000 -> confirmed 0.6000" in v.headline


def test_without_a_baseline_the_verdict_only_reports_the_winner(tmp_path: Path) -> None:
    study = load_study("smoke").replace(enqueue=())
    plan = plan_confirm(study, records(), top=1, seeds=2, search_seeds=[0])
    assert plan is not None and plan.baseline is None
    v = run_confirm(study, plan, tmp_path, trainer=FakeTrainer(), log=lambda _: None)
    assert v.comparisons == () and "no baseline" in v.headline
    data: dict[str, Any] = v.to_dict()
    assert data["winner"] == "trial 1"
