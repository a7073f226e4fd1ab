"""Tests for dgkd.io: atomic writes that fail half-way, JSON helpers, move_aside, cache_dir."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from dgkd import io
from dgkd.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    cache_dir,
    finite_or_none,
    json_metrics,
    move_aside,
)


class Boom(Exception):
    pass


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- atomic writes -----------------------------------------------------------------------------


def test_atomic_write_creates_parents_and_returns_the_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(str(target), b"\x00\x01data") == target
    assert target.read_bytes() == b"\x00\x01data"
    assert _names(target.parent) == ["out.bin"]  # no temporary file left behind


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_partial_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def half(f) -> None:
        f.write(b"new, but only half")
        f.flush()
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["results.json"]
    # The same for an interruption (not an Exception) and for a fresh target.
    fresh = tmp_path / "fresh.csv"

    def interrupted(f) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(fresh, interrupted)
    assert not fresh.exists()
    assert _names(tmp_path) == ["results.json"]


def test_the_target_keeps_its_old_content_until_the_rename(tmp_path: Path) -> None:
    """Written in place (``open(path, "wb")``), a reader would see a truncated file."""
    target = tmp_path / "best.json"
    target.write_text("old")
    seen: list[str] = []

    def write(f) -> None:
        f.write(b"new")
        seen.append(target.read_text())
        f.write(b" content")
        seen.append(target.read_text())

    atomic_write(target, write)
    assert seen == ["old", "old"]
    assert target.read_text() == "new content"


def test_the_file_is_complete_on_disk_before_it_replaces_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flush, fsync, then rename within the target's directory, then fsync the directory."""
    target = tmp_path / "trials.csv"
    target.write_text("old")
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_is_dir(fd)))
        real_fsync(fd)

    def replace(src, dst) -> None:
        src, dst = Path(src), Path(dst)
        events.append(("replace", src.parent, src.name, src.read_bytes(), dst))
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    atomic_write_bytes(target, b"x" * 10)
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] is False and events[2][1] is True  # the file, then its directory
    _, parent, name, content, dst = events[1]
    assert parent == tmp_path and dst == target
    assert name.startswith(".trials.csv.") and name.endswith(".tmp")
    assert content == b"x" * 10  # flushed before the rename


def _fd_is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def test_a_directory_that_cannot_be_synced_does_not_fail_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_dir_open(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError("no directory handles here")
        return real_open(path, flags, *args)

    monkeypatch.setattr(io.os, "open", no_dir_open)
    target = tmp_path / "out.txt"
    atomic_write_text(target, "ok")
    assert target.read_text() == "ok"


def test_text_is_utf8_and_json_is_indented_in_order_with_a_newline(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "t.txt", "ε = 6 °")
    assert path.read_bytes() == "ε = 6 °".encode()
    obj = {"z": 1, "a": [1.5, None], "path": Path("/x/y")}
    path = atomic_write_json(tmp_path / "o.json", obj)
    text = path.read_text()
    assert text == '{\n  "z": 1,\n  "a": [\n    1.5,\n    null\n  ],\n  "path": "/x/y"\n}\n'
    assert json.loads(text) == {"z": 1, "a": [1.5, None], "path": "/x/y"}


# --- NaN and infinities ------------------------------------------------------------------------


def test_finite_or_none() -> None:
    for bad in (math.nan, math.inf, -math.inf, np.float64("nan")):
        assert finite_or_none(bad) is None
    for good in (0.0, -1.5, 1e308, 3, "nan", None, True):
        assert finite_or_none(good) == good and type(finite_or_none(good)) is type(good)


def test_json_metrics_are_plain_floats_or_none() -> None:
    got = json_metrics({"acc": 1, "ece": np.float32(0.25), "kl": math.nan, "m": -math.inf})
    assert got == {"acc": 1.0, "ece": 0.25, "kl": None, "m": None}
    assert type(got["acc"]) is float and type(got["ece"]) is float
    assert list(got) == ["acc", "ece", "kl", "m"]
    assert json.loads(json.dumps(got)) == got


# --- move_aside and cache_dir ------------------------------------------------------------------


def test_move_aside_renames_never_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io.time, "strftime", lambda fmt: "20240102-030405")
    assert move_aside(tmp_path / "missing") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert move_aside(empty) is None and empty.is_dir()
    runs = tmp_path / "runs"
    moved = []
    for i in range(3):
        runs.mkdir()
        (runs / "trials.csv").write_text(str(i))
        moved.append(move_aside(runs))
        assert not runs.exists()
    assert [p.name for p in moved] == [
        "runs.old-20240102-030405",
        "runs.old-20240102-030405-2",
        "runs.old-20240102-030405-3",
    ]
    assert [(p / "trials.csv").read_text() for p in moved] == ["0", "1", "2"]
    file = tmp_path / "best.json"
    file.write_text("{}")
    assert move_aside(str(file)) == tmp_path / "best.json.old-20240102-030405"


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DGKD_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DGKD_CACHE", "~/cache")
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("DGKD_CACHE", "")
    assert cache_dir() == Path(platformdirs.user_cache_dir("dgkd"))
    monkeypatch.delenv("DGKD_CACHE")
    assert cache_dir() == Path(platformdirs.user_cache_dir("dgkd"))
    assert cache_dir().name == "dgkd"


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
            os.umask(mask)
            path = io.atomic_write_text(tmp_path / f"f{mask:o}.txt", "x")
            assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)
            io.atomic_write_json(path, {})  # replacing a file: the same mode again
            assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        os.umask(old)


def test_move_aside_stamps_the_date_and_time(tmp_path: Path) -> None:
    path = tmp_path / "runs"
    path.mkdir()
    (path / "best.json").write_text("{}")
    moved = move_aside(path)
    assert moved is not None and moved.parent == tmp_path
    assert re.fullmatch(r"runs\.old-20\d{6}-\d{6}", moved.name), moved.name
    stamp = moved.name.removeprefix("runs.old-")
    assert time.strptime(stamp, "%Y%m%d-%H%M%S")  # a real date and time, in this order


def test_files_get_the_umasks_permissions(tmp_path: Path) -> None:
    """Like open(): 0o666 less the umask (a bare temporary file would be 0o600)."""
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            path = atomic_write_bytes(tmp_path / f"m{mask:o}", b"x")
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == mode, oct(mask)


def test_the_umask_is_read_without_changing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc shows it, the umask is read, not set and restored (other threads may be
    creating files meanwhile); elsewhere set and restored."""
    old = os.umask(0o027)
    try:
        calls: list[int] = []
        real_umask = os.umask

        def spy(mask: int) -> int:
            calls.append(mask)
            return real_umask(mask)

        monkeypatch.setattr(io.os, "umask", spy)
        assert io._umask() == 0o027 and calls == []

        def no_proc(path, *args, **kwargs):
            raise OSError("no /proc here")

        monkeypatch.setattr(io, "open", no_proc, raising=False)
        assert io._umask() == 0o027 and len(calls) == 2
        assert real_umask(0o027) == 0o027  # restored
    finally:
        os.umask(old)
