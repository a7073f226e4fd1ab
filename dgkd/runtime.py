"""CPU threads per process: the one place that decides and sets them.

A search or an ablation runs several processes on one machine; each gets ``cores // workers``
intra-op threads (capped by ``OMP_NUM_THREADS``), and ``train()`` sets the run's own count.
"""

from __future__ import annotations

import os

__all__ = ["available_cores", "set_threads", "threads_per_worker"]


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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
