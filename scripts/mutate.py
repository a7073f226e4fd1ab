"""Mutation testing of the numeric core: ``make mutate``.

Usage: ``python scripts/mutate.py [--jobs N] [--keep | --resume] [--fail-under P] [PATTERN ...]``.

The numbers behind every verdict (losses, a population's loss paths, metrics, statistics, the
validation split, the last-epoch rule, search-space and study validation, atomic writes, the
confirm stage's plan and verdict, the ablation's summary and claims) fail silently when they are
wrong, so their tests must fail when the code is changed. mutmut (configured under
``[tool.mutmut]`` in pyproject.toml) plants one small change at a time in a copy of the sources
under ``mutants/`` and runs the tests that execute the changed function; a mutant the tests do
not notice "survives". This script runs mutmut on the core's functions (:data:`CORE`, or the
given mutant-name patterns), lists the survivors with their diffs in ``mutants/survivors.txt``
and ends with one line, ``mutation score: K killed of N (P%)``. A timeout counts as killed;
a mutant no selected test executes counts as surviving. Exit status 1 below ``--fail-under``,
2 when mutmut itself fails or leaves mutants unchecked (a run stopped early).

A whole run takes hours on two cores, so it can be done in parts: ``--resume`` keeps the
results in ``mutants/`` and runs only the mutants not checked yet and the survivors (tests may
have been added since), then scores them all.

mutmut imports the tests once in a fork server and forks a process per mutant, so torch is
imported once, not once per mutant. docs/mutation.md lists the survivors and why each survives.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CORE", "main", "score"]

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"

# Mutant-name patterns of the numeric core (mutmut names a mutant
# ``<module>.x_<function>__mutmut_<n>``, a method ``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``).
# The files they live in are listed under ``only_mutate`` in pyproject.toml.
CORE = (
    "dgkd.losses.*",
    "dgkd.metrics.*",
    "dgkd.stats.*",
    "dgkd.io.*",
    "dgkd.space.*",
    "dgkd.study.*",
    "dgkd.config.*",
    "dgkd.data.x__carve__mutmut_*",  # the validation split
    "dgkd.train.x__train_population__mutmut_*",  # final metrics: the last epoch's
    "dgkd.train.x_evaluate__mutmut_*",  # the test split, once, on the final model
    "dgkd.step.*",  # a population's loss on every path
    "dgkd.search.verdict.*",  # the confirm stage's comparisons, Holm, words and headline
    "dgkd.search.confirm.*",  # its plan (shortlist, baseline, fresh seeds) and resume
    "dgkd.search.seeds.*",
    "dgkd.search.trial.*",
    "dgkd.ablate.summary.*",  # the ablation's statistics per variant
    "dgkd.ablate.claims.*",
)

# mutmut's exit-code verdicts that mean the tests noticed the mutant.
_KILLED = {"killed", "timeout", "segfault"}


def _mutmut() -> str:
    exe = Path(sys.executable).parent / "mutmut"
    if not exe.exists():
        raise SystemExit("mutmut is not installed: pip install -e '.[mutate]'")
    return str(exe)


def _results(patterns: tuple[str, ...]) -> dict[str, str]:
    """``{mutant name: verdict}`` of the mutants matching ``patterns``, from mutmut's files."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, str] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                out[name] = status_by_exit_code[code]
    return out


def score(verdicts: dict[str, str]) -> tuple[int, int, float]:
    """``(killed, total, percent)`` of a ``{mutant: verdict}`` table."""
    killed = sum(v in _KILLED for v in verdicts.values())
    total = len(verdicts)
    return killed, total, 100.0 * killed / total if total else 0.0


def _diff(name: str) -> str:
    proc = subprocess.run(
        [_mutmut(), "show", name], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return "\n".join(line for line in proc.stdout.splitlines() if line.startswith(("-", "+", "@")))


def _run_mutmut(args: list[str], log: Path, *, append: bool) -> int:
    """``mutmut <args>`` with its output in ``log``; its exit status, 130 when stopped.

    Ctrl-C reaches mutmut too (same process group), which stops and records what it finished;
    this waits for that instead of killing it (``subprocess.run`` would), so a run stopped
    part-way can be resumed.
    """
    with log.open("a" if append else "w") as f:
        proc = subprocess.Popen([_mutmut(), *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="mutant-name patterns (default: the core)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants at once")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--keep", action="store_true", help="reuse mutants/ (default: fresh)")
    how.add_argument(
        "--resume",
        action="store_true",
        help="keep mutants/ and its results; run the unchecked mutants and the survivors only",
    )
    parser.add_argument("--fail-under", type=float, default=90.0, help="minimum score, percent")
    args = parser.parse_args(argv)
    patterns = tuple(args.patterns) or CORE

    names: tuple[str, ...] = patterns
    if args.resume:
        earlier = _results(patterns)
        if not earlier:
            print(f"nothing to resume in {MUTANTS}: run it without --resume first")
            return 2
        names = tuple(sorted(n for n, v in earlier.items() if v not in _KILLED))
        print(f"resuming: {len(earlier) - len(names)} of {len(earlier)} mutants killed already")
    elif not args.keep and MUTANTS.exists():
        shutil.rmtree(MUTANTS)
    MUTANTS.mkdir(exist_ok=True)
    log = MUTANTS / "run.log"
    start = time.monotonic()
    returncode = 0
    if names:
        what = f"{len(names)} mutant(s)" if args.resume else f"{len(patterns)} pattern(s)"
        print(f"mutmut: {what}, {args.jobs} job(s); progress in {log}", flush=True)
        run = ["run", "--max-children", str(args.jobs), *names]
        returncode = _run_mutmut(run, log, append=args.resume)
    verdicts = _results(patterns)
    # A function changed since the last part gets new mutants when mutmut starts, after the
    # names above were chosen: check those too, in one more pass.
    new = sorted(n for n, v in verdicts.items() if v == "not checked" and n not in names)
    if args.resume and returncode == 0 and new:
        print(f"mutmut: {len(new)} mutant(s) of changed functions", flush=True)
        run = ["run", "--max-children", str(args.jobs), *new]
        returncode = _run_mutmut(run, log, append=True)
        verdicts = _results(patterns)
    if returncode == 130:
        checked = sum(v != "not checked" for v in verdicts.values())
        print(f"stopped: {checked} of {len(verdicts)} mutants checked; --resume continues")
        return 130
    if returncode != 0 or not verdicts:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-20:]
        print("\n".join(tail))
        print(f"mutmut failed (exit {returncode}); see {log}")
        return 2
    unchecked = [n for n, v in verdicts.items() if v == "not checked"]
    if unchecked:
        print(f"mutmut left {len(unchecked)} mutant(s) unchecked; --resume checks them; see {log}")
        return 2

    survivors = sorted(n for n, v in verdicts.items() if v not in _KILLED)
    report = [f"# {n}: {verdicts[n]}\n{_diff(n)}\n" for n in survivors]
    (MUTANTS / "survivors.txt").write_text("\n".join(report))
    for name in survivors:
        print(f"  {verdicts[name]:>9}  {name}")
    killed, total, percent = score(verdicts)
    minutes = (time.monotonic() - start) / 60
    print(f"{len(survivors)} survivor(s), diffs in {MUTANTS / 'survivors.txt'}; {minutes:.1f} min")
    print(f"mutation score: {killed} killed of {total} ({percent:.1f}%)")
    return 0 if percent >= args.fail_under else 1


if __name__ == "__main__":
    sys.exit(main())
