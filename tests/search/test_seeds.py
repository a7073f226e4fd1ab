"""Multi-seed trials: one population per trial, seed means, trial_seeds.csv, the paired
difference to the baseline, the resume signature, and the search's closing verdict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from dgkd.cli import search_main
from dgkd.config import TrainConfig
from dgkd.search.confirm import FIRST_CONFIRM_SEED
from dgkd.search.records import TrialState
from dgkd.search.trial import train_trial
from dgkd.study import SpecError, available_studies, load_study
from dgkd.train import train


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return {k: v for k, v in a.items() if k != "duration_s"} == {
        k: v for k, v in b.items() if k != "duration_s"
    }


def test_a_trial_is_its_seeds_trained_alone_and_reports_their_mean(tiny: TrainConfig) -> None:
    cfg = tiny.replace(epochs=3)
    rows: list[tuple[int, dict[str, float], bool]] = []
    out = train_trial(
        cfg, metric="val_acc", on_epoch=lambda e, r, last: rows.append((e, r, last)),
        seeds=(0, 1, 2),
    )  # fmt: skip
    alone = [train(cfg.replace(seed=s)) for s in (0, 1, 2)]
    assert out.state == TrialState.COMPLETE and out.seeds == (0, 1, 2)
    for mine, theirs in zip(out.seed_metrics, alone, strict=True):
        assert _same(mine, theirs.metrics)
    assert out.value == pytest.approx(sum(r.metrics["val_acc"] for r in alone) / 3)
    assert [(e, last) for e, _, last in rows] == [(1, False), (2, False), (3, True)]
    for epoch, row, _ in rows:  # the pruner sees the seed mean of each epoch
        mean = sum(r.history[epoch - 1]["val_acc"] for r in alone) / 3
        assert row["val_acc"] == pytest.approx(mean)


class _Prune(Exception):
    pass


def test_pruning_at_the_seed_mean_stops_the_whole_trial(tiny: TrainConfig) -> None:
    seen: list[int] = []

    def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
        seen.append(epoch)
        raise _Prune

    with pytest.raises(_Prune):
        train_trial(tiny.replace(epochs=4), metric="val_acc", on_epoch=on_epoch, seeds=(0, 1))
    assert seen == [1]


def search(out: Path, *args: str) -> int:
    return search_main(["--out", str(out), "--quiet", "--study", "smoke", "--workers", "1", *args])


def test_trials_csv_and_trial_seeds_csv_carry_the_seeds(tmp_path: Path) -> None:
    assert search(tmp_path, "--trials", "3", "--seeds", "3", "--confirm-top", "0") == 0
    trials = pd.read_csv(tmp_path / "smoke" / "trials.csv")
    per_seed = pd.read_csv(tmp_path / "smoke" / "trial_seeds.csv")
    assert len(per_seed) == 3 * 3 and set(per_seed["seed"]) == {0, 1, 2}
    by_trial = per_seed.groupby("trial")["val_acc"]
    for _, row in trials.iterrows():
        values = per_seed[per_seed["trial"] == row["number"]]["val_acc"].to_numpy()
        assert row["seeds"] == 3
        assert row["value"] == pytest.approx(values.mean())
        assert row["value_std"] == pytest.approx(values.std(ddof=1))
        assert row["value_se"] == pytest.approx(values.std(ddof=1) / math.sqrt(3))
    base = per_seed[per_seed["trial"] == 0].set_index("seed")["val_acc"]  # epsilon = 0
    assert trials.loc[0, "delta_baseline"] == 0.0
    for number in (1, 2):
        mine = per_seed[per_seed["trial"] == number].set_index("seed")["val_acc"]
        diffs = (mine - base).to_numpy()
        row = trials[trials["number"] == number].iloc[0]
        assert row["delta_baseline"] == pytest.approx(diffs.mean())
        assert row["delta_baseline_se"] == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    assert by_trial.count().tolist() == [3, 3, 3]


def test_a_resume_with_other_seeds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(tmp_path, "--trials", "2", "--seeds", "2", "--confirm-top", "0") == 0
    capsys.readouterr()
    assert search(tmp_path, "--trials", "3", "--seeds", "3", "--confirm-top", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds" in err[0] and "--fresh" in err[0]


def test_a_search_ends_with_a_verdict_on_fresh_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--trials", "4", "--seeds", "2", "--confirm-top", "2", "--confirm-seeds", "3")
    assert search(tmp_path, *args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("verdict: ") and "selection bias" in out[-2]
    best = json.loads((tmp_path / "smoke" / "best.json").read_text())
    verdict = best["verdict"]
    assert verdict["seeds"] == [FIRST_CONFIRM_SEED + i for i in range(3)]
    assert verdict["baseline"] == "baseline" and verdict["comparisons"]
    confirm = pd.read_csv(tmp_path / "smoke" / "confirm.csv")
    assert set(confirm["seed"]) == set(verdict["seeds"])  # disjoint from the search's 0, 1
    assert not set(confirm["seed"]) & {0, 1}
    assert (tmp_path / "smoke" / "verdict.md").read_text().startswith("# Verdict")
    # a rerun trains nothing new: the trials and the confirm rows are all there
    assert search(tmp_path, *args) == 0
    assert pd.read_csv(tmp_path / "smoke" / "confirm.csv").equals(confirm)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds = 0\n", "seeds: must be >= 1"),
        ("[confirm]\ntop = 2\nseeds = 1\n", "confirm.seeds: must be >= 2"),
        ("[confirm]\nbest = 2\n", "confirm.best: unknown key"),
        ("[confirm]\ntop = -1\n", "confirm.top: must be an integer >= 0"),
    ],
)
def test_seed_and_confirm_settings_are_validated(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text('space = "eps"\n' + text)
    with pytest.raises(SpecError, match=message):
        load_study(path)


def test_packaged_studies_train_at_least_four_seeds_per_trial() -> None:
    for name in available_studies():
        assert load_study(name).n_seeds >= 4, name
    eps = load_study("eps_sweep")
    assert eps.confirm_top >= 1 and eps.n_confirm_seeds >= 10


def test_seed_columns_pair_by_seed_and_read_records_without_seeds() -> None:
    """A record written before trials kept their seeds counts its seeds 0, 1, ...; a seed
    without the metric is left out of the spread and of the paired difference."""
    from dgkd.search.records import TrialRecord
    from dgkd.search.seeds import seed_columns

    three = [{"val_acc": 0.5}, {"val_acc": 0.6}, {"val_acc": 0.7}]
    base = TrialRecord(0, TrialState.COMPLETE, 0.6, {"epsilon": 0.0}, seed_metrics=three)
    mine = TrialRecord(1, TrialState.COMPLETE, 0.75, {"epsilon": 2.0}, seeds=(0, 1, 2),
                       seed_metrics=[{"val_acc": 0.7}, {"val_acc": 0.8}, {}])  # fmt: skip
    cols = seed_columns(mine, base, "val_acc")
    assert cols["seeds"] == 3
    assert cols["value_std"] == pytest.approx(math.sqrt(0.005))  # 0.7 and 0.8
    assert cols["value_se"] == pytest.approx(0.05)
    assert cols["delta_baseline"] == pytest.approx(0.2)  # 0.7 - 0.5 and 0.8 - 0.6
    assert cols["delta_baseline_se"] == pytest.approx(0.0, abs=1e-12)
    alone = seed_columns(base, None, "val_acc")
    assert alone["seeds"] is None  # it recorded none
    assert math.isnan(alone["delta_baseline"]) and math.isnan(alone["delta_baseline_se"])
    pruned = TrialRecord(2, TrialState.PRUNED, None, {"epsilon": 4.0}, seeds=(0, 1, 2))
    cols = seed_columns(pruned, base, "val_acc")  # seeds without final metrics: no numbers
    assert (
        cols["seeds"] == 3 and math.isnan(cols["value_std"]) and math.isnan(cols["delta_baseline"])
    )


def test_no_baseline_record_until_the_enqueued_point_completes() -> None:
    from dgkd.search.records import TrialRecord
    from dgkd.search.seeds import baseline_record

    study = load_study("smoke")  # enqueues epsilon = 0 first
    other = TrialRecord(0, TrialState.COMPLETE, 0.6, {"epsilon": 2.0})
    assert baseline_record(study, [other]) is None
    base = TrialRecord(1, TrialState.COMPLETE, 0.5, {"epsilon": 0.0})
    assert baseline_record(study, [other, base]) is base


def test_trial_seeds_csv_has_a_row_per_seed_and_every_metric_any_seed_has() -> None:
    from dgkd.search.records import TrialRecord
    from dgkd.search.seeds import seeds_frame

    records = [
        TrialRecord(1, TrialState.COMPLETE, 0.7, {}, seeds=(5, 6),
                    seed_metrics=[{"val_acc": 0.6, "test_acc": 0.5}, {"val_acc": 0.8, "ece": 0.1}]),
        # an older record, without its seeds: seed 0, 1, ...
        TrialRecord(0, TrialState.COMPLETE, 0.5, {}, seed_metrics=[{"val_acc": 0.5}]),
        TrialRecord(2, TrialState.PRUNED, None, {}, seeds=(5, 6)),  # pruned: no final metrics
    ]  # fmt: skip
    frame = seeds_frame(records)
    assert list(frame.columns) == ["trial", "state", "seed", "val_acc", "test_acc", "ece"]
    assert frame[["trial", "state", "seed"]].values.tolist() == [
        [0, "COMPLETE", 0], [1, "COMPLETE", 5], [1, "COMPLETE", 6],
    ]  # fmt: skip
    assert frame["val_acc"].tolist() == [0.5, 0.6, 0.8]
    assert frame["ece"].isna().tolist() == [True, True, False]
    empty = seeds_frame(records[2:])
    assert list(empty.columns) == ["trial", "state", "seed"] and empty.empty


def test_the_same_point_is_found_through_float_noise_and_by_its_choices() -> None:
    """The baseline is found among the trials when its numbers differ only by float noise
    (a value of 0 stored as 1e-13), and a choice parameter must be the same choice."""
    from dgkd.search.seeds import same_params

    assert same_params({"epsilon": 0.0}, {"epsilon": 1e-13})
    assert same_params({"epsilon": 2.0, "beta": 8}, {"epsilon": 2.0 + 1e-13, "beta": 8.0})
    assert not same_params({"epsilon": 0.0}, {"epsilon": 1e-9})
    assert same_params({"grad_term": "raw", "epsilon": 1.0}, {"grad_term": "raw", "epsilon": 1.0})
    assert not same_params({"grad_term": "raw"}, {"grad_term": "normalized"})
    assert not same_params({"epsilon": 1.0}, {"epsilon": 1.0, "beta": 8.0})
