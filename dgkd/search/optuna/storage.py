"""Where an Optuna search lives: a journal file or an RDB, opened, checked, moved aside.

By default a journal file ``runs/<study>/journal.log`` (fast, safe for several processes on one
machine, readable by ``optuna trials`` and optuna-dashboard). ``--storage URL`` takes any
SQLAlchemy URL Optuna supports (PostgreSQL to share a study between machines), opened so that
a restarted database server is waited for and reconnected to (:mod:`.reconnect`), and with
heartbeats: a trial whose process stops beating for ``GRACE_PERIOD_S`` is failed and re-enqueued by
``RetryHeartbeatStaleTrialCallback``. ``--storage PATH`` (no ``://``) is a journal file elsewhere.

Ctrl-C and SIGTERM are deferred while this process writes or replays the journal. Optuna's
journal file lock, interrupted while it waits, removes the lock of the process that holds it
(which then fails its trial with "did not possess lock"), and a replay cut half-way leaves this
process's copy of the study inconsistent. Both take milliseconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from dgkd.errors import one_line
from dgkd.io import move_aside
from dgkd.search.common import Log, check_signature, signature
from dgkd.search.optuna.reconnect import ReconnectingRDBStorage
from dgkd.search.optuna.records import to_records
from dgkd.search.records import SearchInputError, SearchOptions, TrialRecord

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = [
    "GRACE_PERIOD_S",
    "HEARTBEAT_INTERVAL_S",
    "JOURNAL_FILE",
    "check_storage",
    "create_or_load",
    "defer_interrupt",
    "uninterruptible",
    "driver_url",
    "inspect_command",
    "is_url",
    "journal_path",
    "load_records",
    "move_study_aside",
    "open_for_search",
    "open_storage",
    "redact",
    "storage_label",
]

JOURNAL_FILE = "journal.log"
HEARTBEAT_INTERVAL_S = 10  # RDB: a running trial records a heartbeat this often
GRACE_PERIOD_S = 40  # RDB: a trial silent this long is failed and re-enqueued
MAX_RETRY = 3  # RDB: re-runs of a trial whose heartbeat stopped
_ATTR_PREFIX = "dgkd_"  # the study's signature as user attrs: dgkd_metric, dgkd_space, ...
_ATTR_KEYS = ("backend", "metric", "space", "config", "seeds")  # direction: the study's own


def _env_seconds(name: str, default: int) -> int:
    """A positive whole number of seconds from the environment (DGKD_HEARTBEAT_S and
    DGKD_GRACE_PERIOD_S tune the heartbeat for a cluster), else ``default``."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SearchInputError(f"{name} must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


# --- names ------------------------------------------------------------------------------------


def is_url(storage: str | None) -> TypeGuard[str]:
    """Whether ``--storage`` is a database URL (else a journal path, or None for the default)."""
    return storage is not None and "://" in storage


def journal_path(opts: SearchOptions) -> Path:
    """The journal file: ``--storage PATH``, else ``<out_dir>/journal.log``."""
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
    scheme, sep, rest = url.partition("://")
    v3, v2 = (importlib.util.find_spec(m) is not None for m in ("psycopg", "psycopg2"))
    if scheme in ("postgresql", "postgres") and v2 and not v3:
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def storage_label(opts: SearchOptions) -> str:
    """Where the study lives, for humans (password hidden)."""
    if is_url(opts.storage):
        return redact(opts.storage)
    return str(journal_path(opts))


def inspect_command(study: Study, opts: SearchOptions) -> str:
    """The ``optuna best-trial`` command that shows the study's best trial from its storage,
    one line per parameter and metric (per seed too: ``user_attrs_seed<s>_<metric>``); the
    environment variable keeps Optuna's warning that the command is experimental off."""
    head = f"PYTHONWARNINGS=ignore optuna best-trial --flatten -f yaml --study-name {study.name}"
    if is_url(opts.storage):
        return f"{head} --storage '{redact(driver_url(opts.storage))}'"
    return f"{head} --storage {journal_path(opts)} --storage-class JournalFileBackend"


