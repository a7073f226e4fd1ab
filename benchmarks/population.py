"""Populations: K students trained as one set of tensor operations, against K runs in a row.

Usage: ``python -m benchmarks.population [--epochs 40] [--ks 1 4 8 16 32 64] [--capped 32]
[--quick]``; prints a markdown section. Every figure is a ratio of times measured in the same
run, on one CPU thread (absolute times on a shared machine drift; ratios measured back to back
hold):

* seed-runs per hour of the default config: ``train_population`` of K seeds as one population
  (``DGKD_MAX_POPULATION=0``) against 8 sequential ``train()`` calls, and K seeds cut by the
  CPU's cap (``dgkd.train.max_population``); beside each K, the GFLOP/s of its training step
  (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``: the matrix products of forward
  and backward) and their share of the core's estimated peak (``benchmarks.peak``);
* the per-member cost of one training step in a population of 8, DGKD against CE;
* peak resident memory of a population of 64 default members (a fresh process);
* the two ways to stack students, on the default student: grouped modules (what
  ``dgkd.models.Population`` does: one batched product per layer, the optimizer on each member's
  slice) and ``torch.func`` (``stack_module_state``, ``functional_call`` under ``vmap``, autograd
  through it, the same optimizer on the stacked leaves).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.peak import machine_peak
from benchmarks.report import Comparison, require_cpu
from dgkd.config import TrainConfig
from dgkd.loop import population_loss, resolve_device
from dgkd.losses import TeacherStats, teacher_stats
from dgkd.models import build_model, build_population
from dgkd.optim import PopulationOptimizer
from dgkd.runtime import set_threads
from dgkd.teacher import load_teacher
from dgkd.train import max_population, population_groups, splits_for, train, train_population

__all__ = ["TITLE", "main", "run", "sections"]

_MIB = 2**20


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _best(values: Sequence[float]) -> float:
    """The fastest repeat: on a shared machine other work only ever adds time."""
    return min(values)


# --------------------------------------------------------------------------- seed-runs per hour


@contextlib.contextmanager
def _population_cap(cap: int | None) -> Iterator[None]:
    """``DGKD_MAX_POPULATION`` set to ``cap`` (None: unset, the machine's rule), then restored."""
    old = os.environ.pop("DGKD_MAX_POPULATION", None)
    if cap is not None:
        os.environ["DGKD_MAX_POPULATION"] = str(cap)
    try:
        yield
    finally:
        os.environ.pop("DGKD_MAX_POPULATION", None)
        if old is not None:
            os.environ["DGKD_MAX_POPULATION"] = old


def seed_runs(
    base: TrainConfig,
    ks: Sequence[int],
    *,
    sequential: int,
    repeats: int,
    capped: int = 0,
    cap: int | None = None,
    n: int = 50,
) -> str:
    """Seed-runs per hour: populations of K seeds against ``sequential`` train() calls, and
    ``capped`` seeds under ``cap`` (None: the machine's own cap; ``capped`` 0: no such row)."""
    train(base)  # data, teacher and first-call costs out of the way
    cfgs_of = {k: [base.replace(seed=s) for s in range(k)] for k in {*ks, capped} if k}
    with _population_cap(cap):
        chunks = [len(g) for g in population_groups(cfgs_of[capped])] if capped else []
    seq: list[float] = []
    pops: dict[int, list[float]] = {k: [] for k in ks}
    cut: list[float] = []
    for _ in range(repeats):  # interleaved: each repeat times every case once
        seq.append(_timed(lambda: [train(base.replace(seed=s)) for s in range(sequential)]))
        with _population_cap(0):
            for k in ks:
                pops[k].append(_timed(lambda cfgs=cfgs_of[k]: train_population(cfgs)))
        if capped:
            with _population_cap(cap):
                cut.append(_timed(lambda: train_population(cfgs_of[capped])))
    rates = step_rates(base, sorted({1, *ks, *chunks}), repeats=repeats, n=n)
    per_hour = sequential * 3600 / _best(seq)
    peak = machine_peak()
    lines = [
        f"Default config ({base.epochs} epochs, student {base.student} width "
        f"{base.student_width}, method {base.method}), one thread, best of {repeats} "
        "interleaved repeats. GFLOP/s: one training step of the population (forward, loss, "
        f"backward, optimizer; batch {base.batch_size}), its matrix products' FLOPs "
        f"({rates[1][0] / 1e6:.1f} MFLOP per member-step, FlopCounterMode) over its time, best "
        f"of {repeats} interleaved blocks of {n} steps; % of peak: of "
        + (f"the {peak.describe()}." if peak else "an unknown peak (no /proc/cpuinfo)."),
        "",
        "| runs | wall s | seed-runs / hour | vs sequential | step GFLOP/s | % of peak |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, wall: float, runs: int, size: int) -> str:
        rate = runs * 3600 / wall
        gflops = rates[size][0] / rates[size][1] / 1e9
        share = f"{100 * gflops / peak.gflops:.1f}" if peak else "-"
        return (
            f"| {name} | {wall:.2f} | {rate:.0f} | {rate / per_hour:.2f}x | {gflops:.2f} "
            f"| {share} |"
        )

    lines.append(row(f"{sequential} x train() in a row", _best(seq), sequential, 1))
    for k in ks:
        lines.append(row(f"population of {k}", _best(pops[k]), k, k))
    if capped:
        same = len(set(chunks)) == 1
        shape = f"{len(chunks)} x {chunks[0]}" if same else " + ".join(map(str, chunks))
        lines.append(row(f"{capped} seeds, capped ({shape})", _best(cut), capped, max(chunks)))
    return "\n".join(lines)


def step_rates(
    base: TrainConfig, ks: Sequence[int], *, repeats: int, n: int
) -> dict[int, tuple[float, float]]:
    """Per population size: (FLOPs, seconds) of one training step of K default members."""
    steps = {k: _Step([base.replace(seed=s) for s in range(k)]) for k in ks}
    flops: dict[int, float] = {}
    for k, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        flops[k] = float(counter.get_total_flops())
    sec = _step_seconds({str(k): step for k, step in steps.items()}, repeats=repeats, n=n)
    return {k: (flops[k], sec[str(k)]) for k in ks}


# --------------------------------------------------------------------------- one step


class _Step:
    """One training step of a population of ``cfgs``, as ``dgkd.loop.fit_population`` runs it."""

    def __init__(self, cfgs: Sequence[TrainConfig], *, stacking: str = "grouped") -> None:
        first = cfgs[0]
        self.cfgs, self.size = list(cfgs), len(cfgs)
        device = resolve_device(first.device)
        splits = splits_for(first)
        bundle = load_teacher(first, splits, device=device)
        gen = torch.Generator().manual_seed(0)
        perms = torch.stack([torch.randperm(len(splits.train_y), generator=gen) for _ in cfgs])[
            :, : first.batch_size
        ]
        self.x = splits.train_x[perms].to(device)
        self.y = splits.train_y[perms].to(device)
        self.stats = None
        if first.method in ("dkd", "dgkd"):
            table = teacher_stats(
                bundle.train_logits, splits.train_y.to(device), temperature=first.temperature
            ).table
            self.stats = TeacherStats(table[perms.to(device)])
        self.logits_t = bundle.train_logits[perms.to(device)]
        shape, classes = splits.input_shape, splits.num_classes
        width = first.student_width
        if stacking == "grouped":
            pop = build_population(
                first.student,
                num_classes=classes,
                input_shape=shape,
                width=width,
                seeds=[c.seed for c in cfgs],
            ).to(device)
            self.forward: Callable[[Tensor], tuple[Tensor, Tensor]] = pop
            params = list(pop.parameters())
        else:
            self.forward, params = _torch_func(first, [c.seed for c in cfgs], shape, classes)
        self.opt = PopulationOptimizer(self.cfgs, params, device)
        self.ones = torch.ones(self.size, device=device)
        self.lrs = [c.lr for c in cfgs]

    def __call__(self) -> None:
        logits, _ = self.forward(self.x)
        loss, _terms = population_loss(
            self.cfgs, logits, self.logits_t, self.y, [1.0] * self.size, stats=self.stats
        )
        loss.backward(self.ones)
        self.opt.step(self.lrs)


def _torch_func(
    cfg: TrainConfig, seeds: Sequence[int], shape: tuple[int, ...], classes: int
) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], list[Tensor]]:
    """The torch.func way: stacked leaves, one plain model's forward under vmap."""
    from torch.func import functional_call, stack_module_state

    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(
            build_model(
                cfg.student, num_classes=classes, input_shape=shape, width=cfg.student_width
            )
        )
    params, _ = stack_module_state(models)  # type: ignore[arg-type]
    buffers = dict(models[0].named_buffers())  # the gather's window indices, shared
    base = copy.deepcopy(models[0])

    def one(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(base, (p, buffers), (x,))

    batched = torch.vmap(one, in_dims=(0, 0))
    return (lambda x: batched(params, x)), list(params.values())


def _step_seconds(steps: dict[str, _Step], *, repeats: int, n: int) -> dict[str, float]:
    """Seconds per step of each case: the best of ``repeats`` interleaved blocks of ``n``."""
    for step in steps.values():
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(lambda step=step: [step() for _ in range(n)]) / n)
    return {name: _best(t) for name, t in times.items()}


