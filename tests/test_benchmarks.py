"""The benchmark entry point runs end to end in quick mode (speed is not asserted here)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.__main__ import main


def test_quick_mode_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("Gradient term", "overhead per training step", "One trial", "Memory", "Search"):
        assert heading in text
    assert "speed-up at (64, 100)" in text and "DGKD/CE" in text
    assert "MiB peak RSS" in text
    assert "2 cores" in text or "cores" in text  # the machine description is recorded
