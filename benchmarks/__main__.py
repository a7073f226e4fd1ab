"""Benchmarks: every figure is a ratio against a baseline measured in the same run.

Usage: ``python -m benchmarks [--quick] [--only NAME ...] [--out BENCHMARKS.md]``.
Absolute times on a shared 2-core machine drift; ratios measured back to back hold. Each
comparison prints a rich table (median of repeats, min-max) and the whole run is written to
``BENCHMARKS.md`` with the machine description and the exact command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.console import Console

from benchmarks import (
    ablate,
    cpu_paths,
    loss,
    mainjob,
    memory,
    methods,
    population,
    profile,
    search,
    split,
    steps,
    trial,
)
from benchmarks.report import Comparison, document, machine, markdown, rich_table
from dgkd.io import atomic_write_text

__all__ = ["COMPARISONS", "CUDA_COMPARISONS", "main"]

# name -> run(device, *, quick, ...), in the order of a full run
COMPARISONS: dict[str, Callable[..., Comparison]] = {
    "loss": loss.run,
    "steps": steps.run,
    "methods": methods.run,
    "trial": trial.run,
    "split": split.run,
    "memory": memory.run,
    "profile": profile.run,
    "population": population.run,
    "cpu_paths": cpu_paths.run,
    "search": search.run,
    "ablate": ablate.run,
    "mainjob": mainjob.run,
}
CUDA_COMPARISONS = ("loss", "steps")  # the others measure the CPU only


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that it runs, not speed"
    )
    p.add_argument(
        "--only", nargs="+", choices=sorted(COMPARISONS), help="run only these comparisons"
    )
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
        default=50,
        help="trials of the pruning comparison in 'search' (default 50; the study runs 200, "
        "which one unpruned worker takes about 26 minutes to train)",
    )
    p.add_argument(
        "--parallel-trials",
        type=int,
        default=50,
        help="trials of the workers comparison in 'search' (default 50)",
    )
    return p


def _usage_error(args: argparse.Namespace) -> str | None:
    """The one-line error for flags that parse but cannot run here, or None."""
    for flag in ("threads", "search_trials", "parallel_trials"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be >= 1"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            return "--device cuda: no CUDA device is available"
        if set(args.only or COMPARISONS) - set(CUDA_COMPARISONS):
            return (
                "--device cuda runs the loss and steps comparisons only: "
                f"add --only {' '.join(CUDA_COMPARISONS)}"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected comparisons, print each, and write the markdown report at the end.

    After each comparison the sections so far go to ``<out>.partial`` (atomically), so a run
    stopped after an hour keeps what it measured; the report itself is written only whole, and
    the partial file is removed then.
    """
    p = _parser()
    args = p.parse_args(argv)
    error = _usage_error(args)
    if error is not None:
        print(f"{p.prog}: error: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    machine_line = machine(device)  # before a comparison changes the thread count
    console = Console()
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    names = args.only or list(COMPARISONS)
    partial = Path(f"{args.out}.partial")
    sections = []
    for i, name in enumerate(names, 1):
        if name == "search":
            trials = (4, 4) if args.quick else (args.search_trials, args.parallel_trials)
            comp = search.run(device, quick=args.quick, trials=trials[0], parallel_trials=trials[1])
        else:
            comp = COMPARISONS[name](device, quick=args.quick)
        console.print(rich_table(comp))
        sections.append(markdown(comp))
        if i < len(names):
            note = f"Partial: {i} of {len(names)} comparisons; the run stopped or goes on.\n"
            text = document(machine_line=machine_line, command=command, quick=args.quick,
                            sections=[note, *sections])  # fmt: skip
            atomic_write_text(partial, text)
    text = document(machine_line=machine_line, command=command, quick=args.quick, sections=sections)
    atomic_write_text(args.out, text)
    partial.unlink(missing_ok=True)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
