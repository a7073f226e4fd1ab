"""Executors: run pending cells in this process, in a pool of processes, or as Ray tasks.

Each executor calls ``finished(key, outcome)`` as soon as a cell is done, so the runner stores
it at once and an interruption loses at most the cells in flight. A cell that raises (anything
but divergence, which is an outcome) stops new cells from starting and is re-raised as a
:class:`~dgkd.ablate.errors.CellFailedError`; the cells already finished stay stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dgkd.ablate.cells import Cell, run_cell
from dgkd.ablate.errors import CellFailedError
from dgkd.errors import one_line
from dgkd.runtime import set_threads, threads_per_worker

__all__ = ["Finished", "execute", "run_in_process", "run_processes", "run_ray"]

Finished = Callable[[str, Mapping[str, Any]], None]  # (cell key, run_cell's outcome)


def execute(
    cells: Sequence[Cell],
    finished: Finished,
    *,
    backend: str,
    workers: int | None,
    address: str | None,
) -> None:
    """Run ``cells`` with the executor the options ask for.

    Args:
        cells: The cells to run.
        finished: Called with each cell's key and outcome as it finishes.
        backend: ``local`` (this process, or a pool when ``workers`` > 1) or ``ray``.
        workers: Processes (local) or cells in flight (ray; None = all).
        address: The Ray cluster (ray only; see :func:`run_ray`).
    """
    if backend == "ray":
        run_ray(cells, finished, address=address, in_flight=workers)
    elif (workers or 1) > 1:
        run_processes(cells, finished, workers=workers or 1)
    else:
        run_in_process(cells, finished)


def run_in_process(cells: Sequence[Cell], finished: Finished) -> None:
    """Cells one after the other in this process."""
    for cell in cells:
        try:
            out = run_cell(cell.config.to_dict())
        except Exception as exc:
            raise _failed(cell, exc) from exc
        finished(cell.key, out)


def run_processes(cells: Sequence[Cell], finished: Finished, *, workers: int) -> None:
    """Cells in ``workers`` spawned processes, each with its share of the cores for torch."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=set_threads,
        initargs=(threads_per_worker(workers),),
    )
    futures = {pool.submit(run_cell, c.config.to_dict()): c for c in cells}
    error: CellFailedError | None = None
    try:
        pending = set(futures)
        while pending:
            complete, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in complete:
                cell = futures[fut]
                if fut.cancelled():
                    continue
                exc = fut.exception()
                if exc is not None:
                    if error is None:  # stop starting cells; let the running ones finish
                        error = _failed(cell, exc)
                        for other in pending:
                            other.cancel()
                    continue
                finished(cell.key, fut.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise error


def run_ray(
    cells: Sequence[Cell],
    finished: Finished,
    *,
    address: str | None,
    in_flight: int | None,
) -> None:
    """Cells as Ray tasks (one CPU each), on the cluster a search would use.

    The connection is the search's (:func:`dgkd.search.ray.cluster.connect`): ``address``,
    else ``RAY_ADDRESS``, else a new local cluster that is stopped again afterwards.

    Raises:
        ClusterError: the address is malformed, unreachable or refuses the connection.
        CellFailedError: a cell raised; the cells still in flight are cancelled.
    """
    import ray

    from dgkd.search.ray.cluster import connect

    with connect(address, log_to_driver=False, command="dgkd-ablate"):
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
        queue = list(cells)
        running: dict[Any, Cell] = {}
        limit = in_flight or len(queue)
        while queue or running:
            while queue and len(running) < limit:
                cell = queue.pop(0)
                running[task.remote(cell.config.to_dict())] = cell
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                cell = running.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:
                    for other in running:
                        ray.cancel(other)
                    raise _failed(cell, _ray_cause(exc)) from exc
                finished(cell.key, out)


def _ray_cell(config: Mapping[str, Any]) -> dict[str, Any]:
    set_threads(1)  # the task holds one CPU
    return run_cell(config)


def _ray_cause(exc: BaseException) -> BaseException:
    """The user's exception inside a RayTaskError, when there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _failed(cell: Cell, exc: BaseException) -> CellFailedError:
    return CellFailedError(
        f"cell {cell.variant} seed {cell.seed} failed: {one_line(exc)}; finished cells are "
        "saved, rerun the same command to continue"
    )
