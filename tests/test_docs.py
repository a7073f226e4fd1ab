"""The docs agree with the code: every command line shown in README.md and docs/*.md parses with
its command's parser (parsing only, nothing runs), and every default docs/configuration.md
quotes is the code's."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from dgkd import cli
from dgkd.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSERS = {
    "dgkd-train": cli._train_parser,
    "dgkd-search": cli._search_parser,
    "dgkd-ablate": cli._ablate_parser,
}
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def _command_lines(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, argv)`` of each dgkd command in the file's code blocks (after ``$ `` and
    environment assignments; continued lines joined; comments dropped)."""
    found, in_code, pending, start = [], False, "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.lstrip().startswith("```"):
            in_code, pending = not in_code, ""
            continue
        if not in_code:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending, start = line[:-1] + " ", start if pending else number
            continue
        pending = ""
        head = line.removeprefix("$ ").split()
        while head and _ENV.match(head[0]):
            head = head[1:]
        if not head or head[0] not in PARSERS:
            start = 0
            continue
        words = shlex.split(line.removeprefix("$ "), comments=True)
        while words and _ENV.match(words[0]):
            words = words[1:]
        if words and words[0] in PARSERS:
            found.append((start or number, words))
        start = 0
    return found


CASES = [(p, n, argv) for p in DOCS for n, argv in _command_lines(p)]


def test_the_docs_show_every_command() -> None:
    shown = {argv[0] for _, _, argv in CASES}
    assert shown == set(PARSERS)
    assert len(CASES) > 20


@pytest.mark.parametrize(
    ("path", "line", "argv"), CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES]
)
def test_each_command_line_in_the_docs_parses(path: Path, line: int, argv: list[str]) -> None:
    parser = PARSERS[argv[0]]()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exc:  # --help and --version exit 0; a usage error 2
        assert exc.code in (0, None), f"{path.name}:{line}: {' '.join(argv)}"


def _section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def _value(text: str) -> Any:
    text = text.strip().strip("`")
    if text in ("true", "false"):
        return text == "true"
    if text in ('""', "()"):
        return "" if text == '""' else ()
    try:
        return float(text)
    except ValueError:
        return text


def _same(doc: Any, code: Any) -> bool:
    if isinstance(code, bool) or isinstance(doc, bool):
        return doc == code
    if isinstance(code, int | float) and isinstance(doc, float):
        return doc == pytest.approx(float(code))
    if isinstance(code, list | tuple):
        return tuple(code) == doc
    return str(doc) == str(code)


CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_documented_config_default_is_the_codes() -> None:
    fields = _section(CONFIGURATION, "## TrainConfig fields", "## Commands")
    defaults = TrainConfig().to_dict()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", fields, flags=re.M)
    assert len(rows) > 30
    for name, text in rows:
        assert name in defaults, name
        assert _same(_value(text), defaults[name]), (name, text, defaults[name])


def _flag_rows(command: str) -> list[tuple[str, str]]:
    table = _section(CONFIGURATION, f"### `{command}`", "\n### ")
    return re.findall(r"^\| `(--[\w-]+)[^|]*\| (.*)$", table, flags=re.M)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_documented_flag_default_is_the_codes(command: str) -> None:
    from dgkd.search.records import option_default

    parser = PARSERS[command]()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    rows = _flag_rows(command)
    assert rows
    checked = 0
    for flag, rest in rows:
        assert flag in actions, f"{command} {flag} is documented but not a flag"
        match = re.search(r"\(default:? (?:`([\w.-]+)`|(-?[\d.]+)[;,) ])", rest)
        if match is None or "auto" in match.groups():
            continue
        quoted = match.group(1) or match.group(2)
        action: argparse.Action = actions[flag]
        code = action.default
        if code is None and hasattr(TrainConfig(), action.dest):
            code = getattr(TrainConfig(), action.dest)
        if code is None:
            try:
                code = option_default(action.dest)
            except (KeyError, AttributeError, TypeError):
                continue
        if code is None:  # no default of its own (e.g. RAY_ADDRESS)
            continue
        assert _same(_value(quoted), code), (command, flag, quoted, code)
        checked += 1
    assert checked >= 2
