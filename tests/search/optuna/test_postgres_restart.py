"""The PostgreSQL server restarted mid-search (``pg_ctl restart``): the search waits, reconnects
and finishes with every trial exactly once.

Needs PostgreSQL's server binaries (``.ci/postgres.sh`` installs them): skipped without them,
except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from pgserver import Server, local_server

from dgkd.search.optuna.reconnect import is_connection_error
from dgkd.search.optuna.storage import driver_url
from dgkd.study import load_study

CODE = "import sys; from dgkd.cli import search_main; sys.exit(search_main(sys.argv[1:]))"


@pytest.fixture
def server() -> Iterator[Server]:
    """A PostgreSQL server of this test's own on loopback (restarting it disturbs no other)."""
    with local_server() as srv:
        yield srv


def test_connection_errors_are_told_apart() -> None:
    from sqlalchemy import exc as sa

    lost = sa.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = lost
    assert is_connection_error(lost) and is_connection_error(wrapped)
    assert not is_connection_error(ValueError("bad value"))
    integrity = sa.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert not is_connection_error(integrity)


def test_server_restarted_mid_search_loses_and_repeats_nothing(
    server: Server, tmp_path: Path
) -> None:
    study_file = tmp_path / "pgr.toml"  # no pruning: every trial runs all its epochs
    study_file.write_text(
        Path(load_study("smoke").source).read_text().replace('"median"', '"none"')
    )
    cmd = [sys.executable, "-c", CODE, "--out", str(tmp_path), "--quiet", "--study",
           str(study_file), "--trials", "3", "--storage", server.url, "--workers", "1",
           "--set", "epochs=30"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = driver_url(server.url)
    deadline = time.monotonic() + 120
    while True:  # until a trial is mid-training: a report is due any moment
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the search never got mid-trial"
        trials = []
        if (tmp_path / "pgr" / "trials.csv").exists():  # trial 0 is done: the schema exists
            trials = optuna.load_study(study_name="pgr", storage=url).get_trials()
        if any(t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) < 20
               for t in trials):  # fmt: skip
            break
        time.sleep(0.1)
    restart = subprocess.run([*server.pg_ctl, "-m", "fast", "-w", "restart"], timeout=60,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    assert restart.returncode == 0
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    frame = pd.read_csv(tmp_path / "pgr" / "trials.csv")
    assert list(frame["number"]) == [0, 1, 2]  # none lost, none repeated
    assert set(frame["state"]) == {"COMPLETE"}, frame[["number", "state", "fail_reason"]]
    stored = optuna.load_study(study_name="pgr", storage=url).get_trials()
    assert [(t.number, t.state) for t in stored] == [(n, TrialState.COMPLETE) for n in range(3)]
    assert all(len(t.intermediate_values) == 30 for t in stored)
