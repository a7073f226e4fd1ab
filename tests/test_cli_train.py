"""Tests for ``dgkd-train`` run in-process: output formats, exit codes and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from contracts import FINAL_METRICS
from fakes import TINY_POOL_ARGS

from dgkd.cli import train_main
from dgkd.loop import DivergedError

TINY = ["--set", "epochs=2", "--set", "teacher_epochs=2", *TINY_POOL_ARGS]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a failed command (asserts there is exactly one)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("dgkd-train: error: ")
    return lines[0]


def test_json_output(capsys) -> None:
    code = train_main(["--json", "--method", "dkd", "--alpha", "2", *TINY])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object, nothing else on stdout
    data = json.loads(lines[0])
    assert set(data) == {"config", "metrics"}
    assert data["config"]["method"] == "dkd" and data["config"]["alpha"] == 2.0
    assert data["config"]["epochs"] == 2 and data["config"]["teacher_epochs"] == 2
    assert set(data["metrics"]) == set(FINAL_METRICS)
    assert all(math.isfinite(v) for v in data["metrics"].values())


def test_json_output_has_null_for_missing_val(capsys) -> None:
    args = ["--set", "val_pool=0", "--set", "val_fraction=0", "--set", "teacher_width=16"]
    code = train_main(["--json", *TINY, *args])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["val_acc"] is None and metrics["test_acc"] > 0


def test_table_output(capsys) -> None:
    code = train_main(TINY)
    out = capsys.readouterr().out
    assert code == 0
    for key in ("test_acc", "val_acc", "test_agreement", "train_nc1", "grad_cos"):
        assert key in out
    assert not out.lstrip().startswith("{")


def test_unknown_set_key_exits_2(capsys) -> None:
    assert train_main(["--set", "bogus=1"]) == 2
    line = _error_line(capsys)
    assert "unknown config field 'bogus'" in line and "temperature" in line  # lists valid keys


def test_zero_temperature_exits_2(capsys) -> None:
    assert train_main(["--temperature", "0"]) == 2
    assert "temperature must be > 0" in _error_line(capsys)


def test_non_integer_epochs_exits_2(capsys) -> None:
    assert train_main(["--set", "epochs=abc"]) == 2
    assert "epochs must be of type int, got 'abc'" in _error_line(capsys)


def test_missing_image_dataset_exits_2(capsys, tmp_path: Path) -> None:
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    image = ["--set", "teacher=resnet8", "--set", "student=resnet8"]
    args = ["--set", "dataset=cifar10", "--set", f"data_root={empty}", *image, *TINY]
    assert train_main(args) == 2
    line = _error_line(capsys)
    assert str(empty) in line and "download" in line
    assert not any(empty.iterdir())  # nothing downloaded or half-written


def test_missing_teacher_checkpoint_exits_2(capsys, tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    assert train_main([*TINY, "--set", f"teacher_checkpoint={path}"]) == 2
    assert str(path) in _error_line(capsys)


def test_divergence_exits_1_and_debug_shows_it(capsys) -> None:
    args = [*TINY, "--set", "lr=1e30", "--set", "teacher_lr=0.01"]
    assert train_main(args) == 1
    assert "loss became nan at epoch 1" in _error_line(capsys)
    with pytest.raises(DivergedError):
        train_main([*args, "--debug"])


def test_out_saves_config_metrics_history_and_student(tmp_path: Path, capsys) -> None:
    import pandas as pd
    import torch

    from dgkd.models import build_model

    out = tmp_path / "run"
    assert train_main([*TINY, "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "history.csv", "metrics.json", "student.pt",
    ]  # fmt: skip
    saved = json.loads((out / "config.json").read_text())
    assert saved == {**printed["config"], "num_classes": 10, "input_shape": [40], "resume": None}
    assert json.loads((out / "metrics.json").read_text()) == printed["metrics"]
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and "val_acc" in history.columns
    assert history["val_acc"].iloc[-1] == pytest.approx(printed["metrics"]["val_acc"], abs=1e-6)
    cfg = printed["config"]
    model = build_model(cfg["student"], num_classes=10, input_shape=(40,),
                        width=cfg["student_width"])  # fmt: skip
    model.load_state_dict(torch.load(out / "student.pt", weights_only=True))  # strict

    # The saved config.json reruns the same run; flags change it on top.
    assert train_main(["--config", str(out / "config.json"), "--json", "--set", "seed=1"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["config"] == {**printed["config"], "seed": 1}
