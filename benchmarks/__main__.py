"""Benchmarks: every figure is a ratio against a baseline measured in the same run.

Usage: ``python -m benchmarks [--quick] [--only NAME ...] [--out BENCHMARKS.md]``.
Absolute times on a shared 2-core machine drift; ratios measured back to back hold. Each
comparison prints a rich table (median of repeats, min-max) and the whole run is written to
``BENCHMARKS.md`` with the machine description and the exact command.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.naive import autograd_dgkd_loss, naive_trial
from dgkd.config import TrainConfig
from dgkd.io import atomic_write_text
from dgkd.loop import build_optimizer, distill_loss
from dgkd.losses import dgkd_loss, teacher_stats
from dgkd.models import build_model
from dgkd.train import splits_for, train

console = Console()


@dataclass
class Row:
    """One measured case: per-repeat seconds per call."""

    name: str
    times: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def cell(self) -> str:
        unit, scale = ("ms", 1e3) if self.median < 1 else ("s", 1.0)
        lo, hi = min(self.times) * scale, max(self.times) * scale
        return f"{self.median * scale:.3g} {unit} ({lo:.3g}-{hi:.3g})"


@dataclass
class Comparison:
    """Rows sharing a baseline; ratios are baseline / row (higher = faster) or row / baseline."""

    title: str
    rows: list[Row] = field(default_factory=list)
    ratios: list[tuple[str, float, str]] = field(default_factory=list)  # (label, value, target)
    notes: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)  # free-form: a header row, then rows


DEVICE = torch.device("cpu")  # set by --device; the loss and step comparisons run there


def _sync() -> None:
    """Wait for queued GPU work, so that a timer measures it (no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timeit(fn: Callable[[], object], *, repeats: int, inner: int, warmup: int = 2) -> list[float]:
    """Seconds per call of ``fn``, one figure per repeat of ``inner`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync()
        out.append((time.perf_counter() - start) / inner)
    return out


def interleaved(
    fns: dict[str, Callable[[], object]], *, repeats: int, inner: int
) -> dict[str, list[float]]:
    """Time several functions repeat by repeat, alternating, so that drifting load on a shared
    machine hits them alike (their ratio is what is reported)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timeit(fn, repeats=1, inner=inner, warmup=1)
    return times


def bench_loss(quick: bool) -> Comparison:
    """Closed-form dgkd_loss against the double-backward formulation, forward + backward.

    Like for like: both compute the loss and its gradient (dgkd_loss also returns TCKD, NCKD and
    M, which it needs anyway); dgkd_loss's diagnostic cosine of g_T and g_N, which the baseline
    does not compute, is timed in a row of its own.
    """
    comp = Comparison("Gradient term: dgkd_loss (closed form) vs autograd.grad(create_graph=True)")
    repeats, inner = (3, 20) if quick else (15, 200)
    for batch, classes in ((64, 100), (128, 10)):
        gen = torch.Generator().manual_seed(0)
        zs = torch.randn(batch, classes, generator=gen).to(DEVICE).requires_grad_(True)
        zt = torch.randn(batch, classes, generator=gen).to(DEVICE)
        y = torch.randint(0, classes, (batch,), generator=gen).to(DEVICE)
        kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 6.0, "temperature": 4.0}

        def fused(zs=zs, zt=zt, y=y, kw=kw) -> None:
            dgkd_loss(zs, zt, y, cosine=False, **kw)["loss"].backward()

        def fused_cosine(zs=zs, zt=zt, y=y, kw=kw) -> None:
            dgkd_loss(zs, zt, y, **kw)["loss"].backward()

        def autograd(zs=zs, zt=zt, y=y, kw=kw) -> None:
            autograd_dgkd_loss(zs, zt, y, **kw).backward()

        fns = {"a": autograd, "b": fused, "c": fused_cosine}
        times = interleaved(fns, repeats=repeats, inner=inner)
        a = Row(f"autograd ({batch}, {classes})", times["a"])
        b = Row(f"dgkd_loss ({batch}, {classes})", times["b"])
        c = Row(f"dgkd_loss with grad_cos, its default ({batch}, {classes})", times["c"])
        comp.rows += [a, b, c]
        comp.ratios.append((f"speed-up at ({batch}, {classes})", a.median / b.median, ">= 2x"))
        comp.ratios.append(
            (f"speed-up at ({batch}, {classes}), with grad_cos", a.median / c.median, "report")
        )
    comp.notes.append(
        "both sides compute the loss and its gradient from raw logits (the teacher's side "
        "included); the baseline is the DKD reference code's formulation, differentiated twice"
    )
    return comp


