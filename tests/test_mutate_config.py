"""``make mutate``'s configuration names files and tests that exist.

mutmut fails its whole run, after minutes of generating mutants, when one selected test id is
stale (a renamed test), and a mutated file that no longer exists silently drops out of the core.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

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
