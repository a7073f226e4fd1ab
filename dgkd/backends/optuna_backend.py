"""The Optuna backend: one study in a journal file or an RDB, run by one or more processes.

Storage. By default a journal file ``runs/<study>/journal.log`` (fast, safe for several processes
on one machine, readable by ``optuna trials`` and optuna-dashboard). ``--storage URL`` takes any
SQLAlchemy URL Optuna supports (PostgreSQL to share a study between machines), opened with
heartbeats: a trial whose process stops beating for ``GRACE_PERIOD_S`` is failed and re-enqueued by
``RetryHeartbeatStaleTrialCallback``. ``--storage PATH`` (no ``://``) is a journal file elsewhere.

Budget. ``--trials`` is the study's total: finished trials in any state count, except those cut
off by an interruption, which keep their number (state FAIL, ``fail_reason`` "interrupted ...")
and are re-run from the same parameters under a new number. Workers claim a trial under a file
lock (check the count, ``ask``), so several processes on a machine stop at exactly the total.

Restarts. The journal has no heartbeat, so every trial records its process as
``user_attrs["worker"]`` (``host:pid:start``). On start, a RUNNING trial whose process is gone is
failed and its parameters enqueued again; Ctrl-C does the same for the trials it interrupts.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from dgkd.config import ConfigError
from dgkd.loop import DivergedError
from dgkd.objective import clean_metrics, run_trial, set_threads, threads_per_worker
from dgkd.search import INTERRUPTED, SearchInputError, SearchReporter
from dgkd.study import Study
from dgkd.trials import SearchOptions, TrialRecord

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

__all__ = [
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "JOURNAL_FILE",
    "MEDIAN_STARTUP_TRIALS",
    "check_storage",
    "driver_url",
    "inspect_command",
    "load_records",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "redact",
    "run",
    "storage_label",
    "to_records",
    "worker_id",
]

JOURNAL_FILE = "journal.log"
CLAIM_LOCK = ".claim.lock"
HEARTBEAT_INTERVAL_S = 10  # RDB: a running trial records a heartbeat this often
GRACE_PERIOD_S = 40  # RDB: a trial silent this long is failed and re-enqueued


def _env_seconds(name: str, default: int) -> int:
    """A positive whole number of seconds from the environment (DGKD_HEARTBEAT_S and
    DGKD_GRACE_PERIOD_S tune the heartbeat for a cluster), else ``default``."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SearchInputError(f"{name} must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


MAX_RETRY = 3  # RDB: re-runs of a trial whose heartbeat stopped
POLL_S = 0.5  # how often the parent of several workers reads the storage
MEDIAN_STARTUP_TRIALS = 10  # complete trials before the median pruner compares
_UNOWNED_STALE_S = 60.0  # a RUNNING trial with no owner recorded this long is abandoned
# Config fields that do not change results: a resumed search may differ in them.
_LOCAL_FIELDS = ("data_root", "download", "device", "eval_batch_size")


# --- storage ----------------------------------------------------------------------------------


def _is_url(storage: str | None) -> bool:
    return storage is not None and "://" in storage


