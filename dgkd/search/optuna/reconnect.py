"""An RDB storage that survives its database server restarting: it waits and reconnects.

Every storage call that fails because the connection is gone (the server restarted, a network
blip, a failover) is retried on a fresh connection, with growing pauses, for up to
``DGKD_DB_RETRY_S`` seconds (default 300) before the error is raised. ``pool_pre_ping`` alone
only checks a connection when it is taken from the pool; a call already running when the
server goes away fails, and without this the trial (and its worker) failed with it.

A write whose commit reached the server just before the connection dropped is not repeated
blindly: finishing a trial that is already finished in the wanted state counts as done.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage

__all__ = ["RETRY_S", "ReconnectingRDBStorage", "is_connection_error"]

RETRY_S = 300.0  # how long a storage call waits for the database to come back
_F = TypeVar("_F", bound=Callable[..., Any])
_SKIP = frozenset(
    {"upgrade", "remove_session", "get_current_version", "get_head_version", "get_all_versions"}
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause, as Optuna wraps it) is a lost or refused connection."""
    from sqlalchemy import exc as sa

    for err in (exc, exc.__cause__):
        if isinstance(err, sa.DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, sa.OperationalError | sa.InterfaceError):
            return True
    return False


def _retry_s() -> float:
    raw = os.environ.get("DGKD_DB_RETRY_S", "")
    try:
        return float(raw) if raw else RETRY_S
    except ValueError:
        return RETRY_S


def _retrying(name: str, method: _F) -> _F:
    @functools.wraps(method)
    def call(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + _retry_s()
        pause, attempt = 0.25, 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempt and name == "set_trial_state_values":  # the lost commit went through
                    trial = self.get_trial(args[0] if args else kwargs["trial_id"])
                    wanted = args[1] if len(args) > 1 else kwargs["state"]
                    if trial.state == wanted:
                        return True
                raise
            except Exception as exc:
                if not is_connection_error(exc) or time.monotonic() + pause > deadline:
                    raise
            attempt += 1
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    return call  # type: ignore[return-value]


class ReconnectingRDBStorage(RDBStorage):
    """:class:`optuna.storages.RDBStorage` whose calls wait out a lost database connection."""


for _name, _method in list(vars(RDBStorage).items()):
    if (
        callable(_method)
        and _name not in _SKIP
        and (not _name.startswith("_") or _name == "_get_stale_trial_ids")
    ):
        setattr(ReconnectingRDBStorage, _name, _retrying(_name, _method))
