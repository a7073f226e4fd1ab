"""Search spaces: which ``TrainConfig`` fields a search varies, and over what range.

A space is a TOML file with one table per parameter, e.g. ``search_spaces/eps.toml``::

    [epsilon]              # searched
    type = "float"
    low = 0.0
    high = 10.0

    [alpha]                # fixed: applied to every trial, never searched
    value = 1.0

Keys of a searched parameter: ``type`` (float, int or categorical), ``low``/``high`` (inclusive),
``log`` (sample on a log scale), ``step`` (a grid spacing) or ``choices`` (categorical). A fixed
parameter has ``value`` and optionally ``type``. Parameter names are ``TrainConfig`` fields. Every
mistake is reported as ``<file>: <param>.<key>: <reason>`` so it can be fixed without guessing.
"""

from __future__ import annotations

import importlib.resources
import math
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PARAM_TYPES",
    "Param",
    "Space",
    "SpecError",
    "available",
    "load_space",
    "read_toml",
    "resolve_file",
    "space_from_table",
]

PARAM_TYPES = ("float", "int", "categorical")
_PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "value")


class SpecError(ValueError):
    """A space or study file is invalid: ``"<file>: <key>: <reason>"``."""


@dataclass(frozen=True)
class Param:
    """One ``TrainConfig`` field: searched over a range or choices, or fixed at ``value``."""

    name: str
    type: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: Any = None  # a fixed value: not searched

    @property
    def fixed(self) -> bool:
        """True when the parameter has a fixed value and is not searched."""
        return self.value is not None

    def distribution(self):
        """The Optuna distribution of a searched parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.fixed:
            raise ValueError(f"parameter {self.name} is fixed; it has no distribution")
        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return CategoricalDistribution(self.choices)

    def grid(self) -> list[Any] | None:
        """Every value of a discrete parameter (for the grid sampler); None if continuous."""
        if self.fixed:
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        low, high = self._range()
        if self.type == "int":
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = round((high - low) / self.step)
        return [round(low + i * self.step, 12) for i in range(n + 1)]

    def _range(self) -> tuple[float | int, float | int]:
        """``(low, high)`` of a float or int parameter (loading guarantees both are set)."""
        if self.low is None or self.high is None:
            raise SpecError(f"{self.name}: a float or int parameter needs low and high")
        return self.low, self.high

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this parameter's range (for enqueued trials)."""
        if self.fixed:
            return value == self.value
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        low, high = self._range()
        if not low <= value <= high:
            return False
        if self.step is not None:
            k = (value - low) / self.step
            return abs(k - round(k)) < 1e-8
        return True


@dataclass(frozen=True)
class Space:
    """A named set of parameters read from ``source``."""

    name: str
    source: str  # file path it was read from
    params: tuple[Param, ...]

    def searched(self) -> tuple[Param, ...]:
        """The parameters a search varies (not fixed)."""
        return tuple(p for p in self.params if not p.fixed)

    def fixed_values(self) -> dict[str, Any]:
        """``{name: value}`` of the fixed parameters, applied to every trial."""
        return {p.name: p.value for p in self.params if p.fixed}

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the searched parameters, by name."""
        return {p.name: p.distribution() for p in self.searched()}

    def suggest(self, trial) -> dict[str, Any]:
        """Ask an Optuna trial for a value of every searched parameter."""
        out: dict[str, Any] = {}
        for p in self.searched():
            if p.type == "float":
                out[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
            elif p.type == "int":
                out[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        return out

    def grid(self) -> dict[str, list[Any]] | None:
        """The grid sampler's search space, or None when a searched float has no ``step``."""
        grid = {p.name: p.grid() for p in self.searched()}
        return (
            {k: v for k, v in grid.items() if v is not None} if None not in grid.values() else None
        )

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def available(kind: str) -> list[str]:
    """Names of the packaged ``search_spaces``, ``studies`` or ``suites`` (sorted)."""
    root = importlib.resources.files("dgkd") / kind
    try:
        return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def resolve_file(name_or_path: str | Path, kind: str, *, relative_to: Path | None = None) -> Path:
    """A packaged ``<kind>/<name>.toml`` by name, or a path to a ``.toml`` file.

    Raises:
        SpecError: no such file or name; the message lists the packaged names.
    """
    text = str(name_or_path)
    label = {"studies": "study", "suites": "suite"}.get(kind, "search space")
    if text.endswith(".toml") or "/" in text or "\\" in text:
        path = Path(text).expanduser()
        if not path.is_absolute() and relative_to is not None and not path.exists():
            path = relative_to / path
        if not path.is_file():
            raise SpecError(f"{label} file {text} not found")
        return path
    resource = importlib.resources.files("dgkd") / kind / f"{text}.toml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", text) or not resource.is_file():
        names = ", ".join(available(kind)) or "none"
        raise SpecError(f"unknown {label} {text!r}; choose one of: {names}, or a path to a .toml")
    return Path(str(resource))


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes ``SpecError("<file>: line N: <reason>")``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            reason = msg[: m.start()].strip()
            raise SpecError(f"{path}: line {m[1]}: {reason} (column {m[2]})") from None
        raise SpecError(f"{path}: {msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None


def load_space(name_or_path: str | Path, *, relative_to: Path | None = None) -> Space:
    """Read and validate a search space by packaged name or ``.toml`` path.

    Raises:
        SpecError: unknown name, malformed TOML, unknown key, wrong type or bad bounds.
    """
    path = resolve_file(name_or_path, "search_spaces", relative_to=relative_to)
    return space_from_table(path.stem, read_toml(path), str(path))


def space_from_table(name: str, table: dict[str, Any], source: str) -> Space:
    """Validate a parsed space table (``{param: {key: value}}``) into a :class:`Space`."""
    from dgkd.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    if not table:
        raise SpecError(f"{source}: the space has no parameters")
    params = []
    for pname, spec in table.items():
        where = f"{source}: {pname}"
        if pname not in hints:
            raise SpecError(f"{where}: unknown config field; see TrainConfig in dgkd/config.py")
        if not isinstance(spec, dict):
            raise SpecError(f"{where}: must be a table like [{pname}] with type, low, high")
        params.append(_param(pname, spec, hints[pname], where))
    return Space(name=name, source=source, params=tuple(params))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param(name: str, spec: dict[str, Any], kind: Any, where: str) -> Param:
    unknown = sorted(set(spec) - set(_PARAM_KEYS))
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(_PARAM_KEYS)}")
    ptype = spec.get("type")
    if ptype is not None and ptype not in PARAM_TYPES:
        raise SpecError(f"{where}.type: must be one of {', '.join(PARAM_TYPES)}, got {ptype!r}")
    if "value" in spec:
        return _fixed(name, spec, ptype, kind, where)
    if ptype is None:
        raise SpecError(f"{where}: needs type (float, int or categorical) or a fixed value")
    if ptype == "categorical":
        return _categorical(name, spec, kind, where)
    return _numeric(name, spec, ptype, kind, where)


