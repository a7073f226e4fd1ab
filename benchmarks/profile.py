"""Where the time goes: operation counts (torch.profiler) and unprofiled times per call.

At these sizes a tensor operation costs a few microseconds whatever its size, so the number of
operations dispatched from Python explains the times of the loss and of the step.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from benchmarks.loss import HYPERS
from benchmarks.naive import autograd_dgkd_loss
from benchmarks.report import QUICK_POOLS, Comparison, interleaved, require_cpu, timeit
from benchmarks.steps import SECTIONS, step_fn
from dgkd.config import TrainConfig
from dgkd.losses import TeacherStats, dgkd_loss, teacher_stats
from dgkd.models import build_model
from dgkd.train import splits_for

__all__ = ["TITLE", "run"]

TITLE = "Profile: tensor operations and time per call"


def _top_level_ops(prof: profile) -> list[Any]:
    """aten operations called from Python (not from inside another aten operation)."""
    return [
        e
        for e in prof.events()
        if e.name.startswith("aten::")
        and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    ]


def _count_ops(fn: Callable[[], object], calls: int) -> float:
    """Top-level aten operations per call of ``fn``, over ``calls`` profiled calls."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    return len(_top_level_ops(prof)) / calls


def _step_sections(
    method: str, x: Tensor, logits_t: Tensor, y: Tensor, *, calls: int, repeats: int, inner: int
) -> list[list[str]]:
    """Table rows of one default-student step's sections: operations and mean time each."""
    torch.manual_seed(0)
    cfg = TrainConfig(method=method)
    model = build_model("cnn1d", num_classes=10, input_shape=(40,), width=cfg.student_width)
    clock: dict[str, float] = {}
    step = step_fn(model, x, logits_t, y, cfg, True, clock)
    timeit(step, repeats=repeats, inner=inner)
    n = repeats * inner + 2  # timeit's calls, warm-up included
    times = {name: clock[name] / n for name in SECTIONS}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            step()
    spans = [e for e in prof.events() if e.name in SECTIONS]
    ops = dict.fromkeys(SECTIONS, 0.0)
    for e in _top_level_ops(prof):
        for span in spans:
            if span.time_range.start <= e.time_range.start <= span.time_range.end:
                ops[span.name] += 1 / calls
    return [
        [f"{method} step: {name}", f"{ops[name]:.0f}", f"{times[name] * 1e6:.0f} us"]
        for name in SECTIONS
    ]


def run(device: torch.device, *, quick: bool) -> Comparison:
    """Operation counts and unprofiled times of the loss calls and of a step's sections.

    Raises:
        ValueError: ``device`` is not the CPU (the profiler counts CPU dispatches).
    """
    require_cpu(device, "profile")
    comp = Comparison(TITLE)
    calls, repeats, inner = (5, 3, 20) if quick else (50, 7, 200)
    comp.table.append(["case", "aten ops per call", "time per call (unprofiled)"])
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(128, 10, generator=gen, requires_grad=True)
    zt = torch.randn(128, 10, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    stats = teacher_stats(zt, y, temperature=4.0)
    cases: dict[str, Callable[[], object]] = {
        "loss (128, 10): autograd.grad(create_graph=True)": lambda: autograd_dgkd_loss(
            zs, zt, y, **HYPERS
        ).backward(),
        "loss (128, 10): dgkd_loss": lambda: dgkd_loss(zs, zt, y, **HYPERS)["loss"].backward(),
        "loss (128, 10): teacher_stats alone": lambda: teacher_stats(zt, y, temperature=4.0),
        "loss (128, 10): dgkd_loss, cached teacher side, CE fused (the trainer's call)": (
            lambda: dgkd_loss(zs, None, y, stats=stats, ce_weight=1.0, **HYPERS)["loss"].backward()
        ),
    }
    for label, fn in cases.items():
        ops = _count_ops(fn, calls)
        took = statistics.median(timeit(fn, repeats=repeats, inner=inner))
        comp.table.append([label, f"{ops:.0f}", f"{took * 1e6:.0f} us"])
    x = torch.randn(128, 40, generator=gen)
    logits_t = torch.randn(128, 10, generator=gen) * 3
    for method in ("ce", "dgkd"):
        comp.table += _step_sections(
            method, x, logits_t, y, calls=calls, repeats=repeats, inner=inner
        )
    comp.table += _evaluation_rows(quick=quick, calls=calls, repeats=repeats)
    comp.notes.append(
        "aten ops per call: operations dispatched from Python or the autograd engine (not those "
        "inside another operation), counted with torch.profiler. Times are without the "
        "profiler: medians of repeats for the loss, means over the timed steps for the step's "
        f"sections. Steps: the default student (cnn1d width {TrainConfig().student_width}, batch "
        "128, Adam, cached teacher logits)."
    )
    comp.notes.append(
        "End-of-epoch evaluation: wall time of dgkd.epoch_metrics per epoch (eval-mode forward "
        "passes over the validation and training splits, and the training features' NC1) and its "
        "share of a whole default train() run, data and teacher cached (median over seeds 0-2); "
        "nc1 on the trained student's training features."
    )
    if not quick:
        comp.notes.append(_compiled_loss(stats, zs, y, repeats=repeats, inner=inner))
    return comp


@contextlib.contextmanager
def _timing(module: ModuleType, name: str, clock: list[float]) -> Iterator[None]:
    """``module.name`` timed for the block: each call's seconds are appended to ``clock``."""
    real = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            clock.append(time.perf_counter() - start)

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, real)


