"""The registry of distillation methods: what a config's ``method`` names.

A config's ``method`` is resolved, in order, as

* a registered name: the built-ins ``ce``, ``kd``, ``dkd``, ``dgkd`` (:mod:`.builtin`) and the
  methods shipped as plugins are, such as ``kd_ls`` (:mod:`.standardized`);
* an installed package's method: an entry point of group ``dgkd.methods`` whose name is the
  method's and whose object is a :class:`Method`;
* ``module:ATTR``: the :class:`Method` ``ATTR`` of a module importable from the working
  directory or ``PYTHONPATH`` (a method of your own in one file: docs/methods.md).

Torch-free: a method's module is imported only when a config names it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys

from dgkd.errors import one_line
from dgkd.methods.base import Loss, Method, MethodError
from dgkd.methods.builtin import BUILTINS

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "Loss",
    "Method",
    "MethodError",
    "builtin_fields",
    "get",
    "names",
]

ENTRY_POINT_GROUP = "dgkd.methods"
# Methods that ship with the package but are written as plugins: imported when first named.
_SHIPPED = {"kd_ls": "dgkd.methods.standardized:KD_LS"}


def names() -> tuple[str, ...]:
    """Every method a config may name without ``module:ATTR``: the built-ins, the shipped
    plugins and the installed packages' entry points."""
    return (*BUILTINS, *_SHIPPED, *sorted(set(_entry_points()) - set(BUILTINS) - set(_SHIPPED)))


def get(name: str) -> Method:
    """The method ``name`` stands for (see the module's docstring for the forms).

    Raises:
        MethodError: nothing by that name, or the reference does not import or is no
            :class:`Method`; the message is one line.
    """
    found = BUILTINS.get(name)
    if found is not None:
        return found
    if name in _SHIPPED:
        return _reference(_SHIPPED[name], name)
    if ":" in name:
        return _reference(name, name)
    point = _entry_points().get(name)
    if point is None:
        raise MethodError(
            f"method must be one of {', '.join(BUILTINS)}, got {name!r}; other methods: "
            f"{', '.join(_SHIPPED)}, an entry point of group {ENTRY_POINT_GROUP}, or module:ATTR"
        )
    try:
        loaded = point.load()
    except Exception as exc:
        raise MethodError(f"method {name!r}: entry point {point.value}: {one_line(exc)}") from None
    return _checked(loaded, name, f"entry point {point.value}")


def builtin_fields() -> dict[str, tuple[str, ...]]:
    """Each loss setting (a config field some built-in's loss reads, or ``warmup``) and the
    built-ins it changes: under any other method a value changes nothing."""
    out: dict[str, tuple[str, ...]] = {}
    for method in BUILTINS.values():
        for name in method.fields:
            out[name] = (*out.get(name, ()), method.name)
    return out


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {p.name: p for p in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _reference(ref: str, name: str) -> Method:
    """Import ``module:ATTR`` (``ATTR`` may be dotted), with the working directory importable
    as it is for ``python -m`` (a console script's path lacks it)."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise MethodError(f"method {name!r}: expected module:ATTR, e.g. mykd:METHOD")
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: object = importlib.import_module(module)
    except Exception as exc:
        raise MethodError(f"method {name!r}: cannot import {module}: {one_line(exc)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise MethodError(f"method {name!r}: module {module} has no attribute {attr}")
        obj = getattr(obj, part)
    return _checked(obj, name, ref)


def _checked(obj: object, name: str, where: str) -> Method:
    if not isinstance(obj, Method):
        raise MethodError(
            f"method {name!r}: {where} is a {type(obj).__name__}, not a dgkd.methods.Method"
        )
    if obj.fused is not None:
        raise MethodError(f"method {name!r}: fused kernels are the built-ins'; leave it None")
    return obj
