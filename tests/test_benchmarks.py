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


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on any machine
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--device", "cuda", "--only", "loss", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m benchmarks: error: --device cuda: no CUDA device is available"]
    assert not out.exists()


def test_cuda_runs_only_the_loss_and_step_comparisons(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--device", "cuda", "--only", "trial", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --only loss steps" in err[0]
    assert not out.exists()
