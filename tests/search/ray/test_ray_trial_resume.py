"""A Ray trial whose worker is killed mid-training is retried from its last Tune checkpoint (not
from its first epoch) and ends with the metrics of an uninterrupted run; the states of the ended
trial are deleted, its student kept."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from dgkd.checkpoint import STATE_GLOB
from dgkd.search.trial import train_trial
from dgkd.study import load_study

EPOCHS = 60  # batches of 16: 0.1-0.2 s an epoch, so the trial is seen mid-way


def _results(trial_dir: Path) -> list[dict]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_a_killed_ray_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    spec = tmp_path / "smoke.toml"  # no pruning: the trial runs every epoch
    spec.write_text(Path(load_study("smoke").source).read_text().replace('"median"', '"none"'))
    sets = {"epochs": EPOCHS, "batch_size": 16, "checkpoint_every": 2}
    cmd = [
        str(Path(sys.executable).with_name("dgkd-search")), "--study", str(spec), "--trials", "1",
        "--seeds", "1", "--backend", "ray", "--out", str(tmp_path), "--quiet",
        *(arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "smoke" / "ray" / "smoke"
    killed_at, killed_pid = None, -1
    deadline = time.monotonic() + 180
    while killed_at is None:  # after a state went to Tune, well before the end: kill the worker
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the trial was not seen mid-training"
        for trial_dir in runs.glob("*/"):
            with contextlib.suppress(OSError, IndexError, KeyError, ProcessLookupError):
                last = _results(trial_dir)[-1]
                saved = list(trial_dir.glob(f"checkpoint_*/{STATE_GLOB}"))
                if saved and 4 <= last["epoch"] <= EPOCHS // 2:
                    killed_pid = int(last["pid"])
                    os.kill(killed_pid, signal.SIGKILL)  # this search's worker, by pid
                    killed_at = int(last["epoch"])
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (trial_dir,) = runs.glob("*/")
    assert list(trial_dir.glob("error.*")), "the killed trial left no error record"
    results = _results(trial_dir)
    before = [int(r["epoch"]) for r in results if r["pid"] == killed_pid]
    after = [int(r["epoch"]) for r in results if r["pid"] != killed_pid]
    assert before == list(range(1, len(before) + 1)) and len(before) >= killed_at
    # The retry started after the last state it had sent (by the epoch it was killed at), not
    # from epoch 1, and ran to the end.
    assert 2 < after[0] <= len(before) + 1 and after == list(range(after[0], EPOCHS + 1))
    frame = pd.read_csv(tmp_path / "smoke" / "trials.csv")
    assert list(frame["state"]) == ["COMPLETE"]
    history = pd.read_csv(tmp_path / "smoke" / "history" / "trial_0.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    study = load_study(str(spec))
    cfg = study.config({"epsilon": float(frame["params_epsilon"][0])}, sets)
    alone = train_trial(cfg, metric=study.metric, on_epoch=lambda *_: None)
    final = _results(trial_dir)[-1]["dgkd_metrics"]
    for key, value in alone.metrics.items():
        if key != "duration_s":
            assert final[key] == value, key
    assert not list(trial_dir.glob(f"checkpoint_*/{STATE_GLOB}"))  # the ended trial's states
    assert (tmp_path / "smoke" / "best_student.pt").is_file()