def _journal_path(opts: SearchOptions) -> Path:
    if opts.storage is None:
        return Path(opts.out_dir) / JOURNAL_FILE
    return Path(opts.storage).expanduser()


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def driver_url(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3, while
    the ``postgres`` extra installs psycopg2; name it explicitly when only psycopg2 is present."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    v3, v2 = (importlib.util.find_spec(m) is not None for m in ("psycopg", "psycopg2"))
    if scheme in ("postgresql", "postgres") and v2 and not v3:
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def storage_label(opts: SearchOptions) -> str:
    """Where the study lives, for humans (password hidden)."""
    return redact(opts.storage) if _is_url(opts.storage) else str(_journal_path(opts))


def open_storage(
    opts: SearchOptions,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> BaseStorage:
    """The study's storage: a journal file, or an RDB URL with heartbeats and stale-trial retry.

    Raises:
        SearchInputError: the URL is malformed or its database cannot be reached.
    """
    if not _is_url(opts.storage):
        path = _journal_path(opts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise SearchInputError(f"cannot open journal {path}: {exc.strerror or exc}") from None
    url = driver_url(opts.storage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval
                or _env_seconds("DGKD_HEARTBEAT_S", HEARTBEAT_INTERVAL_S),
                grace_period=grace_period or _env_seconds("DGKD_GRACE_PERIOD_S", GRACE_PERIOD_S),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
    except ImportError as exc:
        missing = getattr(exc.__cause__, "name", None) or "its driver"
        raise SearchInputError(
            f"cannot open storage {redact(url)}: the database driver {missing} is not installed "
            "(for PostgreSQL: pip install 'dgkd[postgres]')"
        ) from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SearchInputError(
            f"cannot open storage {redact(url)}: {reason} (check the URL, that the database "
            "server is running and reachable, and that the database exists)"
        ) from None


def inspect_command(study: Study, opts: SearchOptions) -> str:
    """The ``optuna trials`` command that lists this study's trials from its storage."""
    if _is_url(opts.storage):
        url = redact(driver_url(opts.storage))
        return f"optuna trials --study-name {study.name} --storage '{url}'"
    path = _journal_path(opts)
    return (
        f"optuna trials --study-name {study.name} --storage {path} "
        "--storage-class JournalFileBackend"
    )


def _study_attrs(study: Study, opts: SearchOptions) -> dict[str, Any]:
    """What a resumed search must share with the stored one."""
    from optuna.distributions import distribution_to_json

    searched = {p.name for p in study.space.searched()}
    cfg = study.check_overrides(opts.overrides).to_dict()
    config = {k: v for k, v in cfg.items() if k not in searched and k not in _LOCAL_FIELDS}
    return {
        "dgkd_metric": study.metric,
        "dgkd_space": {k: distribution_to_json(d) for k, d in study.space.distributions().items()},
        "dgkd_config": config,
    }


def _mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    if "dgkd_space" not in stored:
        return None
    if stored.get("dgkd_metric") != wanted["dgkd_metric"]:
        return f"metric {stored.get('dgkd_metric')} (now {wanted['dgkd_metric']})"
    if stored.get("dgkd_space") != wanted["dgkd_space"]:
        return "search space"
    old, new = stored.get("dgkd_config", {}), wanted["dgkd_config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"config ({key} {old.get(key)!r}, now {new.get(key)!r})"
    return None


def check_storage(study: Study, opts: SearchOptions) -> None:
    """Fail early, before anything is moved or written: storage unreachable, or holding this
    study with another space, metric or configuration (a resume would mix incomparable trials).

    Raises:
        SearchInputError: with what to do about it.
    """
    if not _is_url(opts.storage):
        path = _journal_path(opts)
        if opts.fresh or not path.exists():
            return
    storage = open_storage(opts)
    if opts.fresh:
        return
    try:
        stored = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        return
    if stored.direction.name.lower() != study.direction:
        what = f"direction {stored.direction.name.lower()}"
    else:
        what = _mismatch(stored.user_attrs, _study_attrs(study, opts))
    if what:
        raise SearchInputError(
            f"{storage_label(opts)} holds study {study.name} with another {what}; rerun with "
            "the same study and --set options, or add --fresh to move the old one aside"
        )


def _move_study_aside(storage: BaseStorage, name: str) -> str | None:
    """Copy an RDB study to ``<name>.old-<timestamp>`` and delete the original (for --fresh)."""
    try:
        optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    target = f"{name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    names = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    n = 1
    while target in names:
        n += 1
        target = f"{name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    optuna.copy_study(
        from_study_name=name, from_storage=storage, to_storage=storage, to_study_name=target
    )
    optuna.delete_study(study_name=name, storage=storage)
    return target


# --- samplers and pruners ---------------------------------------------------------------------


def make_sampler(study: Study, *, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded (``seed`` defaults to the study's)."""
    seed = study.seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if study.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if study.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if study.sampler == "grid":
            return optuna.samplers.GridSampler(study.space.grid(), seed=seed)
        if study.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed)
        if study.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {study.sampler!r}")


def make_pruner(study: Study, epochs: int, warmup: int = 0) -> optuna.pruners.BasePruner:
    """The study's pruner for trials of ``epochs`` epochs (steps are epochs, 1-based).

    Median: a trial is compared with the median of the complete trials only after 10 of them
    (TPE's random start-up), so the bar is a spread of parameter values rather than the best
    few; from the later of the distillation warmup (``warmup`` epochs, when trials still differ
    little) and a quarter of the epochs; and every eighth of the epochs, not every epoch, so
    that validation noise (0.25% per example on MNIST-1D's 400) is not tested at every step.
    Hyperband: budgets from an eighth of the epochs to all of them.
    """
    warmup = min(max(warmup, epochs // 4), max(0, epochs - 1))
    if study.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS,
            n_warmup_steps=warmup,
            interval_steps=max(1, epochs // 8),
        )
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, epochs // 8), max_resource=max(1, epochs), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def _grid_size(study: Study) -> int | None:
    if study.sampler != "grid":
        return None
    size = 1
    for values in (study.space.grid() or {}).values():
        size *= len(values)
    return size


def _derive_seed(seed: int, worker: int, existing: int) -> int:
    """Seeds that differ per worker and per restart (a restarted random sampler must not
    replay its first draws), and equal the study's seed for a fresh single-worker search."""
    return (seed + 7919 * worker + 1_000_003 * existing) % (2**32)


# --- records ----------------------------------------------------------------------------------


def _retries(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[int, int]:
    """``{interrupted trial number: number of the trial re-running its parameters}``."""
    out: dict[int, int] = {}
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:  # RetryHeartbeatStaleTrialCallback
            out[int(history[-1])] = t.number
        elif "retry_of" in t.user_attrs:
            out[int(t.user_attrs["retry_of"])] = t.number
    return out


def _interrupted(t: optuna.trial.FrozenTrial, retries: dict[int, int]) -> bool:
    return t.state == TrialState.FAIL and (
        bool(t.user_attrs.get("interrupted")) or t.number in retries
    )


def _occupied(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Trials that count toward the total: finished (not interrupted) and running."""
    retries = _retries(trials)
    n = 0
    for t in trials:
        if t.state == TrialState.RUNNING or (
            t.state.is_finished() and not _interrupted(t, retries)
        ):
            n += 1
    return n


def _finished_count(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    retries = _retries(trials)
    return sum(t.state.is_finished() and not _interrupted(t, retries) for t in trials)


def to_records(trials: Sequence[optuna.trial.FrozenTrial]) -> list[TrialRecord]:
    """Optuna trials as backend-neutral records (final metrics from ``user_attrs``)."""
    retries = _retries(trials)
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = t.user_attrs
        state = t.state.name
        fail_reason = str(ua.get("fail_reason", "")) if state == "FAIL" else ""
        if _interrupted(t, retries):
            why = fail_reason.removeprefix(INTERRUPTED).strip(" :;")
            why = why or ("its heartbeat stopped" if "interrupted" not in ua else "stopped")
            why = why.split("; re-", 1)[0]
            rerun = retries.get(t.number)
            fail_reason = f"{INTERRUPTED} ({why})" + (
                f"; re-run as trial {rerun}" if rerun is not None else ""
            )
        elif state == "FAIL" and not fail_reason:
            fail_reason = "failed (see the worker's log)"
        pruned_epoch = None
        if state == "PRUNED":
            pruned_epoch = ua.get("pruned_epoch", t.last_step)
        metrics = {
            k: (math.nan if v is None else float(v)) for k, v in ua.get("metrics", {}).items()
        }
        duration = t.duration.total_seconds() if t.duration is not None else None
        out.append(
            TrialRecord(
                number=t.number,
                state=state,
                value=t.value if state == "COMPLETE" else None,
                params=dict(t.params),
                duration_s=duration,
                pruned_epoch=None if pruned_epoch is None else int(pruned_epoch),
                metrics=metrics,
                fail_reason=fail_reason,
                fail_epoch=ua.get("fail_epoch") if state == "FAIL" else None,
            )
        )
    return out


def load_records(
    study: Study, *, out_dir: str | Path, storage: str | None = None
) -> list[TrialRecord] | None:
    """Every trial of ``study`` from its storage; None when the storage has no such study."""
    opts = SearchOptions(trials=1, out_dir=Path(out_dir), storage=storage)
    if not _is_url(storage) and not _journal_path(opts).exists():
        return None
    try:
        ostudy = optuna.load_study(study_name=study.name, storage=open_storage(opts))
    except KeyError:
        return None
    return to_records(ostudy.get_trials(deepcopy=False))


# --- workers ----------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), to tell a reused pid from the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


_HOST = socket.gethostname()


def worker_id() -> str:
    """``host:pid:start`` of this process, recorded on each trial it runs."""
    return f"{_HOST}:{os.getpid()}:{_start_time(os.getpid()) or 0}"


def _owner_alive(owner: str) -> bool | None:
    """Whether the process that owns a trial runs; None when it is on another host."""
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != _HOST:
        return None
    if owner == worker_id():
        return False  # this process is only starting its workers: not running that trial
    if start != "0" and Path("/proc").is_dir():
        return _start_time(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(ostudy: optuna.Study, *, journal: bool) -> list[int]:
    """Fail RUNNING trials whose process is gone and enqueue their parameters again.

    RDB storages also do this by heartbeat; here it is immediate for processes of this host.
    Returns the numbers of the trials failed.
    """
    storage = ostudy._storage
    now = datetime.now()
    failed = []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker")
        who = "process " + ":".join(str(owner).split(":")[:2]) if owner else "its process"
        if owner is None:
            started = t.datetime_start or now
            if now - started < timedelta(seconds=_UNOWNED_STALE_S):
                continue
            alive: bool | None = False
        else:
            alive = _owner_alive(str(owner))
        if alive or (alive is None and not journal):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"{INTERRUPTED}: {who} stopped")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue
        ostudy.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed


class _TrialFailed(Exception):
    """A trial finished without a usable value (recorded as FAIL; the search goes on)."""


class _Worker:
    """Runs trials of one study in this process until the study's total is reached."""

    def __init__(
        self,
        study: Study,
        opts: SearchOptions,
        *,
        total: int,
        index: int,
        storage: BaseStorage,
        on_change: Callable[[list[TrialRecord]], None] | None = None,
    ) -> None:
        from filelock import FileLock

        self.study, self.opts, self.total, self.on_change = study, opts, total, on_change
        probe = optuna.load_study(study_name=study.name, storage=storage)
        existing = len(probe.get_trials(deepcopy=False))
        cfg = study.check_overrides(opts.overrides)
        self.ostudy = optuna.load_study(
            study_name=study.name,
            storage=storage,
            sampler=make_sampler(study, seed=_derive_seed(study.seed, index, existing)),
            pruner=make_pruner(study, cfg.epochs, cfg.warmup),
        )
        lock_dir = _journal_path(opts).parent if not _is_url(opts.storage) else opts.out_dir
        Path(lock_dir).mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(Path(lock_dir) / CLAIM_LOCK))
        self._holding = False
        self._id = worker_id()
        self._heartbeat = _is_url(opts.storage)

    def records(self) -> list[TrialRecord]:
        return to_records(self.ostudy.get_trials(deepcopy=False))

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._lock.release()

    def loop(self) -> None:
        """Claim and run trials until finished + running trials reach the total."""
        callbacks = [self._after] if self.on_change else None
        while True:
            self._lock.acquire()
            self._holding = True
            try:
                if self._heartbeat:  # fail (and re-enqueue) trials whose heartbeat stopped first
                    optuna.storages.fail_stale_trials(self.ostudy)
                if _occupied(self.ostudy.get_trials(deepcopy=False)) >= self.total:
                    return
                self.ostudy.optimize(
                    self._objective,
                    n_trials=1,
                    catch=(DivergedError, _TrialFailed),
                    callbacks=callbacks,
                    gc_after_trial=False,
                )
            finally:
                self._release()

    def _after(self, _study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if self.on_change is not None:
            self.on_change(self.records())

    def _objective(self, trial: optuna.Trial) -> float:
        self._release()  # the trial now exists (RUNNING): others may claim theirs
        try:
            return self._trial(trial)
        except KeyboardInterrupt:  # keeps its number, does not count, re-runs its parameters
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", f"{INTERRUPTED}: stopped by Ctrl-C or SIGTERM")
            self.ostudy.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            raise

    def _trial(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", self._id)
        params = self.study.space.suggest(trial)
        cfg = self.study.config(params, self.opts.overrides)
        if self.on_change is not None:
            self.on_change(self.records())
        metric, last = self.study.metric, cfg.epochs

        def report(epoch: int, row: dict[str, float]) -> None:
            value = row.get(metric)
            if value is None or not math.isfinite(value):
                return
            trial.report(float(value), epoch)
            if epoch < last and trial.should_prune():  # a finished trial is never pruned
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        try:
            metrics = run_trial(cfg, report)
        except optuna.TrialPruned:
            raise
        except DivergedError as exc:
            trial.set_user_attr("fail_reason", f"diverged: {exc}")
            trial.set_user_attr("fail_epoch", exc.epoch)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("metrics", clean_metrics(metrics))
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"{metric} is {value}")
            raise _TrialFailed(f"{metric} is {value}")
        return float(value)


# Ctrl-C and SIGTERM are deferred while this process writes or replays the journal. Optuna's
# journal file lock, interrupted while it waits, removes the lock of the process that holds it
# (which then fails its trial with "did not possess lock"), and a replay cut half-way leaves
# this process's copy of the study inconsistent. Both take milliseconds.
_critical = 0
_deferred = False


def _interrupt(signum: int, frame: Any) -> None:
    global _deferred
    if _critical:
        _deferred = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def _uninterruptible():
    global _critical, _deferred
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if not _critical and _deferred:
            _deferred = False
            raise KeyboardInterrupt


class _JournalStorage(JournalStorage):
    """A journal whose writes and replays an interruption cannot cut (see ``_interrupt``)."""

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        with _uninterruptible():
            super()._write_log(op_code, extra_fields)

    def _sync_with_backend(self) -> None:
        with _uninterruptible():
            super()._sync_with_backend()


class _Quiet:
    """Optuna's own per-trial logging off (we print our lines; it would print tracebacks of
    caught divergences); Ctrl-C and SIGTERM interrupt, but never inside a journal write;
    torch threads set. All restored on exit."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads  # None: leave torch's thread count alone

    def __enter__(self) -> _Quiet:
        self._verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        self._threads = set_threads(self.threads) if self.threads else None
        self._handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            self._handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
                self._handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        if self._threads is not None:
            set_threads(self._threads)
        self._warnings.__exit__(*exc)
        optuna.logging.set_verbosity(self._verbosity)


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its parent dies (even by SIGKILL).

    SIGTERM is what a worker already handles: its trial is marked interrupted and re-enqueued,
    so a killed ``dgkd-search`` leaves no orphan training on and no trial stuck RUNNING. Elsewhere
    (no prctl) the parent's own recovery on restart covers the same case.
    """
    import ctypes
    import sys

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(130)


def _worker_main(
    study: Study, opts: SearchOptions, total: int, index: int, errors: Any
) -> None:  # pragma: no cover - runs in a spawned process (covered by the subprocess tests)
    """Entry point of a spawned worker process."""
    import sys

    from dgkd.space import SpecError

    _die_with_parent()
    try:
        with _Quiet(threads_per_worker(opts.workers)):
            _Worker(study, opts, total=total, index=index, storage=open_storage(opts)).loop()
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseException as exc:
        bad = isinstance(exc, (ConfigError, SpecError, SearchInputError))
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        errors.put((index, bad, message))
        sys.exit(1)


# --- the search -------------------------------------------------------------------------------


def _create_or_load(study: Study, opts: SearchOptions, storage: BaseStorage) -> optuna.Study:
    ostudy = optuna.create_study(
        study_name=study.name, storage=storage, direction=study.direction, load_if_exists=True
    )
    if "dgkd_space" not in ostudy.user_attrs:
        for key, value in _study_attrs(study, opts).items():
            ostudy.set_user_attr(key, value)
        ostudy.set_user_attr("dgkd_source", study.source)
        for params in study.enqueue:
            ostudy.enqueue_trial(dict(params), skip_if_exists=True)
    return ostudy


def run(
    study: Study, opts: SearchOptions, *, log: Callable[[str], None] | None = None
) -> list[TrialRecord]:
    """Run ``study`` with Optuna until ``opts.trials`` trials have finished; every record.

    Raises:
        SearchInputError: unreachable storage, or a worker hit bad input.
        RuntimeError: a worker failed.
    """
    log = log or (lambda line: print(line, flush=True))
    with _Quiet(threads_per_worker(1) if opts.workers == 1 else None):
        return _run(study, opts, log)


def _run(study: Study, opts: SearchOptions, log: Callable[[str], None]) -> list[TrialRecord]:
    if opts.fresh and opts.storage is not None and not _is_url(opts.storage):
        from dgkd.search import move_aside  # a journal outside <out>/<study>/ starts over too

        moved = move_aside(_journal_path(opts))
        if moved is not None:
            log(f"moved previous journal {_journal_path(opts)} to {moved}")
    storage = open_storage(opts)
    if opts.fresh and _is_url(opts.storage):
        moved = _move_study_aside(storage, study.name)
        if moved:
            log(f"moved study {study.name} in {storage_label(opts)} to {moved}")
    Path(opts.out_dir).mkdir(parents=True, exist_ok=True)
    ostudy = _create_or_load(study, opts, storage)
    recovered = _recover(ostudy, journal=not _is_url(opts.storage))
    grid = _grid_size(study)
    total = min(opts.trials, grid) if grid else opts.trials

    reporter = SearchReporter(study, opts, total=total, log=log)
    threads = threads_per_worker(opts.workers)
    notes = [f"{opts.workers} worker(s) x {threads} thread(s)", f"storage {storage_label(opts)}"]
    if recovered:
        notes.append(f"re-enqueued interrupted trial(s) {', '.join(map(str, recovered))}")
    if grid and grid < opts.trials:
        notes.append(f"the grid has only {grid} points")
    with reporter:
        reporter.start(to_records(ostudy.get_trials(deepcopy=False)), note="; ".join(notes))
        try:
            if opts.workers == 1:
                worker = _Worker(
                    study, opts, total=total, index=0, storage=storage, on_change=reporter.update
                )
                worker.loop()
            else:
                _run_processes(study, opts, total, ostudy, reporter)
        except KeyboardInterrupt:
            records = to_records(ostudy.get_trials(deepcopy=False))
            reporter.update(records)
            from dgkd.export import write_search_outputs

            write_search_outputs(study, records, opts.out_dir, overrides=opts.overrides)
            log(
                f"interrupted at {_finished_count(ostudy.get_trials(deepcopy=False))}/{total} "
                "trials; rerun the same command to continue"
            )
            raise
        records = to_records(ostudy.get_trials(deepcopy=False))
        reporter.update(records)
    return records


def _run_processes(
    study: Study, opts: SearchOptions, total: int, ostudy: optuna.Study, reporter: SearchReporter
) -> None:
    """Spawn ``opts.workers`` processes sharing the storage; poll it for progress."""
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(study, opts, total, i, errors),
            name=f"dgkd-search-{study.name}-{i}",
        )
        for i in range(opts.workers)
    ]
    for p in procs:
        p.start()
    failure: tuple[int, bool, str] | None = None
    try:
        while any(p.is_alive() for p in procs):
            reporter.update(to_records(ostudy.get_trials(deepcopy=False)))
            with contextlib.suppress(queue.Empty):
                failure = failure or errors.get_nowait()
            if failure is not None:
                _stop(procs)
                break
            time.sleep(POLL_S)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        _stop(procs)
        raise
    while failure is None:
        try:
            failure = errors.get_nowait()
        except queue.Empty:
            break
    if failure is not None:
        index, bad, message = failure
        raise (SearchInputError if bad else RuntimeError)(f"worker {index}: {message}")
    codes = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if codes:
        raise RuntimeError(f"a worker exited with code {codes[0]}; rerun to continue the search")


def _stop(procs: Sequence[multiprocessing.process.BaseProcess], timeout: float = 30.0) -> None:
    """Interrupt workers (they fail and re-enqueue their trials), then wait; kill stragglers.

    SIGTERM, which workers turn into KeyboardInterrupt: SIGINT may be ignored by a worker
    started from a background job.
    """
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
