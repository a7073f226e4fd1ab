"""``make mutate``'s configuration names files and tests that exist, and its plugin orders a
mutant's tests so that a killed mutant is found fast.

mutmut fails its whole run, after minutes of generating mutants, when one selected test id is
stale (a renamed test), and a mutated file that no longer exists silently drops out of the core.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from scripts.mutate import CORE

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_selected_test_exists() -> None:
    for entry in MUTMUT["pytest_add_cli_args_test_selection"]:
        path, _, name = entry.partition("::")
        assert (ROOT / path).is_file(), f"{entry}: no such file"
        if name:
            assert name in _functions(ROOT / path), f"{entry}: no such test"


def test_every_core_pattern_names_a_mutated_file() -> None:
    mutated = [
        str(p.relative_to(ROOT).with_suffix("")).replace("/", ".")
        for pattern in MUTMUT["only_mutate"]
        for p in ROOT.glob(pattern)
        if p.suffix == ".py"
    ]
    assert mutated
    for pattern in CORE:
        module = pattern.split(".x")[0].removesuffix(".*")
        assert any(
            m == module or m.startswith(module + ".") or fnmatch.fnmatchcase(m, module)
            for m in mutated
        ), f"{pattern}: its module is not under only_mutate"


def test_a_mutants_tests_run_its_own_file_first_training_last_and_the_fastest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from scripts import mutate_plugin

    ids = [
        "tests/test_train.py::test_protocol",  # trains: last
        "tests/search/test_seeds.py::test_slow_search",
        "tests/test_stats.py::test_other_module",
        "tests/search/test_seeds.py::test_fast_unit",
        "tests/search/test_seeds.py::test_untimed",
    ]
    durations = {ids[0]: 0.1, ids[1]: 7.0, ids[2]: 0.5, ids[3]: 0.2}
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    monkeypatch.chdir(tmp_path)  # mutmut runs a mutant's tests in mutants/, beside its stats
    monkeypatch.setenv("MUTANT_UNDER_TEST", "dgkd.search.seeds.x_trial_seeds__mutmut_3")
    mutate_plugin._durations.cache_clear()
    items = [SimpleNamespace(nodeid=i) for i in ids]
    mutate_plugin.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    mutate_plugin._durations.cache_clear()
    assert [i.nodeid for i in items] == [ids[4], ids[3], ids[1], ids[2], ids[0]]


def _offline_mutate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, Path]:
    """``scripts.mutate`` reading its results from ``tmp_path / "mutants"``, with mutmut's
    exit-code verdicts faked (the mutate extra is not installed for the suite)."""
    import sys
    from types import SimpleNamespace

    from scripts import mutate

    codes = {None: "not checked", 0: "survived", 1: "killed"}
    verdicts = SimpleNamespace(status_by_exit_code=codes)
    monkeypatch.setitem(sys.modules, "mutmut", SimpleNamespace(stats=verdicts))
    monkeypatch.setitem(sys.modules, "mutmut.stats", verdicts)
    mutants = tmp_path / "mutants"
    monkeypatch.setattr(mutate, "MUTANTS", mutants)
    monkeypatch.setattr(mutate, "_mutmut", lambda: "mutmut")
    monkeypatch.setattr(mutate, "_diff", lambda name: "")
    return mutate, mutants


def _meta(mutants: Path, codes: dict[str, int | None]) -> None:
    (mutants / "dgkd").mkdir(parents=True, exist_ok=True)
    (mutants / "dgkd" / "stats.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))


def test_a_resumed_run_checks_only_the_unchecked_mutants_and_the_survivors_then_scores_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole run takes hours: ``--resume`` continues one stopped part-way (or rechecks its
    survivors after tests were added) without running the killed mutants again."""
    mutate, mutants = _offline_mutate(tmp_path, monkeypatch)
    assert mutate.main(["--resume"]) == 2  # nothing to resume yet
    assert "run it without --resume first" in capsys.readouterr().out

    killed, survivor, unchecked = (f"dgkd.stats.x_holm__mutmut_{i}" for i in (1, 2, 3))
    _meta(mutants, {killed: 1, survivor: 0, unchecked: None})
    ran: list[list[str]] = []

    def stopped(args: list[str], log: Path, *, append: bool) -> int:
        ran.append(args)
        return 130  # Ctrl-C: mutmut recorded nothing new

    monkeypatch.setattr(mutate, "_run_mutmut", stopped)
    assert mutate.main(["--resume"]) == 130
    assert "stopped: 2 of 3 mutants checked; --resume continues" in capsys.readouterr().out

    def finished(args: list[str], log: Path, *, append: bool) -> int:
        assert append  # the log of the earlier parts is kept
        ran.append(args)
        _meta(mutants, {killed: 1, survivor: 1, unchecked: 0})  # the new test kills it
        return 0

    monkeypatch.setattr(mutate, "_run_mutmut", finished)
    assert mutate.main(["--resume", "--fail-under", "50"]) == 0
    assert [args[-2:] for args in ran] == [[survivor, unchecked]] * 2  # never the killed one
    out = capsys.readouterr().out
    assert "resuming: 1 of 3 mutants killed already" in out
    assert "mutation score: 2 killed of 3 (66.7%)" in out


def test_a_resumed_run_also_checks_the_mutants_of_functions_changed_since_the_last_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mutmut regenerates a changed function's mutants when it starts, after ``--resume`` chose
    what to run: those come unchecked out of the first pass and get a second one."""
    mutate, mutants = _offline_mutate(tmp_path, monkeypatch)
    kept, survivor, changed = (f"dgkd.stats.x_holm__mutmut_{i}" for i in (1, 2, 3))
    _meta(mutants, {kept: 1, survivor: 0, changed: 1})
    ran: list[list[str]] = []

    def run(args: list[str], log: Path, *, append: bool) -> int:
        ran.append(args[3:])
        if len(ran) == 1:  # the changed function's mutant is reset as mutmut starts
            _meta(mutants, {kept: 1, survivor: 1, changed: None})
        else:
            _meta(mutants, {kept: 1, survivor: 1, changed: 1})
        return 0

    monkeypatch.setattr(mutate, "_run_mutmut", run)
    assert mutate.main(["--resume"]) == 0
    assert ran == [[survivor], [changed]]
    out = capsys.readouterr().out
    assert "mutmut: 1 mutant(s) of changed functions" in out
    assert "mutation score: 3 killed of 3 (100.0%)" in out
