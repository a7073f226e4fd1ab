"""``dgkd-search`` orchestration: options, the backend, live progress and the result files.

:func:`run_search` validates everything that can be checked before any work starts (so bad input
writes nothing), moves old results aside on ``--fresh``, hands the study to a backend
(:mod:`dgkd.backends`), and writes the final outputs. Backends feed a :class:`SearchReporter`
with the trial records as trials finish: it rewrites ``trials.csv`` and ``best.json`` at once,
importances and plots at most every ``heavy_every_s`` seconds (they cost far more), and shows a
live rich display on a terminal or one plain line per finished trial otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dgkd.export import BEST_FILE, best_record, finished, write_search_outputs
from dgkd.study import Study
from dgkd.trials import SearchOptions, TrialRecord

__all__ = [
    "BACKENDS",
    "INTERRUPTED",
    "SearchInputError",
    "SearchReporter",
    "best_params",
    "counts_toward_total",
    "format_params",
    "make_options",
    "move_aside",
    "print_summary",
    "run_search",
]

BACKENDS = ("optuna", "ray")
# fail_reason prefix of a trial cut off by an interruption and re-run under a new number: it
# keeps its number (none is lost) but does not count toward --trials.
INTERRUPTED = "interrupted"


class SearchInputError(ValueError):
    """Bad input to a search (options, storage, cluster address); exit code 2."""


def counts_toward_total(record: TrialRecord) -> bool:
    """A finished trial that counts toward ``--trials`` (not one re-run after an interruption)."""
    if record.state not in ("COMPLETE", "PRUNED", "FAIL"):
        return False
    return not (record.state == "FAIL" and record.fail_reason.startswith(INTERRUPTED))


def format_params(params: dict[str, Any]) -> str:
    """``alpha=1 epsilon=3.142`` with floats to 4 significant digits."""
    parts = []
    for key, value in params.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def make_options(
    study: Study,
    *,
    trials: int | None = None,
    out: str | Path = "runs",
    workers: int = 1,
    backend: str = "optuna",
    storage: str | None = None,
    address: str | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    fresh: bool = False,
    quiet: bool = False,
    overrides: dict[str, Any] | None = None,
) -> SearchOptions:
    """Validated :class:`SearchOptions` for ``study`` (``out_dir`` = ``<out>/<study name>``).

    Raises:
        SearchInputError: a bad count, backend or flag combination.
        ConfigError: an override is unknown, invalid, or names a space parameter.
    """
    if backend not in BACKENDS:
        raise SearchInputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    total = study.trials if trials is None else trials
    if total < 1:
        raise SearchInputError(f"--trials must be at least 1, got {total}")
    if workers < 1:
        raise SearchInputError(f"--workers must be at least 1, got {workers}")
    if backend == "optuna":
        for flag, value in (
            ("--address", address),
            ("--cpus-per-trial", cpus_per_trial),
            ("--gpus-per-trial", gpus_per_trial),
        ):
            if value is not None:
                raise SearchInputError(f"{flag} applies to --backend ray only")
    if cpus_per_trial is not None and not cpus_per_trial > 0:
        raise SearchInputError(f"--cpus-per-trial must be > 0, got {cpus_per_trial}")
    if gpus_per_trial is not None and not gpus_per_trial >= 0:
        raise SearchInputError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    overrides = dict(overrides or {})
    study.check_overrides(overrides)
    return SearchOptions(
        trials=total,
        out_dir=Path(out).expanduser() / study.name,
        workers=workers,
        backend=backend,
        storage=storage,
        address=address,
        cpus_per_trial=1.0 if cpus_per_trial is None else float(cpus_per_trial),
        gpus_per_trial=0.0 if gpus_per_trial is None else float(gpus_per_trial),
        fresh=fresh,
        quiet=quiet,
        overrides=overrides,
    )


def move_aside(path: str | Path) -> Path | None:
    """Rename ``path`` to ``<path>.old-<timestamp>`` (never delete); None if nothing to move."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
    os.replace(path, target)
    return target


def run_search(
    study: Study, opts: SearchOptions, *, log: Callable[[str], None] | None = None
) -> list[TrialRecord]:
    """Run (or continue) ``study`` to ``opts.trials`` finished trials and write its outputs.

    Args:
        study: The validated study.
        opts: From :func:`make_options`.
        log: Where one-line notices go (default: print to stdout).

    Returns:
        Every trial of the study, any state, by number.

    Raises:
        SearchInputError: unreachable storage or cluster, or a storage holding a different study.
    """
    log = log or _print
    if opts.backend == "optuna":
        from dgkd.backends import optuna_backend as backend

        backend.check_storage(study, opts)  # before anything is moved or written
    else:
        from dgkd.backends import ray_backend as backend  # type: ignore[no-redef]
    if opts.fresh:
        moved = move_aside(opts.out_dir)
        if moved is not None:
            log(f"moved previous results of {study.name} to {moved}")
    records = backend.run(study, opts, log=log)
    write_search_outputs(study, records, opts.out_dir, overrides=opts.overrides)
    return records


