"""What every comparison shares: interleaved timing, rows and ratios, and the report writers.

Absolute times on a shared machine drift; ratios measured back to back hold. So a comparison
times its cases repeat by repeat, alternating (:func:`interleaved`), and reports each case as the
median of its repeats with their range, plus ratios against the baseline measured in the same
run. :func:`markdown` and :func:`rich_table` render one :class:`Comparison`; :func:`document`
assembles ``BENCHMARKS.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from rich.markdown import Markdown
    from rich.table import Table

__all__ = [
    "QUICK_POOLS",
    "Comparison",
    "Ratio",
    "Row",
    "child_env",
    "document",
    "interleaved",
    "machine",
    "markdown",
    "require_cpu",
    "rich_table",
    "run_module",
    "timeit",
]

_ROOT = Path(__file__).resolve().parents[1]  # the directory holding the benchmarks package
# Quick mode's MNIST-1D validation and test pools: generated in a fraction of a second and
# evaluated in milliseconds, where the defaults' 30,000 examples dominate a 2-epoch run.
QUICK_POOLS = {"val_pool": 200, "test_pool": 400}


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
        """``median (min-max)`` in ms below a second, else in s."""
        unit, scale = ("ms", 1e3) if self.median < 1 else ("s", 1.0)
        lo, hi = min(self.times) * scale, max(self.times) * scale
        return f"{self.median * scale:.3g} {unit} ({lo:.3g}-{hi:.3g})"


class Ratio(NamedTuple):
    """A figure against the baseline: baseline / row (higher = faster) or row / baseline."""

    label: str
    value: float
    target: str  # e.g. ">= 2x", "<= 1.15", or "report" (no target)


@dataclass
class Comparison:
    """Rows sharing a baseline, the ratios between them, notes, and an optional free table."""

    title: str
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)  # free-form: a header row, then rows
    body: str = ""  # markdown printed as is after the notes (several tables of one comparison)

    def ratio(self, label: str, value: float, target: str) -> None:
        """Append a ratio row."""
        self.ratios.append(Ratio(label, value, target))


def require_cpu(device: torch.device, name: str) -> None:
    """Refuse another device for a comparison that measures the CPU only.

    Raises:
        ValueError: ``device`` is not the CPU.
    """
    if device.type != "cpu":
        raise ValueError(f"the {name} comparison runs on the CPU only, not on {device}")


def _sync(device: torch.device | None) -> None:
    """Wait for queued GPU work, so that a timer measures it (no-op on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(
    fn: Callable[[], object],
    *,
    repeats: int,
    inner: int,
    warmup: int = 2,
    device: torch.device | None = None,
) -> list[float]:
    """Seconds per call of ``fn``, one figure per repeat of ``inner`` calls.

    ``device``: where ``fn`` queues its work; a CUDA device is synchronized around each repeat.
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        out.append((time.perf_counter() - start) / inner)
    return out


def interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    repeats: int,
    inner: int,
    device: torch.device | None = None,
) -> dict[str, list[float]]:
    """Time several functions repeat by repeat, alternating, so that drifting load on a shared
    machine hits them alike (their ratio is what is reported)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += timeit(fn, repeats=1, inner=inner, warmup=1, device=device)
    return times


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``extra``, with the package's directory on
    ``PYTHONPATH``, so that a child runs the benchmarks from any working directory."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_ROOT), env.get("PYTHONPATH"))))
    return env


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``python -m <module> <args>`` in a fresh process (``env``: variables to add to the
    environment, see :func:`child_env`); its stdout.

    Raises:
        subprocess.CalledProcessError: the process exited non-zero.
    """
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=child_env(env))
    return proc.stdout


def machine(device: torch.device) -> str:
    """One line describing where the figures were measured."""
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s){gpu}"
    )


def markdown(comp: Comparison) -> str:
    """One comparison as a markdown section: rows, ratios, the free table, the notes, then the
    body, each block after one blank line."""
    blocks: list[list[str]] = []
    if comp.rows:
        blocks.append(["| case | median (min-max) |", "|---|---|"])
        blocks[-1] += [f"| {row.name} | {row.cell()} |" for row in comp.rows]
    if comp.ratios:
        blocks.append(["| ratio | value | target |", "|---|---|---|"])
        blocks[-1] += [f"| {r.label} | {r.value:.2f}x | {r.target} |" for r in comp.ratios]
    if comp.table:
        header, *body = comp.table
        blocks.append(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        blocks[-1] += ["| " + " | ".join(cells) + " |" for cells in body]
    if comp.notes:
        blocks.append([f"- {n}" for n in comp.notes])
    if comp.body:
        blocks.append([comp.body.strip()])
    md = [f"### {comp.title}"]
    for block in blocks:
        md += ["", *block]
    return "\n".join([*md, ""])


def rich_table(comp: Comparison) -> Table | Markdown:
    """One comparison for the terminal: its rows, ratios and notes, or its free table, or its
    markdown when it has a body."""
    from rich.markdown import Markdown
    from rich.table import Table

    if comp.body:
        return Markdown(markdown(comp))
    if comp.table and not comp.rows:
        header, *body = comp.table
        extra = Table(title=comp.title)
        for name in header:
            extra.add_column(name, justify="left" if name == header[0] else "right")
        for cells in body:
            extra.add_row(*cells)
        return extra
    table = Table(title=comp.title)
    table.add_column("case")
    table.add_column("time per call: median (min-max)", justify="right")
    for row in comp.rows:
        table.add_row(row.name, row.cell())
    for r in comp.ratios:
        table.add_row(f"[bold]{r.label}[/bold]", f"[bold]{r.value:.2f}x[/bold] (target {r.target})")
    for note in comp.notes:
        table.add_row(note, "")
    return table


def document(*, machine_line: str, command: str, quick: bool, sections: Sequence[str]) -> str:
    """``BENCHMARKS.md``: the machine, the exact command, then one section per comparison."""
    head = [
        "# Benchmarks",
        "",
        f"Machine: {machine_line}.",
        f"Command: `{command.strip()}`"
        + (" (quick mode: sizes too small for speed claims)" if quick else ""),
        "",
    ]
    return "\n".join([*head, *sections])
