"""One teacher per config, bit for bit, whichever command trains it.

Each entry point trains the smoke study's teacher (the default teacher, 2 epochs) in a cache of
its own, at a thread count of its own; every cache must then hold the same weights (one sha256).
The Ray backend's case is in ``tests/search/ray/test_ray_backend.py`` (it needs the cluster).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import TINY_POOL_ARGS, TINY_POOLS

import dgkd.teacher as teacher_mod
from dgkd.cli import train_main
from dgkd.config import TrainConfig
from dgkd.teacher import TEACHER_THREADS, teacher_key
from dgkd.train import train, train_population

# The smoke study's base: the default teacher, trained for 2 epochs, with small pools.
CFG = TrainConfig(epochs=2, teacher_epochs=2, **TINY_POOLS)
SET = ["--set", "epochs=2", "--set", "teacher_epochs=2", *TINY_POOL_ARGS]


def cached_teachers(cache: Path) -> dict[str, dict]:
    """Every teacher entry of a cache: key -> its JSON (sha256, provenance, config)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((cache / "teachers").glob("*.json"))}


def one_sha(cache: Path) -> str:
    """The sha256 of the cache's only teacher, which must be the one for ``CFG``."""
    entries = cached_teachers(cache)
    assert list(entries) == [teacher_key(CFG)], entries
    return entries[teacher_key(CFG)]["sha256"]


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point the cache at a new directory and forget the in-process teachers."""

    def make(name: str) -> Path:
        cache = tmp_path / name
        monkeypatch.setenv("DGKD_CACHE", str(cache))
        monkeypatch.setattr(teacher_mod, "_MEMO", {})
        return cache

    return make


def _subprocess(args: list[str], cache: Path, threads: int) -> None:
    env = {**os.environ, "DGKD_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_entry_point_trains_the_same_teacher(fresh_cache, tmp_path: Path, capsys) -> None:
    shas: dict[str, str] = {}

    cache = fresh_cache("train")
    train(CFG)
    shas["train()"] = one_sha(cache)

    cache = fresh_cache("train_population")
    torch.set_num_threads(2)
    try:  # two members on two threads: the student's threads are not the teacher's
        train_population([CFG.replace(threads=2), CFG.replace(threads=2, seed=1)])
    finally:
        torch.set_num_threads(1)
    shas["train_population(threads=2)"] = one_sha(cache)

    cache = fresh_cache("dgkd-train")
    assert train_main([*SET, "--set", "threads=2", "--json"]) == 0
    capsys.readouterr()
    shas["dgkd-train --set threads=2"] = one_sha(cache)

    ablate = "import sys; from dgkd.cli import ablate_main; sys.exit(ablate_main(sys.argv[1:]))"
    cache = tmp_path / "dgkd-ablate"
    argv = ["--variants", "ce", "--seeds", "2", "--teachers", "1", "--workers", "2", "--quiet"]
    _subprocess([ablate, *argv, *SET, "--out", str(tmp_path / "ablate-out")], cache, threads=2)
    shas["dgkd-ablate --workers 2"] = one_sha(cache)

    search = "import sys; from dgkd.cli import search_main; sys.exit(search_main(sys.argv[1:]))"
    cache = tmp_path / "dgkd-search"
    argv = ["--study", "smoke", "--trials", "2", "--workers", "2", "--batch", "2", "--quiet"]
    _subprocess([search, *argv, "--out", str(tmp_path / "search-out")], cache, threads=2)
    shas["dgkd-search --workers 2 --batch 2"] = one_sha(cache)

    assert len(set(shas.values())) == 1, shas
    entry = cached_teachers(cache)[teacher_key(CFG)]
    assert entry["threads"] == TEACHER_THREADS and entry["torch"] == torch.__version__
    assert entry["device"] == "cpu"


def test_teacher_of_another_torch_version_is_retrained_with_one_line(fresh_cache, caplog) -> None:
    cache = fresh_cache("versions")
    train(CFG)
    meta = cache / "teachers" / f"{teacher_key(CFG)}.json"
    info = json.loads(meta.read_text())
    first = info["sha256"]
    info["torch"] = "1.0.0"
    meta.write_text(json.dumps(info))
    fresh_cache("versions")  # same directory, a new process's memory
    with caplog.at_level(logging.WARNING, logger="dgkd.teacher"):
        train(CFG)
    lines = [r.getMessage() for r in caplog.records if r.name == "dgkd.teacher"]
    assert len(lines) == 1 and "torch 1.0.0" in lines[0] and "retraining" in lines[0], lines
    info = json.loads(meta.read_text())
    assert info["torch"] == torch.__version__ and info["sha256"] == first  # same bits again


def test_the_teacher_ignores_the_callers_thread_count(fresh_cache) -> None:
    """Trained under a caller on two threads or on one: the same weights and logits, and the
    caller's thread count is restored."""
    from dgkd.teacher import load_teacher
    from dgkd.train import splits_for

    cpu = torch.device("cpu")
    splits = splits_for(CFG)
    fresh_cache("two-threads")
    torch.set_num_threads(2)
    try:
        two = load_teacher(CFG, splits, device=cpu)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    fresh_cache("one-thread")
    one = load_teacher(CFG, splits, device=cpu)
    assert torch.equal(one.test_logits, two.test_logits)
    for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
