"""Executors: run pending populations of cells in this process, in a pool of processes, or as
Ray tasks.

A population is a list of cells trained together by :func:`~dgkd.ablate.cells.run_cells` (see
:func:`~dgkd.ablate.cells.plan_populations`). Each executor calls ``finished(key, outcome)`` for
each of its cells as soon as a population is done, so the runner stores them at once and an
interruption loses at most the populations in flight. A population that raises (anything but
divergence, which is an outcome) stops new populations from starting and is re-raised as a
:class:`~dgkd.ablate.errors.CellFailedError`; the cells already finished stay stored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dgkd.ablate.cells import Cell, run_cells
from dgkd.ablate.errors import CellFailedError
from dgkd.errors import one_line
from dgkd.runtime import available_cores, die_with_parent, set_threads, threads_per_worker

__all__ = ["Finished", "execute", "run_in_process", "run_processes", "run_ray"]

Finished = Callable[[str, Mapping[str, Any]], None]  # (cell key, its outcome from run_cells)
Populations = Sequence[Sequence[Cell]]


def execute(
    populations: Populations,
    finished: Finished,
    *,
    backend: str,
    workers: int | None,
    address: str | None,
) -> None:
    """Run ``populations`` with the executor the options ask for.

    Args:
        populations: The cells to run, grouped into the populations they train in.
        finished: Called with each cell's key and outcome as its population finishes.
        backend: ``local`` (this process, or a pool when ``workers`` > 1) or ``ray``.
        workers: Processes (local; None = one per usable core) or populations in flight (ray;
            None = all, as many as the cluster has CPUs for run at once).
        address: The Ray cluster (ray only; see :func:`run_ray`).
    """
    if backend == "ray":
        run_ray(populations, finished, address=address, in_flight=workers)
        return
    processes = min(available_cores() if workers is None else workers, len(populations))
    if processes > 1:
        run_processes(populations, finished, workers=processes)
    else:
        run_in_process(populations, finished)


def _configs(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    return [c.config.to_dict() for c in cells]


def _report(
    cells: Sequence[Cell], outcomes: Sequence[Mapping[str, Any]], finished: Finished
) -> None:
    for cell, out in zip(cells, outcomes, strict=True):
        finished(cell.key, out)


def run_in_process(populations: Populations, finished: Finished) -> None:
    """Populations one after the other in this process."""
    for cells in populations:
        try:
            outcomes = run_cells(_configs(cells))
        except Exception as exc:
            raise _failed(cells, exc) from exc
        _report(cells, outcomes, finished)


def _init_worker(threads: int, parent: int) -> None:  # pragma: no cover - a spawned process
    """A pool worker: end with the parent (a SIGKILLed ablation leaves no orphan training),
    on its share of the cores."""
    die_with_parent(parent)
    set_threads(threads)


def run_processes(populations: Populations, finished: Finished, *, workers: int) -> None:
    """Populations in ``workers`` spawned processes, each with its share of the cores."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads_per_worker(workers), os.getpid()),
    )
    futures = {pool.submit(run_cells, _configs(cells)): cells for cells in populations}
    error: CellFailedError | None = None
    try:
        pending = set(futures)
        while pending:
            complete, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in complete:
                cells = futures[fut]
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is not None:
                    if error is None:  # stop starting populations; let the running ones finish
                        error = _failed(cells, exc)
                        for other in pending:
                            other.cancel()
                    continue
                _report(cells, fut.result(), finished)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise error


def run_ray(
    populations: Populations,
    finished: Finished,
    *,
    address: str | None,
    in_flight: int | None,
) -> None:
    """Populations as Ray tasks (one CPU each), on the cluster a search would use.

    The connection is the search's (:func:`dgkd.search.ray.cluster.connect`): ``address``,
    else ``RAY_ADDRESS``, else a new local cluster that is stopped again afterwards.

    Raises:
        ClusterError: the address is malformed, unreachable or refuses the connection.
        CellFailedError: a population raised; the populations still in flight are cancelled.
    """
    import ray

    from dgkd.search.ray.cluster import connect

    with connect(address, log_to_driver=False, command="dgkd-ablate"):
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_cells)
        queue = list(populations)
        running: dict[Any, Sequence[Cell]] = {}
        limit = in_flight or len(queue)
        while queue or running:
            while queue and len(running) < limit:
                cells = queue.pop(0)
                running[task.remote(_configs(cells))] = cells
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                cells = running.pop(ref)
                try:
                    outcomes = ray.get(ref)
                except Exception as exc:
                    for other in running:
                        ray.cancel(other)
                    raise _failed(cells, _ray_cause(exc)) from exc
                _report(cells, outcomes, finished)


def _ray_cells(configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    set_threads(1)  # the task holds one CPU
    return run_cells(configs)


def _ray_cause(exc: BaseException) -> BaseException:
    """The user's exception inside a RayTaskError, when there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _failed(cells: Sequence[Cell], exc: BaseException) -> CellFailedError:
    if len(cells) == 1:
        what = f"cell {cells[0].variant} seed {cells[0].seed}"
    else:
        first, last = cells[0], cells[-1]
        what = (
            f"the population of {len(cells)} cells {first.variant} seed {first.seed} .. "
            f"{last.variant} seed {last.seed}"
        )
    return CellFailedError(
        f"{what} failed: {one_line(exc)}; finished cells are saved, rerun the same command to "
        "continue"
    )
