"""Search backends by name: the only place that maps a ``--backend`` value to its code.

Backends are imported on first use, so that naming one never imports the other's library.
"""

from __future__ import annotations

from collections.abc import Callable

from dgkd.search.base import SearchBackend
from dgkd.search.records import SearchInputError

__all__ = ["backend_names", "get_backend", "register"]


def _optuna() -> type[SearchBackend]:
    from dgkd.search.optuna.backend import OptunaBackend

    return OptunaBackend


def _ray() -> type[SearchBackend]:
    from dgkd.search.ray.backend import RayBackend

    return RayBackend


_LOADERS: dict[str, Callable[[], type[SearchBackend]]] = {"optuna": _optuna, "ray": _ray}


def register(name: str, loader: Callable[[], type[SearchBackend]]) -> None:
    """Make ``--backend name`` run the class ``loader()`` returns (imported on first use)."""
    _LOADERS[name] = loader


def backend_names() -> tuple[str, ...]:
    """The registered backends, in registration order."""
    return tuple(_LOADERS)


def get_backend(name: str) -> SearchBackend:
    """A new instance of the backend registered as ``name``.

    Raises:
        SearchInputError: no backend has that name.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        choices = ", ".join(backend_names())
        raise SearchInputError(f"unknown backend {name!r}; choose one of: {choices}")
    return loader()()
