"""Connecting to a Ray cluster (or starting a local one), shared by every Ray user here.

``--address`` (or ``RAY_ADDRESS``) names a running cluster, checked for reachability first so a
wrong address fails in seconds (Ray itself retries for minutes); without one a local cluster
sized to this process's cores is started, and stopped again on exit.

Token authentication. A cluster on this machine gets the token Ray keeps here, as Ray does for
``auto`` (since Ray 2.59 a local ``ray.init`` creates ``~/.ray/auth_token`` and a later
``ray start`` uses it); a remote one only with ``RAY_AUTH_MODE=token``, so no token leaves the
machine unasked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dgkd.errors import one_line
from dgkd.runtime import available_cores
from dgkd.search.records import SearchInputError

__all__ = ["CONNECT_TIMEOUT_S", "ClusterError", "connect", "resolve_address"]

CONNECT_TIMEOUT_S = 5.0  # TCP check of the address before Ray tries (it retries for minutes)
_ENV_VARS = ("DGKD_CACHE",)  # passed on to the workers: they share this process's cache


class ClusterError(SearchInputError):
    """The cluster cannot be used: a malformed, unreachable or refusing address (bad input)."""


def resolve_address(address: str | None) -> str | None:
    """``address``, else ``RAY_ADDRESS``; None when that is empty or ``local`` (a new cluster)."""
    resolved = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if resolved in ("", "local") else resolved


@contextlib.contextmanager
def connect(
    address: str | None, *, log_to_driver: bool = True, command: str = "dgkd-search"
) -> Iterator[bool]:
    """Connect this process to a Ray cluster for the ``with`` block, or start a local one.

    Usage: ``with connect(opts.address, log_to_driver=not quiet) as started: ...``.

    Args:
        address: ``host:port`` of a running cluster, or ``auto`` for one started on this machine
            with ``ray start``; None, "" or ``local`` mean ``RAY_ADDRESS``, else a new local
            cluster (see :func:`resolve_address`).
        log_to_driver: Show the workers' output in this process.
        command: The command named in the advice for a Ray Client (``ray://``) address.

    Yields:
        True if this call initialized Ray (it shuts Ray down on exit); False if Ray was already
        initialized in this process (left as it is).

    Raises:
        ClusterError: ``ray://`` or malformed addresses, nothing listening at the address, or
            a cluster refusing the connection (e.g. a token is missing).
    """
    resolved = resolve_address(address)
    host = _check_reachable(resolved, command) if resolved is not None else None

    import ray

    auth_mode = os.environ.get("RAY_AUTH_MODE")
    started = False
    try:
        started = _init(resolved, host, log_to_driver=log_to_driver)
        yield started
    finally:
        if started:
            ray.shutdown()
        if auth_mode is None:  # set for a local cluster (by Ray or by _init): leave it as it was
            os.environ.pop("RAY_AUTH_MODE", None)


def _check_reachable(address: str, command: str) -> str | None:
    """Fail fast on an address nothing listens on (Ray itself retries for minutes).

    Returns:
        The host, or None for ``auto`` (a cluster started on this machine).
    """
    if address == "auto":
        return None  # Ray looks for a cluster started here and fails at once without one
    if address.startswith("ray://"):
        raise ClusterError(
            f"Ray Client addresses ({address}) are not supported: run {command} on a node of "
            "the cluster with --address <head-ip>:6379 (the address `ray start --head` printed)"
        )
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ClusterError(
            f"Ray address {address!r} is not host:port; use the address `ray start --head` "
            "printed, e.g. --address 10.0.0.1:6379"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer in {CONNECT_TIMEOUT_S:g} s"
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({reason}); start it with "
            f"`ray start --head --port={port}` or fix --address / RAY_ADDRESS"
        ) from None
    return host


def _is_this_machine(host: str) -> bool:
    """Whether ``host`` is an address of this machine (only those can be bound to)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def _token_available() -> bool:
    home_token = Path.home() / ".ray" / "auth_token"
    return (
        bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
        or home_token.is_file()
    )


def _sync_auth_config() -> None:
    """Make Ray follow ``RAY_AUTH_MODE`` and the token variables as they are now (it reads them
    once, at import; the CLI imports it late, but a program may connect several times)."""
    want_token = os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"
    try:
        from ray._raylet import (  # type: ignore[attr-defined]  # not in Ray's stubs
            AuthenticationMode,
            AuthenticationTokenLoader,
            Config,
            get_authentication_mode,
        )
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return
    if (get_authentication_mode() == AuthenticationMode.TOKEN) != want_token:
        Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()  # the token may have moved, too


def _init(address: str | None, host: str | None, *, log_to_driver: bool) -> bool:
    """``ray.init`` for ``address`` (None: a new local cluster); True if this call did it."""
    import ray

    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in _ENV_VARS if os.environ.get(k)}
    common: dict[str, Any] = {
        "log_to_driver": log_to_driver,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": env} if env else None,
    }
    if address is None:
        _sync_auth_config()
        quiet_auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = quiet_auth.level
        quiet_auth.setLevel(logging.ERROR)  # "token authentication is enabled": a local cluster
        try:
            ray.init(address="local", num_cpus=available_cores(), include_dashboard=False, **common)
        finally:
            quiet_auth.setLevel(level)
        return True
    local = host is None or _is_this_machine(host)
    if "RAY_AUTH_MODE" not in os.environ and local and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    _sync_auth_config()
    try:
        ray.init(address=address, **common)
    except Exception as exc:
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: {one_line(exc)}; if it uses token "
            "authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN)"
        ) from None
    return True
