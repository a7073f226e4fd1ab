"""One trial: ``dgkd.train.train`` against the straightforward loop of ``benchmarks.naive``."""

from __future__ import annotations

import time

import torch

from benchmarks.naive import naive_trial
from benchmarks.report import QUICK_POOLS, Comparison, Row, require_cpu
from dgkd.config import TrainConfig
from dgkd.train import train

__all__ = ["TITLE", "run"]

TITLE = "One trial: dgkd.train.train vs a straightforward loop"


def run(device: torch.device, *, quick: bool) -> Comparison:
    """One default eps_sweep-style trial through the harness against the straightforward loop.

    Raises:
        ValueError: ``device`` is not the CPU (the straightforward loop runs there only).
    """
    require_cpu(device, "trial")
    comp = Comparison(TITLE)
    cfg = TrainConfig(method="dgkd", device=device.type)
    if quick:
        cfg = cfg.replace(epochs=3, teacher_epochs=2, **QUICK_POOLS)
    train(cfg)  # warm the data and teacher caches, as a search process is after its first trial
    repeats = 1 if quick else 3
    harness: list[float] = []
    naive: list[float] = []
    accs: dict[str, list[float]] = {"harness": [], "naive": []}
    for seed in range(repeats):
        c = cfg.replace(seed=seed)
        start = time.perf_counter()
        accs["harness"].append(train(c).metrics["test_acc"])
        harness.append(time.perf_counter() - start)
        start = time.perf_counter()
        accs["naive"].append(naive_trial(c)["test_acc"])
        naive.append(time.perf_counter() - start)
    a, b = Row("straightforward loop", naive), Row("dgkd train()", harness)
    comp.rows += [a, b]
    comp.ratio("speed-up of one trial", a.median / b.median, ">= 3x")
    for key, values in accs.items():
        comp.notes.append(
            f"test accuracy, {key}: "
            + ", ".join(f"{v:.3f}" for v in values)
            + f" (seeds 0-{repeats - 1})"
        )
    return comp
