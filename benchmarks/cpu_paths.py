"""One default training step on each of the CPU's code paths, and beside a busy core.

The same step (the default width-24 student, batch 128, DGKD, Adam; one population of 1 and of
8) has been timed at ~1 ms on one machine of the 2-core kind and ~3 ms on another. The
candidates are the code paths the libraries pick per CPU (ATen's vector kernels at AVX-512 or
AVX2, MKL's and oneDNN's instruction sets: an AVX2-only core such as AMD Zen 3 gets the AVX2
paths of all three), oneDNN's convolutions against ATen's own, denormal arithmetic, and the
other core being busy (its work shares the L3 cache and the memory bandwidth, and on a
hypervisor maybe the physical core). Each case runs in a fresh process (the libraries read
their environment once), pinned to the first usable core; the cases alternate, best of 3.

Usage: ``python -m benchmarks --only cpu_paths``; ``python -m benchmarks.cpu_paths --child [...]``
is one case's process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import torch

from benchmarks.report import Comparison, child_env, require_cpu, run_module

__all__ = ["CASES", "TITLE", "main", "run"]

TITLE = "One step on each CPU code path: why the same step costs 1 ms here and 3 ms there"
_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2"}
_AVX2_ALL = {**_AVX2, "MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}
# label -> (environment, child flags, other core busy)
CASES: dict[str, tuple[dict[str, str], list[str], bool]] = {
    "as installed": ({}, [], False),
    "ATen kernels at AVX2": (_AVX2, [], False),
    "AVX2 in ATen, MKL and oneDNN (an AVX2-only core)": (_AVX2_ALL, [], False),
    "oneDNN off (ATen's own convolutions)": ({}, ["--no-mkldnn"], False),
    "denormals flushed to zero": ({}, ["--flush-denormal"], False),
    "the other core busy with the same steps": ({}, [], True),
}
_KS = (1, 8)


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def _first_core() -> str:
    cores = _cores()
    return str(cores[0]) if cores else "(not pinned)"


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry: time one step of populations of 1 and 8; print ``{K: seconds}`` as JSON,
    or, with ``--forever``, run steps until killed (the busy core)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_paths")
    p.add_argument("--child", action="store_true", help="time the steps (one case's process)")
    p.add_argument("--forever", action="store_true", help="run K=8 steps until killed")
    p.add_argument("--core", type=int, default=-1, help="pin to this core (-1: do not)")
    p.add_argument("--no-mkldnn", action="store_true")
    p.add_argument("--flush-denormal", action="store_true")
    p.add_argument("--steps", type=int, default=30, help="steps per timed block")
    args = p.parse_args(argv)
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    torch.set_flush_denormal(args.flush_denormal)
    from benchmarks.population import _Step
    from dgkd.config import TrainConfig

    base = TrainConfig(threads=1)
    steps = {k: _Step([base.replace(seed=s) for s in range(k)]) for k in _KS}
    if args.forever:
        while True:
            steps[8]()
    out, cpu = {}, {}
    for k, step in steps.items():
        for _ in range(5):
            step()
        best = float("inf")
        for _ in range(5):
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            wall = (time.perf_counter() - start) / args.steps
            if wall < best:  # the fastest block, and the CPU time it took
                best, cpu[k] = wall, (time.process_time() - start_cpu) / args.steps
        out[k] = best
    capability = torch.backends.cpu.get_cpu_capability()
    print(json.dumps({"capability": capability, "seconds": out, "cpu": cpu}))
    return 0


def _case(env: dict[str, str], flags: list[str], *, busy: bool, steps: int) -> dict:
    """One case in a fresh process: ``{"capability": ..., "seconds": {K: s}}``."""
    cores = _cores()
    pin = ["--core", str(cores[0])] if len(cores) >= 2 else []
    hog = None
    if busy and len(cores) >= 2:
        cmd = [sys.executable, "-m", "benchmarks.cpu_paths", "--forever", "--core", str(cores[1])]
        hog = subprocess.Popen(cmd, env=child_env())
        time.sleep(3)  # past its imports, into its steps
    try:
        args = ("--child", "--steps", str(steps), *pin, *flags)
        text = run_module("benchmarks.cpu_paths", *args, env=env)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(text.strip().splitlines()[-1])


def run(device: torch.device, *, quick: bool) -> Comparison:
    """Every case of :data:`CASES`, alternating, best of 3 (quick: once, 2 steps a block).

    Raises:
        ValueError: ``device`` is not the CPU.
    """
    require_cpu(device, "cpu_paths")
    cases = {k: v for k, v in CASES.items() if not (v[2] and len(_cores()) < 2)}
    best: dict[str, dict[int, float]] = {name: {} for name in cases}
    cpu: dict[str, float] = {}  # K=1: CPU seconds per step in the fastest run
    capability: dict[str, str] = {}
    for _ in range(1 if quick else 3):
        for name, (env, flags, busy) in cases.items():
            got = _case(env, flags, busy=busy, steps=2 if quick else 30)
            capability[name] = got["capability"]
            if got["seconds"]["1"] < best[name].get(1, float("inf")):
                cpu[name] = got["cpu"]["1"]
            for k, sec in got["seconds"].items():
                best[name][int(k)] = min(best[name].get(int(k), float("inf")), sec)
    ref = best["as installed"]
    comp = Comparison(TITLE)
    header = ["case", "ATen", "K=1 ms / step", "K=1 CPU / wall", "K=8 ms / step"]
    comp.table = [[*header, "K=8 per member / K=1", "K=1 vs installed"]]
    for name, sec in best.items():
        comp.table.append(
            [
                name,
                capability[name],
                f"{sec[1] * 1e3:.2f}",
                f"{cpu[name] / sec[1]:.2f}",
                f"{sec[8] * 1e3:.2f}",
                f"{sec[8] / 8 / sec[1]:.2f}x",
                f"{sec[1] / ref[1]:.2f}x",
            ]
        )
    comp.notes += [
        "one step: the default student (cnn1d width 24), batch 128, DGKD with the teacher's "
        "cached logits, Adam; a population of 1 and of 8 (K=8 per member / K=1 below 0.5x is "
        "the 2x of a population of 8 over sequential runs, before evaluation); CPU / wall: "
        "the process's CPU time over the wall time of the same steps (below 1: the core was "
        "shared with other processes, time-sliced)",
        f"each case a fresh process on one thread pinned to core {_first_core()}, best "
        f"of {1 if quick else 3} alternating runs of 5 blocks of {2 if quick else 30} steps; "
        "the busy core runs the same K=8 steps in another process",
    ]
    return comp


if __name__ == "__main__":
    sys.exit(main())
