"""CPU cores and threads per process: the one place that decides and sets them.

A search or an ablation runs several processes on one machine: by default (``--workers auto``)
one per usable core, the cores this process may run on (its affinity mask) capped by a cgroup
CPU quota (a container's ``--cpus``), since a worker beyond the quota only gets throttled. Each
process gets ``cores // workers`` intra-op threads (capped by ``OMP_NUM_THREADS``) where a run
leaves them to it, and ``train()`` sets the run's own count.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

__all__ = [
    "die_with_parent",
    "AUTO",
    "available_cores",
    "cgroup_cpu_limit",
    "parse_workers",
    "set_threads",
    "threads_per_worker",
]

AUTO = "auto"  # --workers auto: one worker per usable core
# The CPU quota of this process's cgroup as the container sees it: v2 "<quota> <period>" or
# "max <period>" (no quota); v1 a quota in microseconds per period (-1: no quota).
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def available_cores() -> int:
    """CPU cores this process can use: the affinity mask (not the machine's total), lowered to
    the cgroup CPU quota rounded down; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, cores if limit is None else min(cores, limit))


def cgroup_cpu_limit() -> int | None:
    """Whole CPUs the cgroup quota allows (quota // period, at least 1); None without a quota.

    cgroup v2 is read first; its ``max`` means no quota, v1's files are read only without it.
    """
    v2 = _read(CGROUP_V2_CPU_MAX)
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _whole_cpus(quota, period)
    v1_quota, v1_period = _read(CGROUP_V1_QUOTA), _read(CGROUP_V1_PERIOD)
    if v1_quota is None or v1_period is None:
        return None
    return _whole_cpus(v1_quota, v1_period)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _whole_cpus(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period.strip())
    except ValueError:  # "max": no quota
        return None
    return max(1, q // p) if q > 0 and p > 0 else None


def parse_workers(text: str) -> int | None:
    """``--workers`` as typed (an argparse ``type``): None for ``auto``, else a count >= 1.

    Raises:
        argparse.ArgumentTypeError: anything else, saying what to pass.
    """
    value = text.strip().lower()
    if value == AUTO:
        return None
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(
        f"expected a number of processes >= 1 or {AUTO} (the usable cores, "
        f"{available_cores()} here), got {text!r}"
    )


def threads_per_worker(workers: int) -> int:
    """Intra-op threads for each of ``workers`` processes: ``max(1, cores // workers)``.

    An explicit ``OMP_NUM_THREADS`` caps it, so a user (or a test) can ask for fewer threads.
    """
    threads = max(1, available_cores() // max(1, workers))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) >= 1:
        threads = min(threads, int(cap))
    return threads


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count; returns the previous value (to restore it)."""
    import torch  # here, so that importing this module stays torch-free

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    return previous


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (even by SIGKILL).

    Called first in every spawned worker (search workers, the ablation's process pool), so a
    killed command leaves no orphan training on: a search worker handles SIGTERM (its trial is
    marked interrupted and re-enqueued), a pool worker just ends (its finished cells are stored
    already). Elsewhere (no prctl) a rerun's own recovery covers the same case.

    Args:
        parent: The parent's pid as the parent saw it (``os.getpid()`` there, passed to the
            worker): a worker still starting up when its parent died has been adopted by then,
            and only the pid the parent gave tells it. Default: the current parent.
    """
    import ctypes

    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:  # the parent died while this worker was starting
        sys.exit(130)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(130)
