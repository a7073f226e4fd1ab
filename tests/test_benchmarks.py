"""The benchmark entry point runs end to end in quick mode (speed is not asserted here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.__main__ import main


def test_quick_mode_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in (
        "Gradient term",
        "overhead per training step",
        "One trial",
        "Memory",
        "Profile",
        "Search",
    ):
        assert heading in text
    assert "speed-up at (64, 100)" in text and "DGKD/CE" in text
    assert "MiB peak RSS" in text
    assert "2 cores" in text or "cores" in text  # the machine description is recorded
    assert "aten ops per call" in text and "dgkd step: loss forward" in text
    assert "median pruner" in text and "2 workers / 1 worker" in text


def test_bad_counts_are_one_line_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--search-trials", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m benchmarks: error: --search-trials must be >= 1"]
    assert not out.exists()


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--device", "cuda", "--only", "loss", "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()
