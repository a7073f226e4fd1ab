"""The package's shape: no import cycles, torch-free entry points, a public API, size limits."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dgkd

ROOT = Path(dgkd.__file__).parent
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every dgkd module ``path`` imports, anywhere in the file (functions included).

    ``from a import b`` counts as an import of ``a.b`` when that is a module, else of ``a``.
    Parent packages a submodule import runs implicitly are not counted.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_function_level_imports_are_edges(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from dgkd import loop\n    from . import io\n")
    found = _imports("dgkd.m", src, {"dgkd.loop", "dgkd.io", "dgkd"})
    assert found == {"dgkd.loop", "dgkd.io"}


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_over_the_size_limit() -> None:
    sizes = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


ENTRY_POINTS = (
    "import dgkd, dgkd.config, dgkd.space, dgkd.study, dgkd.suite, dgkd.cli",
    *(
        f"from dgkd.cli import {main}\ntry:\n    {main}(['--help'])\nexcept SystemExit:\n    pass"
        for main in ("train_main", "search_main", "ablate_main")
    ),
    "from dgkd.cli import ablate_main\nablate_main(['--list'])",
)


@pytest.mark.parametrize(
    "code", ENTRY_POINTS, ids=["modules", "train", "search", "ablate", "ablate-list"]
)
def test_entry_points_import_no_torch(code: str) -> None:
    heavy = "('torch', 'ray', 'optuna')"
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_public_api_names_resolve() -> None:
    assert set(dgkd.__all__) == {"__version__", *dgkd._EXPORTS}
    for name in dgkd.__all__:
        assert getattr(dgkd, name) is not None, name
    assert {"TrainConfig", "train", "TrainResult", "dgkd_loss", "load_study"} <= set(dgkd.__all__)
