"""Atomic file writes and the cache directory.

Results and caches are written to a temporary file in the target's directory, flushed with fsync
and renamed over the target, so a reader (or a crash) only ever sees the old or the new file.
The file gets the mode a plain ``open`` would give it (0644 under umask 022), not the temporary
file's private 0600.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import platformdirs

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_dir",
    "finite_or_none",
    "json_metrics",
    "move_aside",
]


def cache_dir() -> Path:
    """``$DGKD_CACHE`` if set, else the user's cache directory (``~/.cache/dgkd`` on Linux)."""
    env = os.environ.get("DGKD_CACHE")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("dgkd"))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a temporary file, fsync it, and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (other threads may be
    creating files), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def finite_or_none(value: Any) -> Any:
    """``value`` unchanged, except NaN and infinities, which become None (JSON rejects them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_metrics(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics as plain floats, NaN and infinities as None (for JSON files and databases)."""
    return {key: finite_or_none(float(value)) for key, value in metrics.items()}


def move_aside(path: str | os.PathLike) -> Path | None:
    """Rename ``path`` to ``<path>.old-<timestamp>`` (never delete); None if nothing to move.

    An empty directory counts as nothing to move.
    """
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
