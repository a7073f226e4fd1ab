"""Stopping a search's worker processes: a worker that does not stop in time is killed, and the
command says so."""

from __future__ import annotations

import multiprocessing
import signal
import time
from typing import Any

import pytest

from dgkd.search.optuna.processes import _stop


def _deaf(ready: Any) -> None:  # a worker stuck past its interruption
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def _obedient() -> None:
    time.sleep(60)  # SIGTERM's default action ends it


def test_a_worker_that_outlives_the_stop_timeout_is_killed_and_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    deaf = ctx.Process(target=_deaf, args=(ready,), name="dgkd-search-smoke-1")
    obedient = ctx.Process(target=_obedient, name="dgkd-search-smoke-0")
    for p in (obedient, deaf):
        p.start()
    assert ready.wait(60)  # the deaf one ignores SIGTERM from here on
    _stop([obedient, deaf], timeout=1.0)
    assert not obedient.is_alive() and obedient.exitcode == -signal.SIGTERM
    assert not deaf.is_alive() and deaf.exitcode == -signal.SIGKILL
    err = capsys.readouterr().err
    assert err.strip() == (
        "dgkd-search: dgkd-search-smoke-1 did not stop within 1 s and was killed; the next run "
        "re-runs its trials"
    )