def best_params(
    study: Study, *, out_dir: str | Path, storage: str | None = None
) -> dict[str, Any] | None:
    """The best COMPLETE trial's searched parameters, or None when there is none yet.

    Reads the study's Optuna storage (``storage``, else ``<out_dir>/journal.log``), falling back to
    ``<out_dir>/best.json`` (what a Ray search leaves). ``out_dir`` is the study's output directory
    (``runs/<study>``); its parent (``runs``) is accepted too.
    """
    from dgkd.backends.optuna_backend import JOURNAL_FILE, load_records

    out = Path(out_dir)
    here = (out / JOURNAL_FILE).exists() or (out / BEST_FILE).exists()
    if not here and (out / study.name).is_dir():
        out = out / study.name
    if storage is not None or (out / JOURNAL_FILE).exists():
        records = load_records(study, out_dir=out, storage=storage)
        if records is not None:
            best = best_record(records, study.direction)
            return dict(best.params) if best is not None else None
    if (out / BEST_FILE).exists():
        try:
            params = json.loads((out / BEST_FILE).read_text()).get("params")
        except (OSError, ValueError, AttributeError):
            return None
        return dict(params) if params else None
    return None


def _print(line: str) -> None:
    print(line, flush=True)


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
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
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.study, self.opts = study, opts
        self.total = total or opts.trials
        self.live = (sys.stdout.isatty() and not opts.quiet) if live is None else live
        self.heavy_every_s = heavy_every_s
        self.log = log or _print
        self.records: list[TrialRecord] = []
        self._seen: dict[int, str] = {}
        self._done0: int | None = None
        self._start = time.monotonic()
        self._last_heavy = self._start
        self._heavy_cost = 0.0
        self._live = None

    # -- counts -----------------------------------------------------------------------------
    @property
    def done(self) -> int:
        """Finished trials that count toward the total."""
        return sum(counts_toward_total(r) for r in self.records)

    def _count(self, state: str) -> int:
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

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(*exc)
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
        if r.state == "COMPLETE":
            what = f"{self.study.metric}={r.value:.4f}" if r.value is not None else "no value"
        elif r.state == "PRUNED":
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

    def __rich__(self):
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
        counts = f"running {self._count('RUNNING')}, " + _state_counts(self.records).replace(
            f"running {self._count('RUNNING')}, ", ""
        )
        return Group(head, Text(counts), Text(self._best_text(), style="green"))


def _state_counts(records: Sequence[TrialRecord]) -> str:
    """``complete 5, pruned 2, failed 1`` (+ ``interrupted 1``, ``running 2`` when any)."""
    interrupted = sum(not counts_toward_total(r) and r.state == "FAIL" for r in records)
    counts = {
        "running": sum(r.state == "RUNNING" for r in records),
        "complete": sum(r.state == "COMPLETE" for r in records),
        "pruned": sum(r.state == "PRUNED" for r in records),
        "failed": sum(r.state == "FAIL" for r in records) - interrupted,
        "interrupted": interrupted,
    }
    shown = ("complete", "pruned", "failed")
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in shown)


def print_summary(
    study: Study, records: Sequence[TrialRecord], opts: SearchOptions, *, top: int = 10
) -> None:
    """A rich table of the best trials, the counts and where the outputs are."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    params = [p.name for p in study.space.searched()]
    done = sorted(
        (r for r in records if r.state == "COMPLETE" and r.value is not None),
        key=lambda r: (-r.value if study.direction == "maximize" else r.value, r.number),
    )
    counted = sum(counts_toward_total(r) for r in records)
    title = f"{study.name}: {counted}/{opts.trials} trials  ({_state_counts(records)})"
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column(study.metric, justify="right")
    for name in params:
        table.add_column(name, justify="right")
    extra = [m for m in ("test_acc", "test_agreement", "test_ece") if m != study.metric]
    for name in extra:
        table.add_column(name, justify="right")
    table.add_column("s", justify="right")
    for r in done[:top]:
        cells = [str(r.number), f"{r.value:.4f}"]
        for name in params:
            v = r.params.get(name)
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        for name in extra:
            v = r.metrics.get(name)
            cells.append("" if v is None or v != v else f"{v:.4f}")
        cells.append("" if r.duration_s is None else f"{r.duration_s:.1f}")
        table.add_row(*cells)
    console.print(table)
    if not done:
        console.print("no trial has completed yet")
    console.print(f"outputs: {opts.out_dir}/ (trials.csv, best.json, importance.csv, *.png)")
    if opts.backend == "optuna":
        from dgkd.backends.optuna_backend import inspect_command

        console.print(f"inspect: {inspect_command(study, opts)}", soft_wrap=True)