def step_costs(base: TrainConfig, *, size: int, repeats: int, n: int) -> str:
    """Per-member step cost, DGKD against CE, alone and in a population of ``size``."""
    cases = {}
    for k in (1, size):
        for method in ("dgkd", "ce"):
            cases[f"{method} K={k}"] = _Step(
                [base.replace(seed=s, method=method) for s in range(k)]
            )
    sec = _step_seconds(cases, repeats=repeats, n=n)
    lines = [
        f"One training step (forward, loss, backward, optimizer), batch {base.batch_size}, "
        f"best of {repeats} interleaved blocks of {n} steps.",
        "",
        "| population | DGKD us / member | CE us / member | DGKD / CE |",
        "|---|---:|---:|---:|",
    ]
    for k in (1, size):
        d, c = sec[f"dgkd K={k}"] / k * 1e6, sec[f"ce K={k}"] / k * 1e6
        lines.append(f"| {k} | {d:.0f} | {c:.0f} | {d / c:.2f} |")
    return "\n".join(lines)


def stacking(base: TrainConfig, *, size: int, repeats: int, n: int) -> str:
    """Grouped modules against torch.func, per member, on the default student and loss."""
    cases = {
        "single": _Step([base]),
        "grouped": _Step([base.replace(seed=s) for s in range(size)]),
        "torch.func": _Step([base.replace(seed=s) for s in range(size)], stacking="torch.func"),
    }
    sec = _step_seconds(cases, repeats=repeats, n=n)
    one = sec["single"] * 1e6
    lines = [
        f"Default student and loss ({base.method}), population of {size}, one training step.",
        "",
        "| stacking | us / step | us / member | members per single step's time |",
        "|---|---:|---:|---:|",
        f"| one student (K = 1, grouped) | {one:.0f} | {one:.0f} | 1.00x |",
    ]
    for name in ("grouped", "torch.func"):
        per = sec[name] * 1e6 / size
        lines.append(f"| {name} | {sec[name] * 1e6:.0f} | {per:.0f} | {one / per:.2f}x |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- memory


_RSS_CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from dgkd.config import TrainConfig
from dgkd.train import train_population
size, epochs = int(sys.argv[1]), int(sys.argv[2])
base = TrainConfig(epochs=epochs)
train_population([base.replace(seed=s) for s in range(size)])
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def peak_rss(*, sizes: Sequence[int], epochs: int) -> str:
    """Peak resident memory of a fresh process training one population (ru_maxrss)."""
    lines = [
        f"Peak RSS of a fresh process that trains one population of the default config "
        f"({epochs} epochs; memory does not grow with epochs).",
        "",
        "| population | peak RSS MiB |",
        "|---|---:|",
    ]
    for size in sizes:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(size), str(epochs)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "DGKD_MAX_POPULATION": "0"},  # one population, however large
        )
        kib = json.loads(out.stdout.strip().splitlines()[-1])
        lines.append(f"| {size} | {kib / 1024:.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.population", description=__doc__)
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: config's)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument(
        "--capped",
        type=int,
        default=32,
        help="also time this many seeds cut by the CPU's population cap (0: no such row)",
    )
    p.add_argument("--repeats", type=int, default=3, help="repeats of each step timing")
    p.add_argument("--run-repeats", type=int, default=3, help="repeats of the seed-run timing")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    return p


