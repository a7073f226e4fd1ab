"""Tests for dgkd-search run in-process: end to end on the smoke study, resume, --fresh,
divergence, bad input, best_params and the live display."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from dgkd.cli import search_main
from dgkd.io import move_aside
from dgkd.search import (
    SearchReporter,
    TrialRecord,
    best_params,
    counts_toward_total,
    make_options,
)
from dgkd.study import load_study

OUTPUTS = (
    "trials.csv",
    "best.json",
    "importance.csv",
    "optimization_history.png",
    "learning_curves.png",
    "accuracy_vs_epsilon.png",
    "journal.log",
    "best_student.pt",
)


def search(out: Path, *args: str) -> int:
    """dgkd-search in this process, on one worker (``args`` may ask for more): trial order,
    sampler draws and pruning decisions are reproducible only with one process claiming."""
    return search_main(["--out", str(out), "--quiet", "--workers", "1", *args])


def trials(out: Path, study: str = "smoke") -> pd.DataFrame:
    return pd.read_csv(out / study / "trials.csv")


def counted(frame: pd.DataFrame) -> int:
    interrupted = frame["fail_reason"].fillna("").str.startswith("interrupted")
    return int((frame["state"].isin(["COMPLETE", "PRUNED", "FAIL"]) & ~interrupted).sum())


def test_smoke_study_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search(tmp_path, "--study", "smoke") == 0
    out = capsys.readouterr().out
    run = tmp_path / "smoke"
    for name in OUTPUTS:
        assert (run / name).is_file(), name
    frame = trials(tmp_path)
    assert list(frame["number"]) == list(range(8))
    assert set(frame["state"]) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in set(frame["state"])
    assert frame.loc[0, "params_epsilon"] == 0.0  # the enqueued DKD baseline runs first
    done = frame[frame["state"] == "COMPLETE"]
    assert (done["value"] == done["val_acc"]).all()
    assert done[["test_acc", "test_agreement", "train_nc1", "grad_cos"]].notna().all().all()
    pruned = frame[frame["state"] == "PRUNED"]
    assert pruned["value"].isna().all() and pruned["pruned_epoch"].notna().all()
    best = json.loads((run / "best.json").read_text())
    assert best["value"] == done["value"].max()
    assert best["config"]["epochs"] == 2 and best["command"].startswith("dgkd-train")
    assert "trial 0 COMPLETE val_acc=" in out and "8/8 done" in out
    assert "smoke: 8/8 trials" in out
    assert "optuna best-trial --flatten -f yaml --study-name smoke" in out
    assert not (run / "param_importances.png").exists()  # one parameter: importance is 1
    assert sorted(p.name for p in (run / "history").iterdir()) == [
        f"trial_{n}.csv" for n in sorted(range(8), key=str)
    ]
    assert sorted(p.name for p in (run / "students").iterdir()) == sorted(
        f"trial_{n}" for n in done["number"]
    )  # every complete trial's, and only theirs
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run / "journal.log"))
    )
    study = optuna.load_study(study_name="smoke", storage=storage)
    assert len(study.trials) == 8
    assert study.trials[0].intermediate_values  # val_acc reported every epoch


def test_rerun_continues_to_the_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search(tmp_path, "--study", "smoke", "--trials", "3") == 0
    assert len(trials(tmp_path)) == 3
    assert search(tmp_path, "--study", "smoke", "--trials", "5") == 0
    frame = trials(tmp_path)
    assert list(frame["number"]) == [0, 1, 2, 3, 4]
    capsys.readouterr()
    assert search(tmp_path, "--study", "smoke", "--trials", "5") == 0
    assert "5/5 trials done, 0 to run" in capsys.readouterr().out
    assert len(trials(tmp_path)) == 5


def test_fresh_moves_old_results_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search(tmp_path, "--study", "smoke", "--trials", "2") == 0
    assert search(tmp_path, "--study", "smoke", "--trials", "3", "--fresh") == 0
    assert "moved previous results of smoke to" in capsys.readouterr().out
    old = [p for p in tmp_path.iterdir() if p.name.startswith("smoke.old-")]
    assert len(old) == 1 and len(pd.read_csv(old[0] / "trials.csv")) == 2
    assert (old[0] / "journal.log").is_file()
    assert len(trials(tmp_path)) == 3


def test_move_aside_never_overwrites(tmp_path: Path) -> None:
    assert move_aside(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert move_aside(tmp_path / "empty") is None
    targets = []
    for _ in range(2):
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "f").write_text("x")
        targets.append(move_aside(tmp_path / "run"))
    assert len(set(targets)) == 2 and all((t / "f").read_text() == "x" for t in targets)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_diverged_trial_fails_and_the_search_goes_on(tmp_path: Path) -> None:
    study = _write(
        tmp_path / "diverge.toml",
        'pruner = "none"\ntrials = 3\n'
        "enqueue = [{ lr = 0.01 }, { lr = 1e30 }, { lr = 0.001 }]\n"
        '[space.lr]\ntype = "categorical"\nchoices = [0.01, 1e30, 0.001]\n'
        "[base]\nepochs = 2\nteacher_epochs = 2\n"
        "val_pool = 200\ntest_pool = 400\nteacher_lr = 0.01\n",
    )
    assert search(tmp_path / "runs", "--study", str(study)) == 0
    frame = trials(tmp_path / "runs", "diverge")
    assert list(frame["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert frame.loc[1, "fail_reason"].startswith("diverged: loss became")
    assert frame.loc[1, "fail_epoch"] == 1
    assert pd.isna(frame.loc[1, "value"])


def test_no_completed_trial_is_a_runtime_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _write(
        tmp_path / "allfail.toml",
        'space = "eps"\npruner = "none"\ntrials = 2\n'
        "[base]\nepochs = 2\nteacher_epochs = 2\n"
        "val_pool = 200\ntest_pool = 400\nlr = 1e30\nteacher_lr = 0.01\n",
    )
    assert search(tmp_path / "runs", "--study", str(study)) == 1
    err = capsys.readouterr().err
    assert err.startswith("dgkd-search: error: no trial completed; trial 0: diverged")
    assert len(trials(tmp_path / "runs", "allfail")) == 2  # outputs still written


BAD_FILES = {
    "malformed.toml": 'space = "eps"\ntrials = = 3\n',
    "sampler.toml": 'space = "eps"\nsampler = "annealing"\n',
    "pruner.toml": 'space = "eps"\npruner = "asha"\n',
    "space.toml": 'space = "nope"\n',
    "bounds.toml": '[space.temperature]\ntype = "float"\nlow = 0.0\nhigh = 2.0\n',
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "unknown study 'nope'"),
        (["--study", "@malformed.toml"], "malformed.toml: line 2: "),
        (["--study", "@sampler.toml"], "sampler: must be one of tpe, random, grid, cmaes, gp"),
        (["--study", "@pruner.toml"], "pruner: must be one of median, hyperband, none"),
        (["--study", "@space.toml"], "unknown search space 'nope'"),
        (["--study", "@bounds.toml"], "temperature.bounds: temperature must be > 0"),
        (["--study", "smoke", "--trials", "0"], "--trials must be at least 1, got 0"),
        (["--study", "smoke", "--trials", "-3"], "--trials must be at least 1, got -3"),
        (["--study", "smoke", "--trials", "many"], "argument --trials: invalid int value"),
        (["--study", "smoke", "--workers", "0"], "argument --workers: expected a number of"),
        (["--study", "smoke", "--workers", "-1"], "processes >= 1 or auto (the usable cores, "),
        (["--study", "smoke", "--workers", "abc"], "or auto (the usable cores, 2 here), got 'abc'"),
        (["--study", "smoke", "--backend", "dask"], "unknown backend 'dask'; choose one of"),
        (["--study", "smoke", "--set", "bogus=1"], "unknown config field 'bogus'"),
        (["--study", "smoke", "--set", "epsilon=1"], "epsilon is set by the study's search"),
        (["--study", "smoke", "--address", "x:1"], "--address applies to --backend ray only"),
        (
            ["--study", "smoke", "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
            "cannot open storage postgresql",
        ),
        (["--study", "smoke", "--storage", "nodb://x"], "cannot open storage nodb://x"),
        ([], "--study is required"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    usable_cores: Callable[[int], None],
    args: list[str],
    message: str,
) -> None:
    usable_cores(2)
    for name, text in BAD_FILES.items():
        _write(tmp_path / name, text)
    args = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]
    out = tmp_path / "runs"
    assert search(out, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dgkd-search: error: "), err
    assert message in err
    assert "secret" not in err
    assert not out.exists()


def test_workers_default_to_auto_the_usable_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usable_cores: Callable[[int], None]
) -> None:
    usable_cores(3)
    assert make_options(load_study("smoke"), out=tmp_path).workers == 3
    seen: list[int] = []
    monkeypatch.setattr("dgkd.search.run_search", lambda s, opts: seen.append(opts.workers) or [])
    monkeypatch.setattr("dgkd.search.print_summary", lambda *args: None)
    for args in ([], ["--workers", "auto"], ["--workers", "5"], ["--workers", "1"]):
        assert search_main(["--out", str(tmp_path), "--study", "smoke", *args]) == 0
    assert seen == [3, 3, 5, 1]


def test_the_banner_states_the_threads_each_trial_trains_on(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    usable_cores: Callable[[int], None],
) -> None:
    import torch

    import dgkd.train

    usable_cores(3)
    monkeypatch.delenv("OMP_NUM_THREADS")
    seen: list[int] = []
    real = dgkd.train._train_population

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(dgkd.train, "_train_population", spy)
    argv = ["--out", str(tmp_path), "--quiet", "--study", "smoke", "--trials", "1"]
    assert search_main(argv) == 0  # the bare command: one trial to run, so one process
    assert "1 worker(s) x 1 thread(s)" in capsys.readouterr().out  # the config's threads
    assert search_main([*argv, "--set", "threads=0", "--fresh"]) == 0
    assert "1 worker(s) x 3 thread(s)" in capsys.readouterr().out  # the process's share
    assert seen == [1, 3]


def test_resume_with_another_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(tmp_path, "--study", "smoke", "--trials", "1") == 0
    capsys.readouterr()
    assert search(tmp_path, "--study", "smoke", "--trials", "2", "--set", "epochs=3") == 2
    err = capsys.readouterr().err
    assert "holds study smoke with another config (epochs 2, now 3)" in err and "--fresh" in err
    assert len(trials(tmp_path)) == 1
    args = ("--study", "smoke", "--trials", "1", "--set", "epochs=3", "--fresh")
    assert search(tmp_path, *args) == 0


def test_list_studies(capsys: pytest.CaptureFixture[str]) -> None:
    assert search_main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "eps_sweep: " in out and "cifar100_r32x4_r8x4: " in out


def test_help_does_not_import_torch_or_optuna() -> None:
    code = (
        "import sys\nfrom dgkd.cli import search_main\n"
        "try:\n    search_main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'optuna', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "--trials" in out.stdout


def test_best_params_from_journal_parent_dir_and_best_json(tmp_path: Path) -> None:
    study = load_study("smoke")
    assert best_params(study, out_dir=tmp_path / "smoke") is None
    assert search(tmp_path, "--study", "smoke", "--trials", "3") == 0
    frame = trials(tmp_path)
    top = frame.loc[frame["value"].idxmax()]
    expected = {"epsilon": top["params_epsilon"]}
    assert best_params(study, out_dir=tmp_path / "smoke") == expected
    assert best_params(study, out_dir=tmp_path) == expected  # runs/ accepted too
    ray_dir = tmp_path / "ray" / "smoke"  # a Ray search leaves best.json, no journal
    ray_dir.mkdir(parents=True)
    (ray_dir / "best.json").write_text((tmp_path / "smoke" / "best.json").read_text())
    assert best_params(study, out_dir=ray_dir) == expected
    (ray_dir / "best.json").write_text('{"params": null}')
    assert best_params(study, out_dir=ray_dir) is None


def _record(n: int, state: str, value: float | None = None, reason: str = "") -> TrialRecord:
    return TrialRecord(n, state, value, {"epsilon": float(n)}, fail_reason=reason)


def test_counts_toward_total() -> None:
    assert counts_toward_total(_record(0, "COMPLETE", 0.5))
    assert counts_toward_total(_record(1, "PRUNED"))
    assert counts_toward_total(_record(2, "FAIL", reason="diverged: loss became nan"))
    assert not counts_toward_total(_record(3, "FAIL", reason="interrupted (x); re-run as 4"))
    assert not counts_toward_total(_record(4, "RUNNING"))


def test_live_display_shows_progress_best_and_eta(tmp_path: Path) -> None:
    from rich.console import Console

    study = load_study("smoke")
    opts = make_options(study, trials=10, out=tmp_path)
    lines: list[str] = []
    reporter = SearchReporter(study, opts, live=False, log=lines.append)
    reporter.start([])
    reporter.update([_record(0, "COMPLETE", 0.61), _record(1, "RUNNING")])
    reporter.update(
        [_record(0, "COMPLETE", 0.61), _record(1, "PRUNED"), _record(2, "COMPLETE", 0.7)]
    )
    assert lines[0] == "search smoke: 0/10 trials done, 10 to run"
    assert lines[1].startswith("trial 0 COMPLETE val_acc=0.6100 | epsilon=0 | 1/10 done")
    assert lines[2].startswith("trial 1 PRUNED") and "3/10 done" in lines[3]
    assert "best val_acc 0.7000 (#2) epsilon=2" in lines[3]
    assert (tmp_path / "smoke" / "trials.csv").is_file()
    console = Console(record=True, width=140)
    console.print(reporter)
    text = console.export_text()
    assert "3/10 trials" in text and "elapsed" in text and "ETA" in text
    assert "running 0, complete 2, pruned 1, failed 0" in text
    assert "best val_acc 0.7000 (#2) epsilon=2" in text


def test_same_seed_same_search(tmp_path: Path) -> None:
    for run in ("a", "b"):
        assert search(tmp_path / run, "--study", "smoke", "--trials", "4") == 0
    a, b = trials(tmp_path / "a"), trials(tmp_path / "b")
    columns = ["number", "state", "value", "params_epsilon", "val_acc", "test_acc"]
    pd.testing.assert_frame_equal(a[columns], b[columns])


def test_pruning_stops_clearly_worse_trials_early(tmp_path: Path) -> None:
    enqueue = [f"{{ seed = {i}, lr = 0.01 }}" for i in range(10)]
    enqueue += ["{ seed = 0, lr = 1e-6 }", "{ seed = 1, lr = 1e-6 }"]
    study = _write(
        tmp_path / "prune.toml",
        f'sampler = "random"\npruner = "median"\ntrials = 12\nenqueue = [{", ".join(enqueue)}]\n'
        '[space.seed]\ntype = "int"\nlow = 0\nhigh = 9\n'
        '[space.lr]\ntype = "categorical"\nchoices = [0.01, 1e-6]\n'
        "[base]\nepochs = 4\nteacher_epochs = 2\n"
        "val_pool = 200\ntest_pool = 400\nteacher_lr = 0.01\nwarmup = 0\n",
    )
    assert search(tmp_path / "runs", "--study", str(study)) == 0
    frame = trials(tmp_path / "runs", "prune")
    assert (frame.loc[:9, "state"] == "COMPLETE").all()  # the median needs 10 complete trials
    assert list(frame.loc[10:, "state"]) == ["PRUNED", "PRUNED"]  # lr 1e-6 learns nothing
    assert list(frame.loc[10:, "pruned_epoch"]) == [1, 1]
    assert frame.loc[10:, "test_acc"].isna().all()  # no final metrics for a pruned trial


def test_a_trial_reports_and_keeps_only_its_evaluated_epochs(tmp_path: Path) -> None:
    """With eval_every, a trial reports (and can be pruned) at its evaluated epochs only; its
    final metrics are those of a run that evaluates every epoch."""
    args = ("--study", "smoke", "--trials", "2", "--set", "epochs=5")
    assert search(tmp_path / "every", *args) == 0
    assert search(tmp_path / "thinned", *args, "--set", "eval_every=2") == 0
    for number in (0, 1):
        history = pd.read_csv(tmp_path / "thinned" / "smoke" / "history" / f"trial_{number}.csv")
        assert list(history["epoch"]) == [2, 4, 5]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "thinned/smoke/journal.log"))
    )
    stored = optuna.load_study(study_name="smoke", storage=storage)
    assert [sorted(t.intermediate_values) for t in stored.trials] == [[2, 4, 5], [2, 4, 5]]
    every, thinned = trials(tmp_path / "every"), trials(tmp_path / "thinned")
    for key in ("val_acc", "test_acc", "train_nc1"):
        assert list(every[key]) == list(thinned[key]), key