def _fixed(name: str, spec: dict[str, Any], ptype: str | None, kind: Any, where: str) -> Param:
    extra = sorted(set(spec) - {"type", "value"})
    if extra:
        raise SpecError(f"{where}.{extra[0]}: a fixed parameter (value = ...) takes no {extra[0]}")
    value = spec["value"]
    if isinstance(value, list):
        value = tuple(value)
    _check_field_type(value, kind, f"{where}.value")
    if (ptype == "float" and not _is_num(value)) or (ptype == "int" and not isinstance(value, int)):
        raise SpecError(f"{where}.value: must be a {ptype}, got {value!r}")
    inferred = ptype or ("int" if isinstance(value, int) and not isinstance(value, bool) else None)
    inferred = inferred or ("float" if _is_num(value) else "categorical")
    return Param(name=name, type=inferred, value=value)


def _categorical(name: str, spec: dict[str, Any], kind: Any, where: str) -> Param:
    extra = sorted(set(spec) - {"type", "choices"})
    if extra:
        raise SpecError(f"{where}.{extra[0]}: a categorical parameter takes only choices")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpecError(f"{where}.choices: must be a non-empty list, e.g. choices = [1, 2]")
    for c in choices:
        if not isinstance(c, (bool, int, float, str)):
            raise SpecError(f"{where}.choices: values must be numbers, strings or booleans")
        _check_field_type(c, kind, f"{where}.choices")
    if len(set(map(repr, choices))) != len(choices):
        raise SpecError(f"{where}.choices: values must be distinct")
    return Param(name=name, type="categorical", choices=tuple(choices))


def _numeric(name: str, spec: dict[str, Any], ptype: str, kind: Any, where: str) -> Param:
    if "choices" in spec:
        raise SpecError(f"{where}.choices: only for type = 'categorical'")
    if kind not in (int, float) or (ptype == "float" and kind is int):
        use = 'type = "int"' if kind is int else 'type = "categorical" or a fixed value'
        raise SpecError(f"{where}.type: {name} is {_kind_name(kind)} field; use {use}")
    check = (
        (lambda v: isinstance(v, int) and not isinstance(v, bool)) if ptype == "int" else _is_num
    )
    for key in ("low", "high"):
        if key not in spec:
            raise SpecError(f"{where}.{key}: missing; a {ptype} parameter needs low and high")
        if not check(spec[key]) or not math.isfinite(spec[key]):
            raise SpecError(f"{where}.{key}: must be a finite {ptype}, got {spec[key]!r}")
    low, high = spec["low"], spec["high"]
    if ptype == "float":
        low, high = float(low), float(high)
    if not low < high:
        raise SpecError(f"{where}: low ({low}) must be below high ({high}); use value = ...")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{where}.log: must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpecError(f"{where}.low: must be > 0 with log = true, got {low}")
    step = spec.get("step")
    if step is not None:
        if not check(step) or not step > 0:
            raise SpecError(f"{where}.step: must be a positive {ptype}, got {step!r}")
        if log and (ptype == "float" or step != 1):
            raise SpecError(f"{where}.step: cannot be combined with log = true")
        k = (high - low) / step
        if abs(k - round(k)) > 1e-8:
            raise SpecError(f"{where}.step: high - low ({high - low:g}) is not a multiple of it")
        step = float(step) if ptype == "float" else int(step)
    return Param(name=name, type=ptype, low=low, high=high, log=log, step=step)


def _check_field_type(value: Any, kind: Any, where: str) -> None:
    """A value must convert to the config field's type (strings for lists are allowed)."""
    from dgkd.config import ConfigError, coerce

    name = where.split(": ", 1)[-1].split(".")[0]
    if (kind is float and not _is_num(value)) or (kind is int and not isinstance(value, int)):
        raise SpecError(f"{where}: {name} is {_kind_name(kind)} field, got {value!r}")
    if kind in (str, bool) and not isinstance(value, kind):
        raise SpecError(f"{where}: {name} is {_kind_name(kind)} field, got {value!r}")
    if isinstance(value, bool) and kind is not bool:
        raise SpecError(f"{where}: {name} is not a boolean field, got {value!r}")
    try:
        coerce(name, value, kind)
    except ConfigError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _kind_name(kind: Any) -> str:
    names = {int: "an integer", float: "a float", str: "a string", bool: "a boolean"}
    return names.get(kind, "a list")
