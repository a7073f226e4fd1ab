"""The confirm stage: fresh seeds, the plan, confirm.csv, resume after a kill, and the verdict's
statistics against values worked by hand."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from scipy import stats as sps

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
    plan = plan_confirm(study, records(), top=2, n_seeds=4, search_seeds=[0])
    assert plan is not None
    assert plan.configs == {
        "baseline": {"epsilon": 0.0},
        "trial 1": {"epsilon": 2.0},  # trial 4 repeats the same point: kept once
        "trial 2": {"epsilon": 1.0},
    }
    assert plan.trials["baseline"] == 0
    assert plan.winner == "trial 1" and plan.winner_search_value == pytest.approx(0.66)
    assert plan.seeds == (10_000, 10_001, 10_002, 10_003)
    assert plan_confirm(study, records(), top=0, n_seeds=4, search_seeds=[0]) is None
    assert plan_confirm(study, [], top=3, n_seeds=4, search_seeds=[0]) is None


def test_run_confirm_writes_rows_and_a_verdict(tmp_path: Path) -> None:
    study = load_study("smoke")
    plan = plan_confirm(study, records(), top=2, n_seeds=4, search_seeds=[0])
    assert plan is not None
    trainer = FakeTrainer()
    v = run_confirm(study, plan, tmp_path, trainer=trainer, log=lambda _: None)
    rows = list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))
    assert len(rows) == 3 * 4
    assert {int(r["seed"]) for r in rows} == set(plan.seeds)
    assert trainer.calls == [list(plan.seeds) * 3]  # one call: the three configs' runs together
    # epsilon 2 is +0.05 on every seed: a constant shift, p = 0, better on val and test.
    by = {(c.config, c.metric): c for c in v.comparisons}
    top = by[("trial 1", "val_acc")]
    assert top.delta == pytest.approx(0.05) and top.p == 0.0 and top.verdict == "better"
    assert by[("trial 1", "train_nc1")].verdict == "better"  # lower NC1 is better
    assert by[("trial 1", "test_agreement")].verdict == "equivalent"
    shifts = [(s % 7) / 100 for s in plan.seeds]
    assert v.winner_confirmed_value == pytest.approx(0.65 + sum(shifts) / 4)
    text = (tmp_path / VERDICT_FILE).read_text()
    assert "trial 1 (epsilon=2)" in text and "| better |" in text and "*equivalent*" in text


def test_a_killed_confirm_stage_resumes_where_it_stopped(tmp_path: Path) -> None:
    study = load_study("smoke")
    plan = plan_confirm(study, records(), top=2, n_seeds=4, search_seeds=[0])
    assert plan is not None
    plan = dataclasses.replace(plan, round=2)  # two rounds of 2 seeds

    class Noisy(FakeTrainer):  # small noisy gains: round 1 cannot decide, so round 2 runs
        def __call__(self, cfgs: list[TrainConfig]) -> list[FakeResult]:
            out = super().__call__(cfgs)
            for c, r in zip(cfgs, out, strict=True):
                r.metrics["val_acc"] += (
                    0.02 * np.random.default_rng([c.seed, int(c.epsilon)]).normal()
                )
            return out

    with pytest.raises(KeyboardInterrupt):
        run_confirm(study, plan, tmp_path, trainer=Noisy(fail_on_call=2), log=print)
    assert len(list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))) == 3 * 2  # round 1 kept
    again = Noisy()
    resumed = run_confirm(study, plan, tmp_path, trainer=again, log=print)
    assert again.calls == [list(plan.seeds[2:]) * 3]  # only round 2
    fresh = run_confirm(study, plan, tmp_path / "clean", trainer=Noisy(), log=print)
    assert resumed.to_dict() == fresh.to_dict() and len(fresh.rounds) == 2


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
    plan = plan_confirm(study, records(), top=1, n_seeds=2, search_seeds=[0])
    assert plan is not None and plan.baseline is None
    v = run_confirm(study, plan, tmp_path, trainer=FakeTrainer(), log=lambda _: None)
    assert v.comparisons == () and "no baseline" in v.headline
    data: dict[str, Any] = v.to_dict()
    assert data["winner"] == "trial 1"


# --- several teachers -------------------------------------------------------------------------


class TeacherTrainer(FakeTrainer):
    """Metrics that depend on the teacher too: epsilon 2's gain is 0.05 under teacher 0, 0.01
    under teacher 1 and 0.03 under teacher 2, plus seed noise shared by the pair."""

    GAIN: ClassVar[dict[int, float]] = {0: 0.05, 1: 0.01, 2: 0.03}

    def __call__(self, cfgs: list[TrainConfig]) -> list[FakeResult]:
        self.calls.append([(c.teacher_seed, c.seed) for c in cfgs])  # type: ignore[misc]
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        out = []
        for c in cfgs:
            m = fake_metrics(c.replace(epsilon=0.0))
            m["val_acc"] += self.GAIN[c.teacher_seed] * c.epsilon / 2 + (c.seed % 3) / 1000
            out.append(FakeResult(m))
        return out


def test_confirm_runs_every_seed_under_each_teacher_and_judges_across_them(
    tmp_path: Path,
) -> None:
    study = load_study("eps_sweep")
    assert study.confirm_teachers == 3
    plan = plan_confirm(study, records(), top=1, n_seeds=3, search_seeds=[0, 1, 2, 3])
    assert plan is not None and plan.teachers == 3
    trainer = TeacherTrainer()
    v = run_confirm(study, plan, tmp_path, trainer=trainer, log=lambda _: None)
    pairs = [(t, s) for t in range(3) for s in plan.seeds]
    assert trainer.calls == [pairs + pairs]  # baseline and trial 1, every teacher: one call
    rows = list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))
    assert [(int(r["teacher_seed"]), int(r["seed"])) for r in rows] == pairs * 2
    assert v.teachers == (0, 1, 2)
    c = next(c for c in v.comparisons if c.config == "trial 1" and c.metric == "val_acc")
    # per-teacher differences are exactly the gains (the seed noise is paired away)
    gains = list(TeacherTrainer.GAIN.values())
    assert c.delta == pytest.approx(sum(gains) / 3) and c.n_pairs == 9
    assert c.p == pytest.approx(sps.ttest_1samp(gains, 0.0).pvalue, rel=1e-9)
    assert c.sd_seed == pytest.approx(0.0, abs=1e-12)
    assert c.sd_teacher == pytest.approx(float(np.std(gains, ddof=1)), rel=1e-6)
    assert c.ci_low == pytest.approx(0.01) and c.ci_high == pytest.approx(0.05)  # teachers only
    assert c.p > 0.05 and c.verdict == "inconclusive"  # the CI excludes 0, 3 teachers do not
    assert "over 3 teachers x 3 fresh seeds" in v.headline
    text = (tmp_path / VERDICT_FILE).read_text()
    assert "each under teacher seeds 0, 1, 2: 3 teachers x 3 fresh seeds per config" in text
    assert "| sd_teacher | sd_seed |" in text and f"{c.sd_teacher:.4f}" in text


# --- rounds: a sequential confirm stage ---------------------------------------------------------


def test_obrien_fleming_levels_match_the_published_boundaries() -> None:
    from dgkd.sequential import obrien_fleming_levels

    assert obrien_fleming_levels(1) == (0.05,)
    # z boundaries 2.797, 1.977 (2 looks) and 3.471, 2.454, 2.004 (3 looks) at 0.05
    z2 = [sps.norm.isf(p / 2) for p in obrien_fleming_levels(2)]
    z3 = [sps.norm.isf(p / 2) for p in obrien_fleming_levels(3)]
    assert z2 == pytest.approx([2.797, 1.977], abs=2e-3)
    assert z3 == pytest.approx([3.471, 2.454, 2.004], abs=2e-3)
    with pytest.raises(ValueError, match="looks"):
        obrien_fleming_levels(0)


class GainTrainer(FakeTrainer):
    """val_acc = 0.6 + a per-seed shift shared by all configs + gain[epsilon] + noise[epsilon]."""

    def __init__(self, gains: dict[float, float], noise: dict[float, float]) -> None:
        super().__init__()
        self.gains, self.noise = gains, noise

    def __call__(self, cfgs: list[TrainConfig]) -> list[FakeResult]:
        self.calls.append([c.seed for c in cfgs])
        rng = np.random.default_rng
        return [
            FakeResult({"val_acc": 0.6 + (c.seed % 7) / 100 + self.gains.get(c.epsilon, 0.0)
                        + self.noise.get(c.epsilon, 0.0) * rng(c.seed).normal()})
            for c in cfgs
        ]  # fmt: skip


def _rounds_study(tmp_path: Path, round_: int):
    path = tmp_path / "rounds.toml"
    path.write_text(
        'space = "eps"\nenqueue = [{ epsilon = 0.0 }]\n[confirm]\ntop = 1\nseeds = 10\n'
        f'round = {round_}\n[base]\nmethod = "dgkd"\n'
    )
    return load_study(str(path))


def test_a_clear_difference_stops_after_the_first_round(tmp_path: Path) -> None:
    study = _rounds_study(tmp_path, 5)
    plan = plan_confirm(study, records(), top=1, n_seeds=10, search_seeds=[0])
    assert plan is not None and plan.looks == (5, 10)
    trainer = GainTrainer({2.0: 0.05}, {})
    v = run_confirm(study, plan, tmp_path, trainer=trainer, log=lambda _: None)
    assert trainer.calls == [list(plan.seeds[:5]) * 2]  # baseline and trial 1, round 1 only
    assert [r.look for r in v.rounds] == [1] and v.rounds[0].decided
    (c,) = v.rounds[0].comparisons
    assert c.verdict == "better" and c.p_holm < v.rounds[0].level < 0.01
    assert "(round 1 of at most 2)" in v.headline and v.seeds == plan.seeds[:5]
    text = (tmp_path / VERDICT_FILE).read_text()
    assert "## Rounds" in text and "O'Brien-Fleming" in text and "every verdict" in text


def test_an_undecided_first_round_adds_seeds_and_judges_at_the_next_level(tmp_path: Path) -> None:
    study = _rounds_study(tmp_path, 5)
    plan = plan_confirm(study, records(), top=1, n_seeds=10, search_seeds=[0])
    assert plan is not None
    trainer = GainTrainer({2.0: 0.004}, {2.0: 0.01})  # small and noisy: not decided after 5
    v = run_confirm(study, plan, tmp_path, trainer=trainer, log=lambda _: None)
    assert trainer.calls == [list(plan.seeds[:5]) * 2, list(plan.seeds[5:]) * 2]
    assert [r.n_seeds for r in v.rounds] == [5, 10] and not v.rounds[0].decided
    from dgkd.sequential import obrien_fleming_levels

    assert [r.level for r in v.rounds] == list(obrien_fleming_levels(2)) and v.alpha == v.rounds[
        1
    ].level
    rows = list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))
    assert len(rows) == 20 and v.seeds == plan.seeds
    text = (tmp_path / VERDICT_FILE).read_text()
    assert text.count("| 1 | 5 |") == 1 and text.count("| 2 | 10 |") == 1
    # one look with every seed: the same rows, judged at 0.05
    single = run_confirm(_rounds_study(tmp_path, 0), dataclasses.replace(plan, round=0),
                         tmp_path / "one", trainer=GainTrainer({2.0: 0.004}, {2.0: 0.01}),
                         log=lambda _: None)  # fmt: skip
    assert (
        single.rounds[0].level == 0.05
        and single.looks == 1
        and "## Rounds" not in (tmp_path / "one" / VERDICT_FILE).read_text()
    )


def test_false_better_on_identical_configs_stays_at_or_below_five_percent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole sequential procedure on two top configs identical to the baseline, with teacher
    effects and a config x teacher interaction of mean 0: how often any config is called
    better (Holm across the configs, O'Brien-Fleming across 2 looks, t-test on 3 teacher means)."""
    # 300 confirm stages write ~900 scratch files: flushing each to disk is not under test here
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    study = _rounds_study(tmp_path, 5)
    records2 = [TrialRecord(0, "COMPLETE", 0.6, {"epsilon": 0.0}),
                TrialRecord(1, "COMPLETE", 0.7, {"epsilon": 1.0}),
                TrialRecord(2, "COMPLETE", 0.65, {"epsilon": 2.0})]  # fmt: skip

    class Null(FakeTrainer):
        def __init__(self, rep: int) -> None:
            super().__init__()
            rng = np.random.default_rng(rep)
            self.teacher = rng.normal(0, 0.01, size=3)
            self.inter = {e: rng.normal(0, 0.002, size=3) for e in (0.0, 1.0, 2.0)}
            self.rep = rep

        def __call__(self, cfgs: list[TrainConfig]) -> list[FakeResult]:
            out = []
            for c in cfgs:
                noise = np.random.default_rng([self.rep, c.teacher_seed, c.seed, int(c.epsilon)])
                val = 0.9 + self.teacher[c.teacher_seed] + self.inter[c.epsilon][c.teacher_seed]
                out.append(FakeResult({"val_acc": val + noise.normal(0, 0.004)}))
            return out

    reps, false_better, stopped_early = 300, 0, 0
    for rep in range(reps):
        plan = plan_confirm(study, records2, top=2, n_seeds=10, search_seeds=[0], teachers=3)
        assert plan is not None
        v = run_confirm(study, plan, tmp_path / str(rep), trainer=Null(rep), log=lambda _: None)
        words = [c.verdict for c in v.comparisons if c.metric == "val_acc"]
        false_better += "better" in words
        stopped_early += len(v.rounds) == 1
    assert false_better / reps <= 0.05, (false_better, stopped_early)
    assert stopped_early > 0, (false_better, stopped_early)  # equivalent after the first look


