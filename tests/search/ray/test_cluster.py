"""Tests for dgkd.search.ray.cluster that need no cluster: addresses and early refusals."""

from __future__ import annotations

import socket

import pytest

from dgkd.search import SearchInputError
from dgkd.search.ray.cluster import ClusterError, connect, resolve_address


def test_resolve_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None and resolve_address("local") is None
    assert resolve_address(" 10.0.0.1:6379 ") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert resolve_address(None) == "auto" and resolve_address("local") is None


def test_bad_addresses_are_refused_before_ray_starts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    cases = [
        ("ray://10.0.0.1:10001", "run dgkd-ablate on a node"),
        ("nonsense", "is not host:port"),
        (f"127.0.0.1:{port}", "cannot reach the Ray cluster at 127.0.0.1"),
    ]
    for address, match in cases:
        with pytest.raises(ClusterError, match=match), connect(address, command="dgkd-ablate"):
            pass
    assert issubclass(ClusterError, SearchInputError)  # bad input: exit code 2