def sections(
    *,
    quick: bool,
    ks: Sequence[int] = (1, 4, 8, 16, 32, 64),
    capped: int = 32,
    epochs: int | None = None,
    repeats: int = 3,
    run_repeats: int = 3,
) -> list[tuple[str, str]]:
    """The populations figures as ``(title, markdown)`` sections, on one thread."""
    set_threads(1)
    base = TrainConfig(threads=1)
    if epochs is not None:
        base = base.replace(epochs=epochs)
    n, rss_sizes, rss_epochs, cap = 50, (1, 64), 2, None
    if quick:
        base = base.replace(epochs=1, teacher_epochs=1)
        ks, n, rss_sizes, rss_epochs = [1, 2], 2, (2,), 1
        capped, cap = 3, 2  # the cap forced low: checks the row, not the machine's rule
    limit = max_population(base, resolve_device(base.device)) if cap is None else cap
    if not limit or capped <= limit:
        capped = 0  # no cap, or K under it: the row would repeat "population of K"
    size = 2 if quick else 8
    return [
        (
            "Seed-runs per hour",
            seed_runs(
                base,
                ks,
                sequential=1 if quick else 8,
                repeats=run_repeats,
                capped=capped,
                cap=cap,
                n=n,
            ),
        ),
        ("Per-member step cost", step_costs(base, size=size, repeats=repeats, n=n)),
        ("Two ways to stack", stacking(base, size=size, repeats=repeats, n=n)),
        ("Peak memory", peak_rss(sizes=rss_sizes, epochs=rss_epochs)),
    ]


TITLE = "Populations: many students at once, with GFLOP/s"


def run(device: torch.device, *, quick: bool) -> Comparison:
    """The populations section for ``python -m benchmarks``: populations of 1 to 32 default
    students and 32 seeds under the CPU's cap, against 8 ``train()`` calls in a row.

    Raises:
        ValueError: ``device`` is not the CPU (the GPU's figures come from a separate script).
    """
    require_cpu(device, "population")
    threads = torch.get_num_threads()
    try:
        parts = sections(quick=quick, ks=(1, 4, 8, 16, 32), capped=32)
    finally:
        torch.set_num_threads(threads)
    body = "\n\n".join(f"#### {title}\n\n{text}" for title, text in parts)
    return Comparison(TITLE, body=body)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the populations section of the benchmarks as markdown."""
    args = _parser().parse_args(argv)
    parts = sections(
        quick=args.quick,
        ks=args.ks,
        capped=args.capped,
        epochs=args.epochs,
        repeats=args.repeats,
        run_repeats=args.run_repeats,
    )
    print("## Populations: many students at once\n")
    for title, body in parts:
        print(f"### {title}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
