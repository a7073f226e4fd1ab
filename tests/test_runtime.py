"""The usable cores (affinity mask and cgroup CPU quota) and the ``--workers`` values."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dgkd import runtime
from dgkd.runtime import available_cores, parse_workers, threads_per_worker

Machine = Callable[..., Path]


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Machine:
    """Call it with the CPUs this process may run on and the cgroup files' contents (None: no
    such file); returns the folder the cgroup files were written to."""

    def make(cpus: int, *, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
        files = {
            "CGROUP_V2_CPU_MAX": (tmp_path / "cpu.max", v2),
            "CGROUP_V1_QUOTA": (tmp_path / "cpu.cfs_quota_us", v1 and v1[0]),
            "CGROUP_V1_PERIOD": (tmp_path / "cpu.cfs_period_us", v1 and v1[1]),
        }
        for name, (path, text) in files.items():
            path.unlink(missing_ok=True)
            if text is not None:
                path.write_text(text + "\n")
            monkeypatch.setattr(runtime, name, path)
        return tmp_path

    return make


def test_without_a_quota_the_affinity_mask_decides(machine: Machine) -> None:
    machine(6)
    assert available_cores() == 6
    machine(6, v2="max 100000")  # cgroup v2 without a quota
    assert available_cores() == 6
    machine(6, v1=("-1", "100000"))  # cgroup v1 without a quota
    assert available_cores() == 6


@pytest.mark.parametrize(
    ("cpus", "quota", "expected"),
    [
        (8, "200000 100000", 2),  # docker --cpus 2 on an 8-core machine
        (8, "250000 100000", 2),  # 2.5 CPUs: a third worker would only be throttled
        (8, "50000 100000", 1),  # half a CPU: still one worker
        (2, "400000 100000", 2),  # a quota above the mask: the mask decides
    ],
)
def test_a_cgroup_v2_quota_caps_the_cores_rounded_down(
    machine: Machine, cpus: int, quota: str, expected: int
) -> None:
    machine(cpus, v2=quota)
    assert available_cores() == expected


def test_a_cgroup_v1_quota_caps_the_cores(machine: Machine) -> None:
    machine(16, v1=("300000", "100000"))
    assert available_cores() == 3
    machine(16, v1=("300000", "garbage"))  # unreadable: no quota assumed
    assert available_cores() == 16


def test_threads_per_worker_shares_the_usable_cores(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS")
    machine(16, v2="400000 100000")
    assert threads_per_worker(1) == 4 and threads_per_worker(2) == 2
    assert threads_per_worker(8) == 1


@pytest.mark.parametrize(("text", "expected"), [("auto", None), ("AUTO", None), ("3", 3)])
def test_workers_accepts_a_count_or_auto(text: str, expected: int | None) -> None:
    assert parse_workers(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "abc", "2.5", ""])
def test_workers_refuses_anything_else_saying_what_to_pass(machine: Machine, text: str) -> None:
    machine(4)
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_workers(text)
    assert str(info.value) == (
        f"expected a number of processes >= 1 or auto (the usable cores, 4 here), got {text!r}"
    )
