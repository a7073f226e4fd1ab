"""A PostgreSQL server of a test's own on loopback: skipped where PostgreSQL is not installed,
except under CI (CI=true), where that fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Server:
    url: str
    pg_ctl: list[str]  # pg_ctl -D DATA -l LOG, run as the server's user


@contextlib.contextmanager
def local_server() -> Iterator[Server]:
    """Start a server with one database ``t``, yield it, then stop it and delete its files."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = shutil.which("initdb") or (str(bins[-1]) if bins else None)
    if initdb is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (bash .ci/postgres.sh installs it)")
        pytest.skip("PostgreSQL is not installed")
    bindir = Path(os.path.realpath(initdb)).parent
    root = Path(tempfile.mkdtemp(prefix="dgkd-pg-", dir="/tmp"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    # The server's output goes to its log: a pipe of ours held by the server would never close.
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log")]
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    subprocess.run([*pg_ctl, "-w", "-o", opts, "start"], check=True, timeout=60,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "t")
        yield Server(f"postgresql://postgres@127.0.0.1:{port}/t", pg_ctl)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], stdout=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
