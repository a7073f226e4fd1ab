"""Live progress of a search, and its outputs rewritten as trials finish.

Backends feed a :class:`SearchReporter` with the trial records as trials finish: it rewrites
``trials.csv`` and ``best.json`` at once, importances and plots at most every ``heavy_every_s``
seconds (they cost far more), and shows a live rich display on a terminal or one plain line per
finished trial otherwise.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dgkd.search.common import Log, print_line
from dgkd.search.export import best_record, write_search_outputs
from dgkd.search.records import (
    SearchOptions,
    TrialRecord,
    TrialState,
    counts_toward_total,
    finished,
)

if TYPE_CHECKING:
    from types import TracebackType

    from rich.console import RenderableType
    from rich.live import Live

    from dgkd.study import Study

__all__ = ["SearchReporter", "format_params", "state_counts"]


def format_params(params: dict[str, Any]) -> str:
    """``alpha=1 epsilon=3.142`` with floats to 4 significant digits."""
    parts = []
    for key, value in params.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _duration(seconds: float | None) -> str:
    """``mm:ss`` or ``h:mm:ss``; ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class SearchReporter:
    """Live progress and incrementally rewritten outputs, fed with trial records.

    Call :meth:`update` with every trial record whenever something changed (a trial started or
    finished). Use as a context manager around the search.

    Args:
        study: The study being searched.
        opts: Its options (``out_dir``, ``quiet``, ``trials``, ``overrides``).
        total: Trials the search runs to (``opts.trials`` unless the space is smaller).
        live: Force the live display on or off; default: on when stdout is a terminal and not
            ``opts.quiet``.
        heavy_every_s: Minimum seconds between importance/plot refreshes during the search.
        log: Where plain lines go (default: stdout).
    """

    def __init__(
        self,
        study: Study,
        opts: SearchOptions,
        *,
        total: int | None = None,
        live: bool | None = None,
        heavy_every_s: float = 30.0,
        log: Log | None = None,
    ) -> None:
        self.study, self.opts = study, opts
        self.total = total or opts.trials
        self.live = (sys.stdout.isatty() and not opts.quiet) if live is None else live
        self.heavy_every_s = heavy_every_s
        self.log = log or print_line
        self.records: list[TrialRecord] = []
        self._seen: dict[int, TrialState] = {}
        self._done0: int | None = None
        self._start = time.monotonic()
        self._last_heavy = self._start
        self._heavy_cost = 0.0
        self._live: Live | None = None

    # -- counts -----------------------------------------------------------------------------
    @property
    def done(self) -> int:
        """Finished trials that count toward the total."""
        return sum(counts_toward_total(r) for r in self.records)

    def _count(self, state: TrialState) -> int:
        return sum(r.state == state for r in self.records)

    def eta_s(self) -> float | None:
        """Seconds left at this session's pace, or None before its first finished trial."""
        done_now = self.done - (self._done0 or 0)
        left = max(0, self.total - self.done)
        if left == 0:
            return 0.0
        if done_now <= 0:
            return None
        return (time.monotonic() - self._start) / done_now * left

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> SearchReporter:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self, console=Console(), refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def start(self, records: Sequence[TrialRecord], *, note: str = "") -> None:
        """Record the state the search resumes from and say what will run."""
        self.records = list(records)
        self._done0 = self.done
        self._seen = {r.number: r.state for r in self.records}
        left = max(0, self.total - self.done)
        what = f"{self.done}/{self.total} trials done, {left} to run"
        self.log(f"search {self.study.name}: {what}" + (f"; {note}" if note else ""))

    def update(self, records: Sequence[TrialRecord]) -> None:
        """New records: log newly finished trials, rewrite the outputs, refresh the display."""
        self.records = list(records)
        if self._done0 is None:
            self._done0 = self.done
        new = []
        for r in finished(self.records):
            if self._seen.get(r.number) != r.state:
                new.append(r)
        self._seen = {r.number: r.state for r in self.records}
        if not new:
            return
        if not self.live:
            new_numbers = {r.number for r in new}
            done = sum(counts_toward_total(r) for r in self.records if r.number not in new_numbers)
            for r in new:
                done += counts_toward_total(r)
                self.log(self._line(r, done))
        now = time.monotonic()
        heavy = now - self._last_heavy >= max(self.heavy_every_s, 20 * self._heavy_cost)
        write_search_outputs(
            self.study, self.records, self.opts.out_dir, plots=heavy, overrides=self.opts.overrides
        )
        if heavy:
            self._last_heavy = time.monotonic()
            self._heavy_cost = self._last_heavy - now

    def _best_text(self) -> str:
        best = best_record(self.records, self.study.direction)
        if best is None:
            return "best: none yet"
        params = format_params(best.params)
        return f"best {self.study.metric} {best.value:.4f} (#{best.number}) {params}"

    def _line(self, r: TrialRecord, done: int) -> str:
        if r.state == TrialState.COMPLETE:
            what = f"{self.study.metric}={r.value:.4f}" if r.value is not None else "no value"
        elif r.state == TrialState.PRUNED:
            what = f"pruned at epoch {r.pruned_epoch}" if r.pruned_epoch else "pruned"
        elif not counts_toward_total(r):
            return f"trial {r.number} {r.fail_reason} | {format_params(r.params)}"
        else:
            what = f"failed: {r.fail_reason or 'unknown error'}"
        params = format_params(r.params)
        return (
            f"trial {r.number} {r.state} {what} | {params} | "
            f"{done}/{self.total} done, {self._best_text()}"
        )

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        elapsed = time.monotonic() - self._start
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Text(self.study.name, style="bold"),
            ProgressBar(total=self.total, completed=min(self.done, self.total), width=30),
            Text(f"{self.done}/{self.total} trials"),
            Text(f"elapsed {_duration(elapsed)}"),
            Text(f"ETA {_duration(self.eta_s())}"),
        )
        running = f"running {self._count(TrialState.RUNNING)}, "
        counts = running + state_counts(self.records).replace(running, "")
        return Group(head, Text(counts), Text(self._best_text(), style="green"))


def state_counts(records: Sequence[TrialRecord]) -> str:
    """``complete 5, pruned 2, failed 1`` (+ ``interrupted 1``, ``running 2`` when any)."""
    interrupted = sum(not counts_toward_total(r) and r.state == TrialState.FAIL for r in records)
    counts = {
        "running": sum(r.state == TrialState.RUNNING for r in records),
        "complete": sum(r.state == TrialState.COMPLETE for r in records),
        "pruned": sum(r.state == TrialState.PRUNED for r in records),
        "failed": sum(r.state == TrialState.FAIL for r in records) - interrupted,
        "interrupted": interrupted,
    }
    shown = ("complete", "pruned", "failed")
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in shown)
