"""What a search leaves for users and their tools: file modes, clean output, Optuna-readable
metrics and curves, every trial's history, the best student and rerunning it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from dgkd.cli import ablate_main, search_main, train_main
from dgkd.models import build_model


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-trial smoke search run in this process (one worker) under umask 022; its runs/ root."""
    out = tmp_path_factory.mktemp("outputs")
    argv = ["--out", str(out), "--quiet", "--study", "smoke", "--trials", "3", "--workers", "1"]
    old = os.umask(0o022)
    try:
        assert search_main(argv) == 0
    finally:
        os.umask(old)
    return out


def journal(run: Path) -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(run / "journal.log"))
    return optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(backend))


def test_files_follow_the_umask(searched: Path) -> None:
    files = [p for p in (searched / "smoke").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"trials.csv", "best.json", "best_student.pt", "trial_0.csv"}
    modes = {str(p.relative_to(searched)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_final_metrics_are_attributes_optuna_tools_show(searched: Path) -> None:
    study = journal(searched / "smoke")
    frame = study.trials_dataframe(attrs=("number", "value", "user_attrs"))
    assert frame["user_attrs_test_acc"].notna().all()
    assert frame.sort_values("user_attrs_test_acc")["number"].notna().all()
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # val_acc every epoch
    cmd = [str(Path(sys.executable).with_name("optuna")), "trials", "--flatten", "--study-name",
           "smoke", "--storage", str(searched / "smoke" / "journal.log"),
           "--storage-class", "JournalFileBackend", "-f", "json"]  # fmt: skip
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    assert len(rows) == 3 and all(isinstance(r["user_attrs_test_acc"], float) for r in rows)


def test_every_trial_has_its_history_and_the_best_student_is_kept(searched: Path) -> None:
    run = searched / "smoke"
    trials = pd.read_csv(run / "trials.csv")
    for number in trials["number"]:
        history = pd.read_csv(run / "history" / f"trial_{number}.csv")
        assert list(history["epoch"]) == [1, 2]
        assert {"train_loss", "val_acc"} <= set(history.columns)
    best = json.loads((run / "best.json").read_text())
    assert best["student"] == "best_student.pt" and best["student_seed"] == best["seeds"][0] == 0
    number = best["number"]
    assert best["students"] == {
        str(s): f"students/trial_{number}/seed_{s}.pt" for s in best["seeds"]
    }
    cfg = best["config"]
    model = build_model(
        cfg["student"], num_classes=10, input_shape=(40,), width=cfg["student_width"]
    )
    model.load_state_dict(torch.load(run / "best_student.pt", weights_only=True))
    first = (run / best["students"]["0"]).read_bytes()
    assert (run / "best_student.pt").read_bytes() == first
    assert (run / best["students"]["1"]).read_bytes() != first  # each seed its own student
    # Every complete trial keeps every seed's student.
    for number in trials.loc[trials["state"] == "COMPLETE", "number"]:
        kept = sorted(p.name for p in (run / "students" / f"trial_{number}").iterdir())
        assert kept == [f"seed_{s}.pt" for s in range(4)]


def test_train_config_best_json_reruns_the_best_trial(
    searched: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(searched / "smoke" / "best.json")
    best = json.loads(Path(path).read_text())
    capsys.readouterr()
    # All the trial's seeds, as one population: its value and every seed's metrics again.
    assert train_main(["--config", path, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["config"] == best["config"]
    assert again["seeds"] == best["seeds"] == [0, 1, 2, 3]
    assert again["metric"] == "val_acc" and again["value"] == pytest.approx(best["value"])
    for ours, theirs in zip(again["seed_metrics"], best["seed_metrics"], strict=True):
        for key in ("val_acc", "test_acc", "test_agreement", "train_loss", "train_nc1"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
    # The table says the same, beside best.json's value.
    assert train_main(["--config", path]) == 0
    out = capsys.readouterr().out
    assert "seed 3" in out and "mean" in out
    value = f"{best['value']:.4f}"
    assert f"val_acc {value}: the mean over seeds 0, 1, 2, 3; best.json: {value}" in out
    # --seed picks one.
    assert train_main(["--config", path, "--seed", "2", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["config"]["seed"] == 2
    assert one["metrics"]["val_acc"] == pytest.approx(best["seed_metrics"][2]["val_acc"])


def test_no_library_log_line_and_no_cut_table(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    argv = ["--out", str(tmp_path), "--study", "smoke", "--trials", "2"]
    # the bare command (--workers auto): its worker processes must stay quiet too
    assert search_main(argv) == 0  # stdout is a pipe here: plain lines, then the table
    out, err = capfd.readouterr()
    assert "A new study created" not in out + err and "[I 20" not in out + err, out + err
    assert "[W 20" not in out + err and "Warning" not in err, err
    header = next(line for line in out.splitlines() if "val_acc" in line and "┃" in line)
    assert "test_agreement" in header and "test_ece" in header and "…" not in out


@pytest.mark.parametrize("main", [train_main, search_main, ablate_main])
def test_version_on_every_command(main, capsys: pytest.CaptureFixture[str]) -> None:
    from dgkd import __version__

    with pytest.raises(SystemExit) as exc:
        code = main(["--version"])
        raise SystemExit(code)
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out.strip().endswith(__version__)
