"""What the confirm stage trains and judges: the shortlist by the search's own value (never by a
test metric), the search's seeds kept out of it, and a resume after the baseline point changed."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from dgkd.config import TrainConfig
from dgkd.search import orchestrate
from dgkd.search.confirm import CONFIRM_FILE, VERDICT_FILE, plan_confirm, run_confirm
from dgkd.search.records import TrialRecord, TrialState
from dgkd.study import load_study


class Result:
    def __init__(self, metrics: dict[str, float]) -> None:
        self.metrics, self.error = metrics, None


class Trainer:
    """val_acc and test_acc as functions of epsilon and seed: epsilon 1 is best on validation
    by 0.04, epsilon 3 best on test by 0.04; a per-seed shift is shared by every config."""

    VAL: ClassVar[dict[float, float]] = {0.0: 0.60, 1.0: 0.66, 3.0: 0.62}
    TEST: ClassVar[dict[float, float]] = {0.0: 0.50, 1.0: 0.52, 3.0: 0.56}

    def __init__(self) -> None:
        self.calls: list[list[tuple[float, int]]] = []

    def __call__(self, cfgs: Sequence[TrainConfig]) -> list[Result]:
        self.calls.append([(c.epsilon, c.seed) for c in cfgs])
        out = []
        for c in cfgs:
            shift = (c.seed % 5) / 100
            noise = 0.002 * np.random.default_rng([c.seed, int(c.epsilon * 10)]).normal()
            out.append(Result({"val_acc": self.VAL[c.epsilon] + shift + noise,
                               "test_acc": self.TEST[c.epsilon] + shift - noise}))  # fmt: skip
        return out


def disagreeing_records() -> list[TrialRecord]:
    """The search's trials: epsilon 1 has the best validation value, epsilon 3 the best test
    accuracy (and a test_acc above every other trial's value too)."""
    return [
        TrialRecord(0, TrialState.COMPLETE, 0.600, {"epsilon": 0.0}, metrics={"test_acc": 0.50}),
        TrialRecord(1, TrialState.COMPLETE, 0.620, {"epsilon": 3.0}, metrics={"test_acc": 0.70}),
        TrialRecord(2, TrialState.COMPLETE, 0.660, {"epsilon": 1.0}, metrics={"test_acc": 0.52}),
    ]


def test_the_winner_is_the_validation_winner_when_the_test_ranking_disagrees(
    tmp_path: Path,
) -> None:
    study = load_study("smoke")  # maximize val_acc, baseline epsilon 0
    plan = plan_confirm(study, disagreeing_records(), top=1, n_seeds=4, search_seeds=[0])
    assert plan is not None
    assert plan.configs == {"baseline": {"epsilon": 0.0}, "trial 2": {"epsilon": 1.0}}
    assert plan.winner == "trial 2" and plan.winner_search_value == 0.66
    trainer = Trainer()
    v = run_confirm(study, plan, tmp_path, trainer=trainer, log=lambda _: None)
    assert {e for call in trainer.calls for e, _ in call} == {0.0, 1.0}  # epsilon 3: not trained
    assert v.winner == "trial 2" and v.headline.startswith("trial 2 vs baseline on val_acc")
    assert {c.config for c in v.comparisons} == {"trial 2"}
    assert "search 0.6600 -> confirmed" in v.headline
    text = (tmp_path / VERDICT_FILE).read_text()
    assert "trial 2 (epsilon=1)" in text and "epsilon=3" not in text
    # minimized, the order turns: the lowest value wins
    low = plan_confirm(study.replace(direction="minimize"), disagreeing_records(), top=1,
                       n_seeds=2, search_seeds=[0])  # fmt: skip
    assert (
        low is not None
        and low.winner == "baseline"
        and list(low.configs)
        == [
            "baseline",
            "trial 1",
        ]
    )


def test_a_resume_after_the_baseline_point_changed_retrains_the_baseline_only(
    tmp_path: Path,
) -> None:
    study = load_study("smoke")
    records = disagreeing_records()
    plan = plan_confirm(study, records, top=1, n_seeds=3, search_seeds=[0])
    assert plan is not None
    run_confirm(study, plan, tmp_path, trainer=Trainer(), log=lambda _: None)
    moved = study.replace(enqueue=({"epsilon": 3.0},))  # the baseline is now epsilon 3
    replanned = plan_confirm(moved, records, top=1, n_seeds=3, search_seeds=[0])
    assert replanned is not None and replanned.configs["baseline"] == {"epsilon": 3.0}
    lines: list[str] = []
    again = Trainer()
    v = run_confirm(moved, replanned, tmp_path, trainer=again, log=lines.append)
    assert again.calls == [[(3.0, s) for s in replanned.seeds]]  # trial 2's rows were kept
    notice = [line for line in lines if "plan changed" in line]
    assert notice == [
        f"confirm: the plan changed since {tmp_path / CONFIRM_FILE} was written (baseline is "
        "now epsilon=3: 3 row(s)); retraining those"
    ], lines
    rows = list(csv.DictReader((tmp_path / CONFIRM_FILE).open()))
    base = [r for r in rows if r["config"] == "baseline"]
    assert len(rows) == 6 and {r["params"] for r in base} == {'{"epsilon": 3.0}'}
    assert {r["trial"] for r in base} == {"1"}  # the search trial at the new baseline point
    # the verdict compares with the new baseline's values, as a fresh stage would
    fresh = run_confirm(moved, replanned, tmp_path / "fresh", trainer=Trainer(),
                        log=lambda _: None)  # fmt: skip
    assert v.to_dict() == fresh.to_dict()
    c = next(c for c in v.comparisons if c.metric == "val_acc")
    shifts = np.array([(s % 5) / 100 for s in replanned.seeds])
    assert c.baseline_mean == pytest.approx(0.62 + shifts.mean(), abs=0.01)
    assert c.delta == pytest.approx(0.04, abs=0.01)  # epsilon 1 - epsilon 3, not - epsilon 0


def test_the_search_seeds_reach_the_confirm_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials trained seeds 20000..20002 (the base seed moved past the confirm seeds' start):
    the confirm seeds begin after them."""
    from dgkd.search import confirm

    study = load_study("smoke")
    opts = orchestrate.make_options(study, out=tmp_path, trials=3, workers=1, n_seeds=3,
                                    overrides={"seed": 20_000}, confirm_top=1,
                                    n_confirm_seeds=2)  # fmt: skip
    seen: dict[str, Any] = {}

    def capture(study: Any, plan: confirm.ConfirmPlan, out_dir: Path, **kw: Any) -> Any:
        seen["plan"] = plan
        return run_confirm(study, plan, out_dir, trainer=Trainer(), log=lambda _: None)

    monkeypatch.setattr(confirm, "run_confirm", capture)
    records = disagreeing_records()
    assert orchestrate._confirm(study, opts, records, lambda _: None) is not None
    assert seen["plan"].seeds == (20_003, 20_004)
    assert not set(seen["plan"].seeds) & {20_000, 20_001, 20_002}


def test_a_stage_trains_with_the_searchs_changes_under_its_teachers_and_resumes_unchanged(
    tmp_path: Path,
) -> None:
    """The search's ``--set`` changes reach every confirm run, whose teachers start at the base
    config's teacher seed; a resume with one more seed keeps every row as written (the trial
    numbers too) and trains only that seed; rows of a config an earlier, longer shortlist had
    are dropped without a word."""
    study = load_study("smoke")
    records = disagreeing_records()
    wide = plan_confirm(study, records, top=2, n_seeds=2, search_seeds=[0], teachers=2)
    assert wide is not None and set(wide.configs) == {"baseline", "trial 2", "trial 1"}
    seen: list[tuple[int, int, int]] = []

    def trainer(cfgs: Sequence[TrainConfig]) -> list[Result]:
        seen.extend((c.epochs, c.teacher_seed, c.seed) for c in cfgs)
        return Trainer()(cfgs)

    changes = {"epochs": 3, "teacher_seed": 5}
    run_confirm(study, wide, tmp_path, overrides=changes, trainer=trainer, log=lambda _: None)
    assert {(e, t) for e, t, _ in seen} == {(3, 5), (3, 6)}  # teachers 5 and 6, 3 epochs
    assert len(seen) == 3 * 2 * 2
    longer = plan_confirm(study, records, top=1, n_seeds=3, search_seeds=[0], teachers=2)
    assert longer is not None and set(longer.configs) == {"baseline", "trial 2"}
    new_seed = longer.seeds[-1]
    assert longer.seeds[:2] == wide.seeds
    path = tmp_path / CONFIRM_FILE
    before = [r for r in csv.DictReader(path.open()) if r["config"] != "trial 1"]
    assert {(r["config"], r["trial"]) for r in before} == {("baseline", "0"), ("trial 2", "2")}
    seen.clear()
    lines: list[str] = []
    run_confirm(study, longer, tmp_path, overrides=changes, trainer=trainer, log=lines.append)
    assert sorted(seen) == [(3, t, new_seed) for t in (5, 5, 6, 6)]  # the new seed only
    assert len(lines) == 1 and lines[0].startswith("confirm: "), lines  # no notice
    after = list(csv.DictReader(path.open()))
    assert [r for r in after if int(r["seed"]) != new_seed] == before


def test_confirm_csv_rows_and_the_progress_lines_read_back(tmp_path: Path) -> None:
    """confirm.csv holds a row per (config, teacher, seed) in the plan's order, with its search
    trial (empty for a config no trial ran), its params as sorted JSON and a failed run's first
    line of error; each round says in one line what it trains."""
    study = load_study("smoke")
    records = [  # no trial at the baseline point (epsilon 0); trial 2's params out of order
        TrialRecord(1, TrialState.COMPLETE, 0.620, {"epsilon": 3.0}, metrics={"test_acc": 0.7}),
        TrialRecord(2, TrialState.COMPLETE, 0.660, {"epsilon": 1.0, "alpha": 1.0},
                    metrics={"test_acc": 0.52}),
    ]  # fmt: skip
    plan = plan_confirm(study, records, top=2, n_seeds=4, search_seeds=[0], teachers=2, round=2)
    assert plan is not None and list(plan.configs) == ["baseline", "trial 2", "trial 1"]
    first = plan.seeds[0]

    def trainer(cfgs: Sequence[TrainConfig]) -> list[Result]:
        out = Trainer()(cfgs)
        for c, res in zip(cfgs, out, strict=True):
            if c.epsilon == 3.0 and c.seed == first and c.teacher_seed == 1:
                res.metrics, res.error = {}, RuntimeError("loss became nan\nat step 3")
        return out

    lines: list[str] = []
    run_confirm(study, plan, tmp_path, trainer=trainer, log=lines.append)
    assert lines[0] == "confirm: 3 config(s) x 2 teachers x 2 fresh seeds (round 1 of at most 2)"
    if len(lines) > 1:  # the first round did not decide every config
        assert lines[1:] == [
            "confirm: 3 config(s) x 2 teachers x 2 fresh seeds (round 2 of at most 2)"
        ]
    with (tmp_path / CONFIRM_FILE).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows[:: len(rows) // 3]] == ["baseline", "trial 2", "trial 1"]
    for name, trial, params in (
        ("baseline", "", '{"epsilon": 0.0}'),
        ("trial 2", "2", '{"alpha": 1.0, "epsilon": 1.0}'),
        ("trial 1", "1", '{"epsilon": 3.0}'),
    ):
        mine = [r for r in rows if r["config"] == name]
        assert {(r["trial"], r["params"]) for r in mine} == {(trial, params)}
        keys = [(int(r["teacher_seed"]), int(r["seed"])) for r in mine]
        assert keys == sorted(keys)  # by teacher, then seed
    errors = {(r["config"], r["teacher_seed"], r["seed"]): r["error"] for r in rows}
    assert errors.pop(("trial 1", "1", str(first))) == "loss became nan"
    assert set(errors.values()) == {""}
    # a resume with one more round's seeds counts its runs when they are not a whole grid
    path = tmp_path / CONFIRM_FILE
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # its last row
    lines.clear()
    run_confirm(study, plan, tmp_path, trainer=trainer, log=lines.append)
    assert lines[0].startswith("confirm: 1 config(s), 1 (teacher, fresh seed) runs (round ")
    with path.open() as f:
        again = list(csv.DictReader(f))
    assert again == rows  # the kept rows written back as they were, the lost one retrained
    # one look under one teacher: no round, no teacher count
    single = plan_confirm(study, records, top=1, n_seeds=3, search_seeds=[0], teachers=1, round=0)
    assert single is not None
    lines.clear()
    run_confirm(study, single, tmp_path / "single", trainer=Trainer(), log=lines.append)
    assert lines == ["confirm: 2 config(s) on 3 fresh seed(s)"]


def test_a_value_of_zero_ranks_as_zero_and_one_fresh_seed_is_a_plan() -> None:
    """A trial whose value is exactly 0 (accuracy 0, a calibration error of 0) is ranked by that
    value, last when maximizing and first when minimizing; a stage of one fresh seed is planned
    (only zero seeds or zero configs mean no stage)."""
    study = load_study("smoke")
    records = [
        TrialRecord(0, TrialState.COMPLETE, 0.5, {"epsilon": 0.0}),
        TrialRecord(1, TrialState.COMPLETE, 0.0, {"epsilon": 2.0}),
        TrialRecord(2, TrialState.COMPLETE, 0.3, {"epsilon": 4.0}),
    ]
    high = plan_confirm(study, records, top=2, n_seeds=1, search_seeds=[0])
    assert high is not None and high.winner == "baseline"
    assert list(high.configs) == ["baseline", "trial 2", "trial 1"]
    low = plan_confirm(study.replace(direction="minimize"), records, top=2, n_seeds=1,
                       search_seeds=[0])  # fmt: skip
    assert low is not None and low.winner == "trial 1"
    assert list(low.configs) == ["baseline", "trial 1", "trial 2"]
    assert plan_confirm(study, records, top=2, n_seeds=0, search_seeds=[0]) is None
    assert plan_confirm(study, records, top=0, n_seeds=1, search_seeds=[0]) is None