# --- opening ----------------------------------------------------------------------------------


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
    if not is_url(opts.storage):
        path = journal_path(opts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise SearchInputError(f"cannot open journal {path}: {exc.strerror or exc}") from None
    url = driver_url(opts.storage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ReconnectingRDBStorage(
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
        raise SearchInputError(
            f"cannot open storage {redact(url)}: {one_line(exc)} (check the URL, that the "
            "database server is running and reachable, and that the database exists)"
        ) from None


def open_for_search(study: Study, opts: SearchOptions, log: Log) -> BaseStorage:
    """The storage a search writes to; with ``--fresh``, the old study moved aside first (a
    journal outside ``<out>/<study>/``, or the study's rows in a database)."""
    if opts.fresh and opts.storage is not None and not is_url(opts.storage):
        moved = move_aside(journal_path(opts))
        if moved is not None:
            log(f"moved previous journal {journal_path(opts)} to {moved}")
    storage = open_storage(opts)
    if opts.fresh and is_url(opts.storage):
        moved_to = move_study_aside(storage, study.name)
        if moved_to:
            log(f"moved study {study.name} in {storage_label(opts)} to {moved_to}")
    return storage


def load_records(
    study: Study, *, out_dir: str | Path, storage: str | None = None
) -> list[TrialRecord] | None:
    """Every trial of ``study`` from its storage; None when the storage has no such study."""
    opts = SearchOptions(trials=1, out_dir=Path(out_dir), storage=storage)
    if not is_url(storage) and not journal_path(opts).exists():
        return None
    try:
        ostudy = optuna.load_study(study_name=study.name, storage=open_storage(opts))
    except KeyError:
        return None
    return to_records(ostudy.get_trials(deepcopy=False))


# --- the study's signature --------------------------------------------------------------------


def _stored_signature(ostudy: optuna.Study) -> dict[str, Any]:
    """The signature a stored study was created with (only its direction for a study from
    before signatures were recorded)."""
    stored: dict[str, Any] = {"direction": ostudy.direction.name.lower()}
    attrs = ostudy.user_attrs
    if _ATTR_PREFIX + "space" in attrs:
        stored.update({k: attrs[_ATTR_PREFIX + k] for k in _ATTR_KEYS if _ATTR_PREFIX + k in attrs})
        stored["config"] = stored.get("config") or {}
    return stored


def check_storage(study: Study, opts: SearchOptions) -> None:
    """Fail early, before anything is moved or written: storage unreachable, or holding this
    study with another space, metric or configuration (a resume would mix incomparable trials).

    Raises:
        SearchInputError: with what to do about it.
    """
    if not is_url(opts.storage):
        path = journal_path(opts)
        if opts.fresh or not path.exists():
            return
    storage = open_storage(opts)
    if opts.fresh:
        return
    try:
        stored = optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        return
    check_signature(
        _stored_signature(stored),
        signature(study, opts),
        holder=f"{storage_label(opts)} holds study {study.name}",
    )


def create_or_load(
    study: Study, opts: SearchOptions, storage: BaseStorage, *, enqueue: bool = True
) -> optuna.Study:
    """The study in ``storage``; a new one records its signature and (``enqueue``) its points."""
    ostudy = optuna.create_study(
        study_name=study.name,
        storage=storage,
        direction=study.direction,  # type: ignore[arg-type]  # validated: maximize | minimize
        load_if_exists=True,
    )
    if _ATTR_PREFIX + "space" not in ostudy.user_attrs:
        wanted = signature(study, opts)
        # One journal write per attribute: the space goes last, as the mark that the whole
        # signature is stored, so a search started at the same moment never reads half of it.
        for key in sorted(_ATTR_KEYS, key=lambda k: k == "space"):
            ostudy.set_user_attr(_ATTR_PREFIX + key, wanted[key])
        ostudy.set_user_attr("dgkd_source", study.source)
        for params in study.enqueue if enqueue else ():
            ostudy.enqueue_trial(dict(params), skip_if_exists=True)
    return ostudy


def move_study_aside(storage: BaseStorage, name: str) -> str | None:
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


# --- interruptions (see the module docstring) -------------------------------------------------

# Python runs signal handlers in the main thread only, so only its journal writes can be cut;
# those of other threads (the trials of a batch) finish while the main thread stops.
_main = threading.local()  # .critical: journal writes in progress; .deferred: a signal came


def defer_interrupt(signum: int, frame: Any) -> None:
    """Signal handler for SIGINT and SIGTERM: KeyboardInterrupt, after the main thread's
    journal write in progress, if any."""
    if getattr(_main, "critical", 0):
        _main.deferred = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """A block the main thread's SIGINT/SIGTERM cannot cut: a signal arriving inside is raised as
    KeyboardInterrupt when the outermost such block ends."""
    _main.critical = getattr(_main, "critical", 0) + 1
    try:
        yield
    finally:
        _main.critical -= 1
        if not _main.critical and getattr(_main, "deferred", False):
            _main.deferred = False
            raise KeyboardInterrupt


class _JournalStorage(JournalStorage):
    """A journal whose writes and replays an interruption cannot cut."""

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        with uninterruptible():
            super()._write_log(op_code, extra_fields)

    def _sync_with_backend(self) -> None:
        with uninterruptible():
            super()._sync_with_backend()