def _evaluation_rows(*, quick: bool, calls: int, repeats: int) -> list[list[str]]:
    """What the end-of-epoch evaluation (:mod:`dgkd.epoch_metrics`: forward passes over the
    validation and training splits, NC1 of the training features) costs in a default run, and
    NC1 alone on the trained student's training features."""
    import dgkd.loop
    from dgkd.metrics import nc1
    from dgkd.train import train

    cfg = TrainConfig(epochs=3, teacher_epochs=2, **QUICK_POOLS) if quick else TrainConfig()
    train(cfg)  # warm the data and teacher caches, as a search process is after its first trial
    shares, per_epoch = [], []
    for seed in range(1 if quick else 3):
        clock: list[float] = []
        with _timing(dgkd.loop, "epoch_metrics", clock):
            start = time.perf_counter()
            result = train(cfg.replace(seed=seed))
            total = time.perf_counter() - start
        shares.append(sum(clock) / total)
        per_epoch.append(statistics.median(clock))
    assert result.model is not None
    splits = splits_for(cfg)
    device = torch.device("cpu")
    batch = cfg.eval_batch_size
    _, feats = dgkd.loop.predict(
        result.model, splits, splits.train_x, device=device, batch_size=batch
    )
    labels, classes = splits.train_y, splits.num_classes

    def call() -> float:
        return nc1(feats, labels, classes)

    took = statistics.median(timeit(call, repeats=repeats, inner=20))
    return [
        [
            f"default run ({cfg.epochs} epochs): end-of-epoch evaluation (epoch_metrics)",
            "-",
            f"{statistics.median(per_epoch) * 1e3:.1f} ms per epoch, "
            f"{statistics.median(shares) * 100:.0f}% of the run",
        ],
        [
            f"nc1 of the training features {tuple(feats.shape)}, {classes} classes",
            f"{_count_ops(call, calls):.0f}",
            f"{took * 1e6:.0f} us",
        ],
    ]


def _compiled_loss(stats: TeacherStats, zs: Tensor, y: Tensor, *, repeats: int, inner: int) -> str:
    """What fusing the loss into compiled kernels would buy, and what it costs to compile.

    torch.compile (inductor, C++ kernels on the CPU) of the trainer's call: the figure that
    decides whether it pays is the compile time against the time saved per trial.
    """

    def call(z: Tensor, table: Tensor, target: Tensor) -> Tensor:
        out = dgkd_loss(z, None, target, stats=TeacherStats(table), ce_weight=1.0, **HYPERS)
        return out["loss"]

    def eager() -> None:
        call(zs, stats.table, y).backward()

    try:
        compiled = torch.compile(call, dynamic=False)
        start = time.perf_counter()
        compiled(zs, stats.table, y).backward()
        compile_s = time.perf_counter() - start
    except Exception as err:  # no C++ compiler, an unsupported platform: say so in the report
        return f"torch.compile of the trainer's loss call failed here: {type(err).__name__}"
    times = interleaved(
        {"eager": eager, "compiled": lambda: compiled(zs, stats.table, y).backward()},
        repeats=repeats,
        inner=inner,
    )
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    cfg = TrainConfig()
    steps = cfg.epochs * math.ceil(len(splits_for(cfg).train_y) / cfg.batch_size)  # one trial
    return (
        f"torch.compile of the trainer's loss call (128, 10): {c * 1e6:.0f} us per call against "
        f"{e * 1e6:.0f} us eager, after {compile_s:.1f} s of compilation in each process: it "
        f"saves {(e - c) * steps:.2f} s per default trial ({steps} steps) and pays for itself "
        f"after {compile_s / ((e - c) * steps):.0f} trials in one process"
    )
