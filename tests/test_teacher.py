"""Tests for dgkd.teacher: the content-addressed cache, its locking and corruption handling,
and loading a user's checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dgkd.teacher as teacher_mod
from dgkd.config import TrainConfig
from dgkd.models import build_model
from dgkd.teacher import TeacherError, load_teacher, teacher_key
from dgkd.train import splits_for, train

CPU = torch.device("cpu")

# Loads one teacher in a fresh process (optionally after a barrier file appears) and prints its
# source and a digest of its test logits.
_LOAD_SCRIPT = """
import hashlib, json, sys, time
from pathlib import Path
import torch
from dgkd.teacher import load_teacher
from dgkd.config import TrainConfig
from dgkd.train import splits_for

cfg = TrainConfig(**json.loads(sys.argv[1]))
splits = splits_for(cfg)
if len(sys.argv) > 2:
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.005)
bundle = load_teacher(cfg, splits, device=torch.device("cpu"))
digest = hashlib.sha256(bundle.test_logits.numpy().tobytes()).hexdigest()
print(json.dumps({"source": bundle.source, "digest": digest}))
"""


def _digest(bundle) -> str:
    return hashlib.sha256(bundle.test_logits.numpy().tobytes()).hexdigest()


def _entry(cache: Path, cfg: TrainConfig) -> tuple[Path, Path]:
    key = teacher_key(cfg)
    return cache / "teachers" / f"{key}.pt", cache / "teachers" / f"{key}.json"


def _splits(cfg: TrainConfig):
    return splits_for(cfg)


def _spawn(cfg: TrainConfig, *barrier: Path) -> subprocess.Popen:
    args = [sys.executable, "-c", _LOAD_SCRIPT, json.dumps(cfg.to_dict()), *map(str, barrier)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def fresh_memo(monkeypatch: pytest.MonkeyPatch) -> dict:
    """An empty in-process teacher memo, as in a new process (the disk cache stays)."""
    memo: dict = {}
    monkeypatch.setattr(teacher_mod, "_MEMO", memo)
    return memo


# --- the cache ---------------------------------------------------------------------------------


def test_fresh_process_loads_from_cache(tiny: TrainConfig, dgkd_cache: Path) -> None:
    bundle = load_teacher(tiny, _splits(tiny), device=CPU)  # trained here or earlier
    weights, meta = _entry(dgkd_cache, tiny)
    info = json.loads(meta.read_text())
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["config"]["epochs"] == 2 and info["config"]["method"] == "ce"
    got = _result(_spawn(tiny))
    assert got["source"] == "cache"  # not trained again
    assert got["digest"] == _digest(bundle)  # the very same teacher


def test_second_request_in_process_comes_from_memory(tiny: TrainConfig) -> None:
    splits = _splits(tiny)
    first = load_teacher(tiny, splits, device=CPU)
    again = load_teacher(tiny.replace(seed=3, alpha=2.0), splits, device=CPU)
    assert again.source == "memory"
    assert again.model is first.model and again.test_logits is first.test_logits


def test_cache_key_tracks_only_what_shapes_the_teacher(tiny: TrainConfig) -> None:
    key = teacher_key(tiny)
    assert len(key) == 16 and key == teacher_key(TrainConfig(epochs=2, teacher_epochs=2))
    for changes in (
        {"teacher_epochs": 3},
        {"teacher_width": 32},
        {"teacher": "mlp"},
        {"teacher_seed": 1},
        {"teacher_lr": 0.03},
        {"val_pool": 0},  # the old protocol: trains on 3200 examples (a carve), not 4000
        {"dataset": "cifar10", "teacher": "resnet8", "student": "resnet8"},
    ):
        assert teacher_key(tiny.replace(**changes)) != key, changes
    for changes in (
        {"alpha": 2.0},
        {"beta": 2.0},
        {"epsilon": 0.0},
        {"temperature": 2.0},
        {"method": "kd"},
        {"student_width": 16},
        {"student": "mlp"},
        {"seed": 7},
        {"epochs": 30},
        {"warmup": 0},
        {"device": "cpu"},
        {"data_root": "/elsewhere"},
        {"teacher_lr": TrainConfig().lr},  # explicit teacher lr equal to the student's: same recipe
        # Evaluated, never trained on: the pools' sizes, and the carve a pool replaces.
        {"val_pool": 1000},
        {"test_pool": 0},
        {"test_pool": 1000},
        {"val_fraction": 0.1},
        {"split_seed": 1},
        {"val_pool": 0, "val_fraction": 0.0},  # no carve: the same 4000 training examples
    ):
        assert teacher_key(tiny.replace(**changes)) == key, changes


def test_under_the_old_protocol_the_carve_keys_the_teacher(tiny: TrainConfig) -> None:
    old = tiny.replace(val_pool=0)
    key = teacher_key(old)
    for changes in ({"val_fraction": 0.1}, {"split_seed": 1}):
        assert teacher_key(old.replace(**changes)) != key, changes
    assert teacher_key(old.replace(test_pool=0)) == key
    # Image data ignore the pools: no pool value changes their teacher.
    image = tiny.replace(dataset="cifar10", teacher="resnet8", student="resnet8")
    for changes in ({"val_pool": 0}, {"test_pool": 0}, {"val_pool": 1000}):
        assert teacher_key(image.replace(**changes)) == teacher_key(image), changes
    assert teacher_key(image.replace(val_fraction=0.1)) != teacher_key(image)


def test_the_memo_keeps_logits_per_test_split(tiny: TrainConfig) -> None:
    """One teacher (one key), two test pools: each request gets logits on its own test split."""
    first = load_teacher(tiny, _splits(tiny), device=CPU)
    other_cfg = tiny.replace(test_pool=200)
    other = load_teacher(other_cfg, _splits(other_cfg), device=CPU)
    assert teacher_key(other_cfg) == teacher_key(tiny) and other.source != "memory"
    assert len(first.test_logits) == 400 and len(other.test_logits) == 200
    assert len(first.published_test_logits) == len(other.published_test_logits) == 1000
    assert torch.equal(first.published_test_logits, other.published_test_logits)
    again = load_teacher(tiny.replace(seed=5), _splits(tiny), device=CPU)
    assert again.source == "memory" and again.test_logits is first.test_logits


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite(path: Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


def _flip_byte(path: Path) -> None:
    # torch.load may well accept this file: only the checksum can tell.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_truncate, _overwrite, _flip_byte], ids=lambda f: f.__name__)
def test_corrupt_cache_entry_is_retrained(
    tiny: TrainConfig, dgkd_cache: Path, fresh_memo: dict, caplog, corrupt
) -> None:
    seed = {"_truncate": 11, "_overwrite": 12, "_flip_byte": 13}[corrupt.__name__]
    cfg = tiny.replace(teacher_width=12, teacher_seed=seed)  # a teacher of its own
    first = load_teacher(cfg, _splits(cfg), device=CPU)
    assert first.source == "trained"
    weights, _ = _entry(dgkd_cache, cfg)
    corrupt(weights)
    fresh_memo.clear()
    with caplog.at_level(logging.WARNING, logger="dgkd.teacher"):
        result = train(cfg)  # the run still succeeds
    assert "corrupt" in caplog.text
    assert result.metrics["teacher_test_acc"] == pytest.approx(
        (first.test_logits.argmax(1) == _splits(cfg).test_y).float().mean().item()
    )
    fresh_memo.clear()
    repaired = load_teacher(cfg, _splits(cfg), device=CPU)
    assert repaired.source == "cache"  # the retrained teacher replaced the bad entry
    assert torch.equal(repaired.test_logits, first.test_logits)  # retraining is deterministic


def test_concurrent_requests_train_once(tiny: TrainConfig, dgkd_cache: Path, tmp_path) -> None:
    cfg = tiny.replace(teacher_width=12, teacher_seed=21)
    weights, _ = _entry(dgkd_cache, cfg)
    assert not weights.exists()
    go = tmp_path / "go"
    procs = [_spawn(cfg, tmp_path / f"ready{i}", go) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()  # both ask at the same moment
    results = [_result(p) for p in procs]
    assert sorted(r["source"] for r in results) == ["cache", "trained"]
    assert results[0]["digest"] == results[1]["digest"]
    leftovers = [p.name for p in weights.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


# --- teacher_checkpoint ------------------------------------------------------------------------


def test_teacher_checkpoint_loads_state_dict(tiny: TrainConfig, tmp_path: Path) -> None:
    splits = _splits(tiny)
    cached = load_teacher(tiny, splits, device=CPU)
    plain, wrapped = tmp_path / "teacher.pt", tmp_path / "wrapped.pt"
    torch.save(cached.model.state_dict(), plain)
    torch.save({"state_dict": cached.model.state_dict(), "epoch": 2}, wrapped)
    for path in (plain, wrapped):
        cfg = tiny.replace(teacher_checkpoint=str(path))
        bundle = load_teacher(cfg, splits, device=CPU)
        assert bundle.source == str(path)
        assert torch.equal(bundle.test_logits, cached.test_logits)
    result = train(tiny.replace(teacher_checkpoint=str(plain)))
    assert result.metrics["teacher_test_acc"] == train(tiny).metrics["teacher_test_acc"]


def test_same_checkpoint_on_another_split(tiny: TrainConfig, tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(load_teacher(tiny, _splits(tiny), device=CPU).model.state_dict(), path)
    cfg = tiny.replace(teacher_checkpoint=str(path), val_pool=0)
    assert len(load_teacher(cfg, _splits(cfg), device=CPU).train_logits) == 3200
    other = cfg.replace(val_fraction=0.1)
    assert len(load_teacher(other, _splits(other), device=CPU).train_logits) == 3600
    pooled = cfg.replace(val_pool=200)
    assert len(load_teacher(pooled, _splits(pooled), device=CPU).train_logits) == 4000


def test_missing_checkpoint_raises_teacher_error(tiny: TrainConfig, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "teacher.pt"
    with pytest.raises(TeacherError, match="does not exist") as info:
        train(tiny.replace(teacher_checkpoint=str(path)))
    assert str(path) in str(info.value)


def test_unusable_checkpoints_raise_teacher_error(tiny: TrainConfig, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(TeacherError, match="not a readable torch file") as info:
        train(tiny.replace(teacher_checkpoint=str(garbage)))
    assert str(garbage) in str(info.value)
    narrow = tmp_path / "narrow.pt"
    torch.save(
        build_model("cnn1d", num_classes=10, input_shape=(40,), width=12).state_dict(), narrow
    )
    with pytest.raises(TeacherError, match="does not fit teacher cnn1d") as info:
        train(tiny.replace(teacher_checkpoint=str(narrow)))  # a width-64 teacher
    assert str(narrow) in str(info.value) and "\n" not in str(info.value)
