"""``scripts/trial_noise.py``: one config as a trial on disjoint seed sets, and their spread."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "trial_noise.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trial_noise", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sets_are_disjoint_trials_and_their_spread_is_reported(tmp_path: Path) -> None:
    args = ["--study", "smoke", "--sets", "3", "--out", str(tmp_path)]
    assert _script().main(args) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    sets = result["sets"]
    assert sets == [[20000, 20001, 20002, 20003], [20004, 20005, 20006, 20007],
                    [20008, 20009, 20010, 20011]]  # fmt: skip
    assert result["params"] == {"epsilon": 0.0} and len(result["values"]) == 3
    assert result["std_of_trial_value"] == pytest.approx(statistics.stdev(result["values"]))


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "--sets": ["--sets", "1"],
        "nope": ["--study", "nope"],
        "epochs": ["--set", "epochs=0"],
    }
    for word, args in cases.items():
        with pytest.raises(SystemExit) as info:
            _script().main([*args, "--out", str(tmp_path)])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "error:" in err[-1] and word in err[-1], err
    assert not list(tmp_path.iterdir())
