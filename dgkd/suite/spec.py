"""Suites as data: ``suites/<name>.toml``, a named list of setups (teacher-student pairs).

A suite file holds a ``description`` and one ``[[setup]]`` table per setup::

    description = "MNIST-1D teacher-student pairs"

    [[setup]]
    name = "cnn64-cnn16"
    description = "the default teacher, a width-16 student"
    study = "eps_sweep"               # optional: start from the study's base config
    set = { student_width = 16 }      # optional: fields of the config, applied on top

Each setup's config is the defaults (or its study's base), then its ``set``, then the command
line's ``--set``. Torch-free: ``dgkd-ablate --list`` and every check here run before torch loads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dgkd.config import ConfigError, coerce, field_names
from dgkd.space import SpecError, available, read_toml, resolve_file

__all__ = ["Setup", "Suite", "SuiteError", "available_suites", "load_suite"]

_KEYS = ("description", "setup")
_SETUP_KEYS = ("name", "description", "study", "set")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SuiteError(SpecError):
    """A suite file is invalid: ``"<file>: <where>: <reason>"``; exit code 2."""


@dataclass(frozen=True)
class Setup:
    """One setup of a suite: a name, and where its base config comes from."""

    name: str
    description: str = ""
    study: str | None = None  # a study whose base config the setup starts from
    overrides: Mapping[str, Any] = field(default_factory=dict)  # typed config fields


@dataclass(frozen=True)
class Suite:
    """A named list of setups that one ablation runs in turn (:func:`dgkd.suite.run_suite`)."""

    name: str
    description: str
    setups: tuple[Setup, ...]
    path: Path


def available_suites() -> list[str]:
    """Names of the packaged suites."""
    return available("suites")


def load_suite(name_or_path: str | Path) -> Suite:
    """Read and check a suite by packaged name or ``.toml`` path.

    Every setup's study must exist and every ``set`` key must be a config field with a value of
    its type, so a typo is refused before anything trains.

    Raises:
        SuiteError: unknown name, malformed TOML, an unknown key, study or field, a bad value,
            no setups, or two setups of one name.
    """
    try:
        path = resolve_file(name_or_path, "suites")
        data = read_toml(path)
    except SpecError as exc:
        raise SuiteError(str(exc)) from None
    src = str(path)
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise SuiteError(f"{src}: {unknown[0]}: unknown key; allowed: {', '.join(_KEYS)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{src}: description: must be a string")
    tables = data.get("setup", [])
    if not isinstance(tables, list) or not tables:
        raise SuiteError(f"{src}: no setups; add one [[setup]] table per teacher-student pair")
    setups = tuple(_setup(src, i, t) for i, t in enumerate(tables))
    names = [s.name for s in setups]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SuiteError(f"{src}: setup {twice[0]!r} is named twice; setup names must differ")
    name = path.stem if str(name_or_path).endswith(".toml") else str(name_or_path)
    return Suite(name, " ".join(description.split()), setups, path)


def _setup(src: str, index: int, table: Any) -> Setup:
    """One ``[[setup]]`` table, checked."""
    where = f"{src}: setup {index + 1}"
    if not isinstance(table, dict):
        raise SuiteError(f"{where}: must be a table ([[setup]])")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SuiteError(
            f"{where}: name: must be a plain directory name (letters, digits, '_', '.', '-'), "
            f"got {name!r}"
        )
    where = f"{src}: setup {name!r}"
    unknown = sorted(set(table) - set(_SETUP_KEYS))
    if unknown:
        raise SuiteError(f"{where}: {unknown[0]}: unknown key; allowed: {', '.join(_SETUP_KEYS)}")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{where}: description: must be a string")
    study = table.get("study")
    if study is not None:
        from dgkd.study import load_study  # torch-free

        if not isinstance(study, str):
            raise SuiteError(f"{where}: study: must be a study name, got {study!r}")
        try:
            load_study(study)
        except SpecError as exc:
            raise SuiteError(f"{where}: {exc}") from None
    raw = table.get("set", {})
    if not isinstance(raw, dict):
        raise SuiteError(
            f"{where}: set: must be a table of config fields, e.g. set = {{ lr = 0.01 }}"
        )
    overrides: dict[str, Any] = {}
    fields = set(field_names())
    for key, value in raw.items():
        if key not in fields:
            raise SuiteError(f"{where}: set: unknown config field {key!r}; see 'dgkd-train --help'")
        if key == "seed":
            raise SuiteError(
                f"{where}: set: seed has no effect in a suite (every setup runs seeds 0..N-1)"
            )
        try:
            overrides[key] = coerce(key, value)
        except ConfigError as exc:
            raise SuiteError(f"{where}: set: {exc}") from None
    return Setup(name, " ".join(description.split()), study, overrides)
