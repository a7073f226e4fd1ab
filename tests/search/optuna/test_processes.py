"""Stopping a search's worker processes: a worker that does not stop in time is killed, and the
command says so and keeps what its threads were doing."""

from __future__ import annotations

import multiprocessing
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dgkd.search.optuna.processes import _stop, dump_stacks_on_request


def _deaf(ready: Any, stacks: Path | None = None) -> None:  # a worker stuck past its interruption
    if stacks is not None:
        dump_stacks_on_request(stacks)  # as every search worker does first
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


def test_a_killed_worker_leaves_its_threads_stacks_in_the_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    scratch = [tmp_path / "worker-0.txt", tmp_path / "worker-1.txt"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    deaf = ctx.Process(target=_deaf, args=(ready, scratch[1]), name="dgkd-search-smoke-1")
    obedient = ctx.Process(target=_obedient, name="dgkd-search-smoke-0")
    for p in (obedient, deaf):
        p.start()
    assert ready.wait(60)
    _stop([obedient, deaf], timeout=1.0, stacks=scratch, keep_in=run_dir)
    assert deaf.exitcode == -signal.SIGKILL
    kept = run_dir / "dgkd-search-smoke-1.stacks.txt"
    assert [f.name for f in run_dir.iterdir()] == [kept.name]  # the one that stopped left none
    stack = kept.read_text()
    assert "most recent call first" in stack and "in _deaf" in stack  # where it was stuck
    err = capsys.readouterr().err
    assert err.strip() == (
        f"dgkd-search: dgkd-search-smoke-1 did not stop within 1 s and was killed (its threads' "
        f"stacks: {kept}); the next run re-runs its trials"
    )
