"""Ray's and Tune's own messages during a search go to ``<out>/<study>/ray.log``, not the terminal.

The search shows its progress itself; Tune's warnings (e.g. about experiment snapshots) and the
lines Ray's worker processes print (a traceback as an actor is stopped) would break into that
display and say nothing a user must act on. Ray has no setting that sends them to a file:
``ray.init(logging_level=...)`` only filters the driver's messages, Tune's ``TUNE_WARN_*``
variables silence single warnings outright, and ``log_to_driver=False`` drops the workers'
lines. So, for the search, the ``ray``, ``ray.tune`` and ``ray.train`` loggers write to the
file instead of stderr (the handler Ray gives the ``ray`` logger at import is set aside), and
so do Python warnings raised from Ray's code (a warning whose call stack passes through Ray)
and the workers' lines Ray forwards to this process. Everything is put back afterwards: a
program may run more searches, or use Ray otherwise, in the same process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

__all__ = ["LOG_FILE", "LOGGERS", "ray_log"]

LOG_FILE = "ray.log"  # under runs/<study>/
LOGGERS = ("ray", "ray.tune", "ray.train")
_FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
_PRINTER = "print_worker_logs"  # ray._private.worker's printer of the workers' lines

Note = Callable[[str], None]  # writes one line of the search's own to the log


class _File(logging.FileHandler):
    """Appends to the file, made (with its folder) at the first line, in its own format:
    ``ray.init`` sets its format on every handler of the ``ray`` logger."""

    def _open(self) -> io.TextIOWrapper:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def format(self, record: logging.LogRecord) -> str:
        return _FORMATTER.format(record)


def _from_ray(category: type[Warning], frame: FrameType | None) -> bool:
    """Whether a warning comes from Ray: its class is Ray's, or Ray's code is on the stack."""
    if category.__module__.split(".")[0] == "ray":
        return True
    while frame is not None:
        module = frame.f_globals.get("__name__")
        if isinstance(module, str) and (module == "ray" or module.startswith("ray.")):
            return True
        frame = frame.f_back
    return False


def _record(name: str, level: int, text: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, text, None, None)


@contextlib.contextmanager
def ray_log(path: Path, *, level: int = logging.INFO) -> Iterator[Note]:
    """Send Ray's logging (``level`` and above), Ray's warnings and the lines Ray's workers
    print to ``path`` (appended to) for the block; imports Ray.

    Usage: ``with ray_log(run / LOG_FILE) as note, connect(address): note("..."); ...``.

    Yields:
        A function that writes a line of the caller's own to the file (which makes it).
    """
    importlib.import_module("ray")  # first: at import Ray gives its logger the handler set aside
    handler = _File(path, delay=True, encoding="utf-8")
    saved: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level)  # on each: ray.init sets its own level on the ``ray`` logger
    shown = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if file is not None or not _from_ray(category, sys._getframe(1)):
            shown(message, category, filename, lineno, file, line)
            return
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        handler.handle(_record("py.warnings", logging.WARNING, text))

    def note(text: str) -> None:
        handler.handle(_record("dgkd", logging.INFO, text))

    warnings.showwarning = show
    try:
        with _worker_lines(handler):
            yield note
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = shown
        for logger, handlers, propagate, old_level in saved:
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(old_level)
        handler.close()


@contextlib.contextmanager
def _worker_lines(handler: logging.Handler) -> Iterator[None]:
    """The lines Ray forwards from its workers (``log_to_driver``) to ``handler``, in place of
    Ray's printer of them (looked up by Ray at each batch; a Ray without it prints as before)."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray
        yield
        return
    printer = getattr(ray_worker, _PRINTER, None)
    if printer is None:  # pragma: no cover - another Ray
        yield
        return

    def write(batch: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        pid, lines = batch.get("pid"), list(batch.get("lines") or ())
        name = f"{batch.get('actor_name') or batch.get('task_name') or 'worker'} pid={pid}"
        if pid in ("autoscaler", "raylet"):
            name = str(pid)
        if pid == "autoscaler":  # its status every few seconds: its events only, as Ray prints
            events = getattr(ray_worker, "filter_autoscaler_events", None)
            lines = list(events(lines)) if events else []
        level = logging.WARNING if batch.get("is_err") else logging.INFO
        for line in lines:
            handler.handle(_record(name, level, str(line)))

    setattr(ray_worker, _PRINTER, write)
    try:
        yield
    finally:
        if getattr(ray_worker, _PRINTER, None) is write:
            setattr(ray_worker, _PRINTER, printer)
