"""The main job as a user types it, on each backend: ``dgkd-search --study eps_sweep --trials
200`` with no other flag but a fresh ``--out``, then ``--backend ray``; and the tiny ``smoke``
study on both backends, alternating.

Every run is the installed ``dgkd-search`` command in a fresh process, so each wall time holds
everything a user waits for: start-up, the search, the confirm stage and its verdict, the
exports, and on Ray the local cluster's start and stop. The teachers the job needs (the
confirm stage's teacher seeds) are trained into the cache first, as after a user's first run.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Comparison, Row, require_cpu

__all__ = ["STUDY", "TARGET_S", "TITLE", "TRIALS", "run"]

STUDY, TRIALS = "eps_sweep", 200
TARGET_S = 300.0  # the main job's target: under 5 minutes on 2 cores
TITLE = f"The main job: dgkd-search --study {STUDY} --trials {TRIALS}, bare, on each backend"


def _command() -> str:
    """The ``dgkd-search`` beside this interpreter (the environment's own install)."""
    exe = Path(sys.executable).parent / "dgkd-search"
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: install the package (make setup) first")
    return str(exe)


def _search(out: Path, *args: str) -> tuple[float, int]:
    """Run ``dgkd-search --out out *args``; (wall seconds, lines it wrote to stderr).

    Raises:
        subprocess.CalledProcessError: the search failed.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        [_command(), "--out", str(out), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return wall, len([ln for ln in proc.stderr.splitlines() if ln.strip()])


def _outcome(run_dir: Path, round_size: int) -> str:
    """Trial states from ``trials.csv`` and confirm rounds from ``confirm.csv``, in words."""
    import pandas as pd

    trials = pd.read_csv(run_dir / "trials.csv")
    counts = trials["state"].value_counts().to_dict()
    text = f"{counts.get('COMPLETE', 0)} complete / {counts.get('PRUNED', 0)} pruned"
    confirm = run_dir / "confirm.csv"
    if confirm.exists():
        seeds = pd.read_csv(confirm)["seed"].nunique()
        rounds = math.ceil(seeds / round_size) if round_size else 1
        text += f", confirm stage {rounds} round{'s' if rounds > 1 else ''} ({seeds} seeds)"
    return text


def _warm_teachers(study_name: str) -> None:
    """Train (or find) in the cache every teacher the study's search and confirm stage use."""
    from dgkd.study import load_study
    from dgkd.teacher import load_teacher
    from dgkd.train import splits_for

    study = load_study(study_name)
    base = study.check_overrides({})
    for t in range(study.confirm_teachers):
        cfg = base.replace(teacher_seed=base.teacher_seed + t)
        load_teacher(cfg, splits_for(cfg), device=torch.device("cpu"))


def run(device: torch.device, *, quick: bool) -> Comparison:
    """The bare main job on the Optuna and Ray backends (quick: the smoke study only), and the
    smoke study on both, alternating, twice.

    Raises:
        ValueError: ``device`` is not the CPU.
    """
    from dgkd.runtime import available_cores
    from dgkd.study import load_study

    require_cpu(device, "mainjob")
    comp = Comparison(TITLE)
    jobs: list[tuple[str, str, list[str]]] = []  # (label, study, flags)
    for i in range(1 if quick else 2):
        for backend in ("optuna", "ray"):
            jobs.append((f"smoke, {backend} backend, run {i + 1}", "smoke", ["--backend", backend]))
    if not quick:
        for backend in ("optuna", "ray"):
            flags = ["--trials", str(TRIALS)] + (["--backend", "ray"] if backend == "ray" else [])
            jobs.append((f"{STUDY}, {TRIALS} trials, {backend} backend", STUDY, flags))
    for name in {study for _, study, _ in jobs}:
        _warm_teachers(name)
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        for i, (label, study, flags) in enumerate(jobs):
            out = Path(tmp_name) / f"run{i}"
            walls[label], err_lines = _search(out, "--study", study, *flags)
            comp.rows.append(Row(label, [walls[label]]))
            rounds = load_study(study).confirm_round
            comp.notes.append(
                f"{label}: {_outcome(out / study, rounds)}; "
                f"{err_lines} line(s) on stderr"
                + ("" if "ray" not in label else f"; Ray's own log: {study}/ray.log")
            )
    smoke = {
        b: min(w for label, w in walls.items() if label.startswith(f"smoke, {b}"))
        for b in ("optuna", "ray")
    }
    comp.ratio("smoke wall time, Ray / Optuna (fastest of each)", smoke["ray"] / smoke["optuna"],
               "report")  # fmt: skip
    if not quick:
        optuna = walls[f"{STUDY}, {TRIALS} trials, optuna backend"]
        ray = walls[f"{STUDY}, {TRIALS} trials, ray backend"]
        comp.ratio("main job wall time, Ray / Optuna", ray / optuna, "<= 1.3x")
        comp.ratio("main job wall time (Optuna) / 5 minutes", optuna / TARGET_S, "<= 1x")
    comp.notes.append(
        f"each run: `dgkd-search --study <study> [--trials N] [--backend ray] --out <fresh dir>` "
        f"in a fresh process (workers: auto, {available_cores()} here), teachers cached"
    )
    return comp
