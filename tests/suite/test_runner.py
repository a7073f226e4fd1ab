"""``dgkd-ablate --suite``: every setup's ablation, the files across them, resume, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import TINY_POOL_ARGS

from dgkd.cli import ablate_main

TINY = "epochs = 2, teacher_epochs = 2, val_pool = 200, test_pool = 400"
# Four tiny setups: two teachers, three students, two architectures.
SUITE = f"""
description = "four tiny pairs"
[[setup]]
name = "w64-w24"
set = {{ {TINY} }}
[[setup]]
name = "w64-w8"
description = "a narrow student"
set = {{ {TINY}, student_width = 8 }}
[[setup]]
name = "w64-mlp"
set = {{ {TINY}, student = "mlp", student_width = 16 }}
[[setup]]
name = "w16-w8"
set = {{ {TINY}, teacher_width = 16, student_width = 8 }}
"""
ARGS = ["--variants", "no_grad_term", "--seeds", "2", "--teachers", "1", "--workers", "1",
        "--quiet"]  # fmt: skip


def _suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_suite_writes_each_setup_and_the_tables_across_them(tmp_path, capsys):
    out = tmp_path / "runs"
    code = ablate_main(["--suite", str(_suite(tmp_path)), *ARGS, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    d = out / "ablate" / "tiny"
    setups = ["w64-w24", "w64-w8", "w64-mlp", "w16-w8"]
    for name in setups:  # each setup is an ordinary ablation in its own directory
        assert len(_rows(d / name / "runs.csv")) == 4  # 2 variants x 2 seeds
        assert (d / name / "summary.md").is_file()
    rows = _rows(d / "suite.csv")
    assert {"setup", "variant", "delta", "ci_low", "ci_high", "p_holm", "verdict"} <= set(rows[0])
    acc = [r for r in rows if r["metric"] == "test_acc" and r["variant"] == "no_grad_term"]
    assert [r["setup"] for r in acc] == [*setups, "all"]
    # each setup's row is its own ablation's difference, read back from its summary.csv
    for r in acc[:-1]:
        summary = {s["variant"]: s for s in _rows(d / r["setup"] / "summary.csv")}
        assert float(r["delta"]) == pytest.approx(float(summary["no_grad_term"]["test_acc_delta"]))
    # the aggregate weighs every setup once
    mean = sum(float(r["delta"]) for r in acc[:-1]) / 4
    assert float(acc[-1]["delta"]) == pytest.approx(mean)
    assert acc[-1]["n_setups"] == "4" and acc[-1]["n_pairs"] == "8"
    md = (d / "suite.md").read_text()
    assert all(f"| {name} " in md.replace("`", "") or name in md for name in setups)
    assert "across 4 setups" in md and "three-level bootstrap" in md
    assert (d / "suite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((d / "suite.json").read_text())
    assert [s["name"] for s in info["setups"]] == setups
    assert "across 4 setups" in captured.out  # the aggregate sentence on the terminal


def test_bad_setup_is_refused_before_anything_runs(tmp_path, capsys):
    text = SUITE.replace('name = "w16-w8"', 'name = "w16-w8"\nstudy = "nope"')
    out = tmp_path / "runs"
    code = ablate_main(["--suite", str(_suite(tmp_path, text)), *ARGS, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "setup 'w16-w8'" in err and "unknown study 'nope'" in err and "\n" not in err
    assert not out.exists()  # nothing trained, nothing written


def test_setup_config_refused_by_the_ablation_names_the_setup(tmp_path, capsys):
    text = SUITE.replace("student_width = 8 }", 'student_width = 8, method = "kd" }', 1)
    code = ablate_main(["--suite", str(_suite(tmp_path, text)), *ARGS, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "setup 'w64-w8'" in err and "method 'kd'" in err
    assert not (tmp_path / "ablate").exists()


def test_unknown_suite_and_list(capsys):
    assert ablate_main(["--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert ablate_main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "mnist1d_pairs" in listed and "cnn64-mlp" in listed and "eps_sweep" in listed


def test_suite_and_study_are_exclusive(capsys):
    assert ablate_main(["--suite", "mnist1d_pairs", "--study", "smoke"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_sigkilled_suite_resumes_where_it_stopped(tmp_path):
    """A suite killed during its second setup keeps the first setup's cells and finishes the
    rest on the rerun, without training a finished cell again."""
    suite = _suite(tmp_path)
    out = tmp_path / "runs"
    argv = ["--suite", str(suite), *ARGS, "--out", str(out)]
    entry = "import sys; from dgkd.cli import ablate_main; sys.exit(ablate_main(sys.argv[1:]))"
    first = out / "ablate" / "tiny" / "w64-w24" / "summary.csv"
    proc = subprocess.Popen([sys.executable, "-c", entry, *argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not first.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first setup did not finish in time"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup
    proc.wait()
    cells = out / "ablate" / "tiny" / "w64-w24" / "cells"
    kept = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert len(kept) == 4
    assert not (out / "ablate" / "tiny" / "suite.csv").exists()  # written only when all finished
    assert ablate_main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")} == kept  # not rerun
    rows = _rows(out / "ablate" / "tiny" / "suite.csv")
    assert {r["setup"] for r in rows} == {"w64-w24", "w64-w8", "w64-mlp", "w16-w8", "all"}


def test_python_api_runs_a_suite(tmp_path):
    from dgkd import AblationOptions, load_suite, run_suite

    suite = load_suite(_suite(tmp_path))
    opts = AblationOptions(variants=("no_grad_term",), n_seeds=2, teachers=1, workers=1,
                           out_dir=tmp_path / "runs")  # fmt: skip
    result = run_suite(suite, opts, overrides={"epochs": 1})
    assert [s.name for s, _ in result.ablations] == [s.name for s in suite.setups]
    assert all(r.base.config.epochs == 1 for _, r in result.ablations)  # --set wins
    assert result.ran == 16 and result.reused == 0
    again = run_suite(suite, opts, overrides={"epochs": 1})
    assert again.ran == 0 and again.reused == 16
    assert again.rows == result.rows


def test_tiny_pool_args_reach_every_setup(tmp_path, capsys):
    """--set applies to every setup, after the setup's own values."""
    text = SUITE.replace("val_pool = 200", "val_pool = 100")
    argv = ["--suite", str(_suite(tmp_path, text)), *ARGS, "--out", str(tmp_path),
            *TINY_POOL_ARGS, "--set", "epochs=1"]  # fmt: skip
    assert ablate_main(argv) == 0, capsys.readouterr().err
    for name in ("w64-w24", "w16-w8"):
        cfg = json.loads((tmp_path / "ablate" / "tiny" / name / "config.json").read_text())
        assert cfg["base"]["config"]["val_pool"] == 200 and cfg["base"]["config"]["epochs"] == 1
