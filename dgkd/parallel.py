"""``train_population`` across worker processes: each population in a process of its own.

A confirm stage trains several populations per call (one per teacher), one after another in a
single process unless something spreads them; a :class:`PopulationPool` keeps ``workers``
spawned processes for the whole stage (so torch is imported once per worker, not per call) and
hands each population to the next free one. Results carry what a caller of a stage reads: the
final metrics, or the error that stopped a member (as text: exceptions do not all pickle).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from dgkd.config import TrainConfig
from dgkd.runtime import die_with_parent, set_threads, threads_per_worker

__all__ = ["PoolResult", "PopulationPool"]


@dataclass
class PoolResult:
    """One member's outcome: its final metrics, or why it stopped."""

    config: TrainConfig
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _init(threads: int, parent: int) -> None:  # pragma: no cover - runs in a spawned process
    die_with_parent(parent)
    set_threads(threads)


def _train(configs: list[dict[str, Any]]) -> list[tuple[dict[str, float], str | None]]:
    """One population in a worker: each member's metrics, or its error's text."""
    from dgkd.train import train_population

    out = []
    for res in train_population([TrainConfig(**c) for c in configs]):
        error = None if res.error is None else (str(res.error) or type(res.error).__name__)
        out.append(({k: float(v) for k, v in res.metrics.items()}, error))
    return out


class PopulationPool:
    """``workers`` processes that train populations; call it like ``train_population``.

    With one worker (or one population) it trains in this process, as ``train_population``.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> PopulationPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=kind is None, cancel_futures=True)
            self._pool = None

    def __call__(self, cfgs: Sequence[TrainConfig]) -> list[PoolResult]:
        """Each config's outcome, in order; populations as :func:`dgkd.train.population_groups`
        forms them, spread over the workers."""
        from dgkd.train import population_groups

        groups = population_groups(cfgs)
        if self.workers == 1 or len(groups) == 1:
            here = [_train([cfgs[i].to_dict() for i in g]) for g in groups]
            return self._in_order(cfgs, groups, here)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=mp.get_context("spawn"),
                initializer=_init,
                initargs=(threads_per_worker(self.workers), os.getpid()),
            )
        futures: list[Future] = [
            self._pool.submit(_train, [cfgs[i].to_dict() for i in g]) for g in groups
        ]
        return self._in_order(cfgs, groups, [f.result() for f in futures])

    @staticmethod
    def _in_order(
        cfgs: Sequence[TrainConfig],
        groups: list[list[int]],
        outcomes: list[list[tuple[dict[str, float], str | None]]],
    ) -> list[PoolResult]:
        results: list[PoolResult | None] = [None] * len(cfgs)
        for group, outs in zip(groups, outcomes, strict=True):
            for i, (metrics, error) in zip(group, outs, strict=True):
                results[i] = PoolResult(cfgs[i], metrics, error)
        return [r for r in results if r is not None]