def _step_fn(
    model, x, logits_t, y, cfg: TrainConfig, cached: bool, clock: dict[str, float] | None = None
) -> Callable[[], None]:
    """One training step as ``dgkd.loop.fit`` runs it, with the configured optimizer.

    ``cached``: the teacher's logits are cached (no augmentation), so dkd/dgkd use the
    precomputed teacher side of the loss, as the trainer does on MNIST-1D. ``clock``, if given,
    accumulates each section's wall time and labels the sections for torch.profiler
    (``bench_profile``); without it the step runs bare.
    """
    params = list(model.parameters())
    opt = build_optimizer(cfg, params, cfg.lr, x.device)
    stats = teacher_stats(logits_t, y, temperature=cfg.temperature) if cached else None
    index = torch.arange(len(y), device=y.device)
    dkd = stats is not None and cfg.method in ("dkd", "dgkd")

    @contextlib.contextmanager
    def section(name: str):
        if clock is None:
            yield
            return
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start

    def step() -> None:
        with section(SECTIONS[0]):
            logits, _ = model(x)
        with section(SECTIONS[1]):
            batch = stats.select(index) if dkd else None
            loss, _ = distill_loss(cfg, logits, logits_t, y, 1.0, stats=batch)
        with section(SECTIONS[2]):
            for p in params:  # as the trainer clears gradients
                p.grad = None
            loss.backward()
        with section(SECTIONS[3]):
            opt.step()

    return step


SECTIONS = ("model forward", "loss forward", "backward (model and loss)", "optimizer step")


def bench_steps(quick: bool) -> Comparison:
    """Per-step cost (forward, loss, backward, optimizer step) of DGKD against CE and DKD."""
    comp = Comparison("Distillation overhead per training step")
    small, large = ((2, 10), (1, 2)) if quick else ((7, 100), (5, 10))  # (repeats, inner)
    if DEVICE.type == "cuda" and not quick:
        large = (7, 50)  # a GPU step takes milliseconds, not a second
    cifar = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    cases = [
        ("default student (cnn1d w8, batch 128, Adam)", "cnn1d", 8, (40,), 10, 128, small, True,
         TrainConfig()),
        ("resnet8x4, CIFAR-100 shape (batch 64, SGD)", "resnet8x4", None, (3, 32, 32), 100, 64,
         large, False, cifar),
    ]  # fmt: skip
    for label, arch, width, shape, classes, batch, (repeats, inner), cached, base in cases:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=gen).to(DEVICE)
        y = torch.randint(0, classes, (batch,), generator=gen).to(DEVICE)
        logits_t = (torch.randn(batch, classes, generator=gen) * 3).to(DEVICE)
        steps = {}
        for method in ("ce", "dkd", "dgkd"):
            torch.manual_seed(0)
            model = build_model(arch, num_classes=classes, input_shape=shape, width=width)
            model.to(DEVICE)
            steps[method] = _step_fn(model, x, logits_t, y, base.replace(method=method), cached)
        times = interleaved(steps, repeats=repeats, inner=inner)
        medians = {}
        for method, values in times.items():
            row = Row(f"{method}: {label}", values)
            comp.rows.append(row)
            medians[method] = row.median
        target_ce = "<= 1.15" if arch == "resnet8x4" else "<= 1.3"
        comp.ratios.append((f"DGKD/CE, {label}", medians["dgkd"] / medians["ce"], target_ce))
        target_dkd = "<= 1.10" if arch == "resnet8x4" else "report"
        comp.ratios.append((f"DGKD/DKD, {label}", medians["dgkd"] / medians["dkd"], target_dkd))
    return comp