def test_rows_of_an_older_confirm_csv_without_a_teacher_are_retrained_and_said(
    tmp_path: Path,
) -> None:
    study = load_study("smoke")
    plan = plan_confirm(study, records(), top=1, n_seeds=2, search_seeds=[0])
    assert plan is not None
    old = 'config,trial,params,seed,error,val_acc\nbaseline,0,"{""epsilon"": 0.0}",10000,,0.5\n'
    (tmp_path / CONFIRM_FILE).write_text(old)
    lines: list[str] = []
    trainer = FakeTrainer()
    run_confirm(study, plan, tmp_path, trainer=trainer, log=lines.append)
    path = tmp_path / CONFIRM_FILE
    notice = f"confirm: 1 row(s) of {path} name no teacher (an older release); retraining"
    assert lines[0] == notice, lines
    assert trainer.calls == [list(plan.seeds) * 2]  # the old row was not reused
    rows = list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))
    assert len(rows) == 4 and all(r["teacher_seed"] == "0" for r in rows)


def test_confirm_seeds_without_search_seeds_start_at_the_first_confirm_seed() -> None:
    from dgkd.search.confirm import FIRST_CONFIRM_SEED

    assert confirm_seeds([], 3) == tuple(range(FIRST_CONFIRM_SEED, FIRST_CONFIRM_SEED + 3))


def test_a_configs_label_names_each_param_floats_to_four_digits() -> None:
    from dgkd.search.confirm import _label

    assert _label({"epsilon": 1.23456, "method": "dkd", "teacher_seed": 2}) == (
        "epsilon=1.235, method=dkd, teacher_seed=2"
    )