def bench_trial(quick: bool) -> Comparison:
    """One default eps_sweep-style trial through the harness against the straightforward loop."""
    comp = Comparison("One trial: dgkd.train.train vs a straightforward loop")
    cfg = TrainConfig(method="dgkd")
    if quick:
        cfg = cfg.replace(epochs=3, teacher_epochs=2)
    train(cfg)  # warm the data and teacher caches, as a search process is after its first trial
    repeats = 1 if quick else 3
    harness, naive, accs = [], [], {"harness": [], "naive": []}
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
    comp.ratios.append(("speed-up of one trial", a.median / b.median, ">= 3x"))
    for key, values in accs.items():
        comp.notes.append(
            f"test accuracy, {key}: "
            + ", ".join(f"{v:.3f}" for v in values)
            + f" (seeds 0-{repeats - 1})"
        )
    return comp


def _top_level_ops(prof) -> list:
    """aten operations called from Python (not from inside another aten operation)."""
    return [
        e
        for e in prof.events()
        if e.name.startswith("aten::")
        and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))
    ]


def bench_profile(quick: bool) -> Comparison:
    """Operation counts (torch.profiler) and unprofiled times: where the time goes.

    At these sizes a tensor operation costs a few microseconds whatever its size, so the number
    of operations dispatched from Python explains the times of the loss and of the step.
    """
    from torch.profiler import ProfilerActivity, profile

    def count_ops(fn: Callable[[], object], calls: int) -> float:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                fn()
        return len(_top_level_ops(prof)) / calls

    comp = Comparison("Profile: tensor operations and time per call")
    calls, repeats, inner = (5, 3, 20) if quick else (50, 7, 200)
    comp.table.append(["case", "aten ops per call", "time per call (unprofiled)"])
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(128, 10, generator=gen, requires_grad=True)
    zt = torch.randn(128, 10, generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    kw = {"alpha": 1.0, "beta": 8.0, "epsilon": 6.0, "temperature": 4.0}
    stats = teacher_stats(zt, y, temperature=4.0)
    cases = {
        "loss (128, 10): autograd.grad(create_graph=True)": lambda: autograd_dgkd_loss(
            zs, zt, y, **kw
        ).backward(),
        "loss (128, 10): dgkd_loss": lambda: dgkd_loss(zs, zt, y, **kw)["loss"].backward(),
        "loss (128, 10): teacher_stats alone": lambda: teacher_stats(zt, y, temperature=4.0),
        "loss (128, 10): dgkd_loss, cached teacher side, CE fused (the trainer's call)": (
            lambda: dgkd_loss(zs, None, y, stats=stats, ce_weight=1.0, **kw)["loss"].backward()
        ),
    }
    for label, fn in cases.items():
        ops = count_ops(fn, calls)
        took = statistics.median(timeit(fn, repeats=repeats, inner=inner))
        comp.table.append([label, f"{ops:.0f}", f"{took * 1e6:.0f} us"])
    x = torch.randn(128, 40, generator=gen)
    logits_t = torch.randn(128, 10, generator=gen) * 3
    for method in ("ce", "dgkd"):
        torch.manual_seed(0)
        model = build_model("cnn1d", num_classes=10, input_shape=(40,), width=8)
        clock: dict[str, float] = {}
        step = _step_fn(model, x, logits_t, y, TrainConfig(method=method), True, clock)
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
        for name in SECTIONS:
            comp.table.append(
                [f"{method} step: {name}", f"{ops[name]:.0f}", f"{times[name] * 1e6:.0f} us"]
            )
    comp.notes.append(
        "aten ops per call: operations dispatched from Python or the autograd engine (not those "
        "inside another operation), counted with torch.profiler. Times are without the "
        "profiler: medians of repeats for the loss, means over the timed steps for the step's "
        "sections. Steps: the default student (cnn1d w8, batch 128, Adam, cached teacher logits)."
    )
    if not quick:
        comp.notes.append(_compiled_loss(stats, zs, y, kw, repeats, inner))
    return comp


def _compiled_loss(stats, zs, y, kw, repeats: int, inner: int) -> str:
    """What fusing the loss into compiled kernels would buy, and what it costs to compile.

    torch.compile (inductor, C++ kernels on the CPU) of the trainer's call: the figure that
    decides whether it pays is the compile time against the time saved per trial.
    """
    from dgkd.losses import TeacherStats

    def call(z, table, target):
        out = dgkd_loss(z, None, target, stats=TeacherStats(table), ce_weight=1.0, **kw)
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


# VmHWM, not getrusage: ru_maxrss survives exec and would report the parent's peak.
_MEMORY_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
kind = sys.argv[1]
if kind == "default":
    from dgkd.config import TrainConfig
    from dgkd.train import train
    train(TrainConfig(epochs=int(sys.argv[2]), teacher_epochs=int(sys.argv[3])))
else:
    from dgkd.models import build_model
    from dgkd.config import TrainConfig
    from dgkd.loop import distill_loss
    model = build_model("resnet8x4", num_classes=100, input_shape=(3, 32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cfg = TrainConfig(method="dgkd")
    for _ in range(int(sys.argv[2])):
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 100, (64,))
        logits, _ = model(x)
        loss, _ = distill_loss(cfg, logits, torch.randn(64, 100), y, 1.0)
        opt.zero_grad(); loss.backward(); opt.step()
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(status)
"""


def bench_memory(quick: bool) -> Comparison:
    """Peak resident memory of a process running one trial (reported, no target)."""
    comp = Comparison("Memory: peak resident set size of one process")
    cases = (
        ("default trial", "default", 3 if quick else 40),
        ("resnet8x4 training steps (batch 64)", "resnet", 2 if quick else 20),
    )
    teacher_epochs = 2 if quick else TrainConfig().teacher_epochs
    for label, kind, n in cases:
        cmd = [sys.executable, "-c", _MEMORY_SCRIPT, kind, str(n), str(teacher_epochs)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        mib = int(out.stdout.strip().splitlines()[-1]) / 1024
        comp.notes.append(f"{label}: {mib:.0f} MiB peak RSS")
    return comp


_STUDY = """\
description = "eps_sweep with pruner {pruner}, for the benchmark"
space = "eps"
sampler = "tpe"
pruner = "{pruner}"
trials = {trials}
seed = 0
enqueue = [{{ epsilon = 0.0 }}]

[base]
method = "dgkd"
{extra}
"""


def _search(tmp: Path, name: str, *, pruner: str, trials: int, args: list[str], extra: str = ""):
    """Run ``dgkd-search`` in a fresh process; return (wall seconds, trials.csv as a frame)."""
    import pandas as pd

    study = tmp / f"{name}.toml"
    study.write_text(_STUDY.format(pruner=pruner, trials=trials, extra=extra))
    entry = "import sys; from dgkd.cli import search_main; sys.exit(search_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", entry, "--study", str(study), "--out", str(tmp)]
    start = time.perf_counter()
    subprocess.run([*cmd, "--quiet", *args], check=True, capture_output=True)
    wall = time.perf_counter() - start
    return wall, pd.read_csv(tmp / name / "trials.csv")


def bench_search(quick: bool, trials: int, parallel_trials: int) -> Comparison:
    """Whole searches in fresh processes: the study's median pruner against none (``trials``
    each, one worker), 2 workers against 1 and the Ray backend (``parallel_trials`` each), and
    the share of worker time spent outside ``train()``."""
    import tempfile

    comp = Comparison(
        f"Search: eps_sweep (dgkd-search in a fresh process); pruning over {trials} trials, "
        f"workers and Ray over {parallel_trials}"
    )
    extra = "epochs = 2\nteacher_epochs = 2" if quick else ""
    train(TrainConfig(**({"epochs": 2, "teacher_epochs": 2} if quick else {})))  # teacher cached
    # label: (pruner, trials, arguments); with trials == parallel_trials, the two unpruned
    # one-worker runs share a label and run once.
    runs = {
        f"{trials} trials, 1 worker, no pruning": ("none", trials, ["--workers", "1"]),
        f"{trials} trials, 1 worker, median pruner": ("median", trials, ["--workers", "1"]),
        f"{parallel_trials} trials, 1 worker, no pruning": ("none", parallel_trials, []),
        f"{parallel_trials} trials, 2 workers, no pruning": (
            "none",
            parallel_trials,
            ["--workers", "2"],
        ),
        f"{parallel_trials} trials, ray backend, 2 at a time, no pruning": (
            "none",
            parallel_trials,
            ["--backend", "ray"],
        ),
    }  # fmt: skip
    walls, frames = {}, {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i, (label, (pruner, n, args)) in enumerate(runs.items()):
            walls[label], frames[label] = _search(
                tmp, f"run{i}", pruner=pruner, trials=n, args=args, extra=extra
            )
            comp.rows.append(Row(label, [walls[label]]))
    unpruned = walls[f"{trials} trials, 1 worker, no pruning"]
    pruned = walls[f"{trials} trials, 1 worker, median pruner"]
    one = walls[f"{parallel_trials} trials, 1 worker, no pruning"]
    two = walls[f"{parallel_trials} trials, 2 workers, no pruning"]
    comp.ratios.append(("trials per minute, 2 workers / 1 worker", one / two, ">= 1.7x"))
    comp.ratios.append((f"wall time over {trials} trials, no pruning / median pruner",
                        unpruned / pruned, "report"))  # fmt: skip
    for label, frame in frames.items():
        states = frame["state"].value_counts().to_dict()
        best = frame.loc[frame["state"] == "COMPLETE", "value"].max()
        in_trials = frame["duration_s"].fillna(0).sum()
        slots = 2 if ("2 workers" in label or "ray" in label) else 1
        outside = 1 - in_trials / (walls[label] * slots)
        comp.notes.append(
            f"{label}: best val_acc {best:.4f}; states {states}; "
            f"{100 * outside:.1f}% of worker time outside train() (start-up, storage, "
            "sampling, exports)"
        )
    return comp


BENCHES = {
    "loss": bench_loss,
    "steps": bench_steps,
    "trial": bench_trial,
    "memory": bench_memory,
    "profile": bench_profile,
    "search": bench_search,
}


def _machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else ""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s){gpu}"
    )


def _render(comp: Comparison) -> tuple[Table, str]:
    table = Table(title=comp.title)
    table.add_column("case")
    table.add_column("time per call: median (min-max)", justify="right")
    md = [f"### {comp.title}", ""]
    if comp.rows:
        md += ["| case | median (min-max) |", "|---|---|"]
    for row in comp.rows:
        table.add_row(row.name, row.cell())
        md.append(f"| {row.name} | {row.cell()} |")
    if comp.ratios:
        md += ["", "| ratio | value | target |", "|---|---|---|"]
    for label, value, target in comp.ratios:
        table.add_row(f"[bold]{label}[/bold]", f"[bold]{value:.2f}x[/bold] (target {target})")
        md.append(f"| {label} | {value:.2f}x | {target} |")
    for note in comp.notes:
        table.add_row(note, "")
    if comp.table:
        header, *body = comp.table
        extra = Table(title=comp.title)
        for name in header:
            extra.add_column(name, justify="left" if name == header[0] else "right")
        for cells in body:
            extra.add_row(*cells)
        table = extra if not comp.rows else table
        md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(cells) + " |" for cells in body]
    md += [""] + [f"- {n}" for n in comp.notes] + [""]
    return table, "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that it runs, not speed"
    )
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these comparisons")
    p.add_argument("--out", default="BENCHMARKS.md", help="markdown report (default BENCHMARKS.md)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the loss and step comparisons run (default cpu; cuda runs only those two)",
    )
    p.add_argument(
        "--search-trials",
        type=int,
        default=200,
        help="trials of the pruning comparison in 'search' (default 200, the eps_sweep study's)",
    )
    p.add_argument(
        "--parallel-trials",
        type=int,
        default=200,
        help="trials of the workers and Ray comparisons in 'search' (default 200)",
    )
    args = p.parse_args(argv)
    for flag in ("threads", "search_trials", "parallel_trials"):
        if getattr(args, flag) < 1:
            print(f"{p.prog}: error: --{flag.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(f"{p.prog}: error: --device cuda: no CUDA device is available", file=sys.stderr)
            return 2
        if set(args.only or BENCHES) - {"loss", "steps"}:
            print(
                f"{p.prog}: error: --device cuda runs the loss and steps comparisons only: "
                "add --only loss steps",
                file=sys.stderr,
            )
            return 2
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    sections = [
        "# Benchmarks",
        "",
        f"Machine: {_machine()}.",
        f"Command: `{command.strip()}`"
        + (" (quick mode: sizes too small for speed claims)" if args.quick else ""),
        "",
    ]
    for name in args.only or list(BENCHES):
        if name == "search":
            trials = (4, 4) if args.quick else (args.search_trials, args.parallel_trials)
            comp = bench_search(args.quick, *trials)
        else:
            comp = BENCHES[name](args.quick)
        table, md = _render(comp)
        console.print(table)
        sections.append(md)
    atomic_write_text(args.out, "\n".join(sections))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
