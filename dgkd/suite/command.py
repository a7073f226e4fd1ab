"""The suite side of ``dgkd-ablate``: ``--list`` and ``--suite NAME`` (parsing stays in cli.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dgkd.ablate.options import AblationOptions
from dgkd.cliparts import EXIT_OK, UsageError

__all__ = ["list_sources", "suite_command"]


def list_sources() -> None:
    """``dgkd-ablate --list``: the packaged suites (with their setups) and studies."""
    from dgkd.study import available_studies, load_study
    from dgkd.suite.spec import available_suites, load_suite

    print("suites (--suite NAME):")
    for name in available_suites():
        suite = load_suite(name)
        print(f"  {name}: {suite.description}")
        for s in suite.setups:
            print(f"    {s.name}: {s.description}")
    print("studies (--study NAME, --from-study NAME):")
    for name in available_studies():
        print(f"  {name}: {' '.join(load_study(name).description.split())}")


def suite_command(
    args: argparse.Namespace, opts: AblationOptions, overrides: dict[str, Any]
) -> int:
    """``dgkd-ablate --suite NAME``: every setup's ablation, then the tables across them."""
    from dgkd.suite import plan_suite, print_suite, run_suite

    if args.storage:
        raise UsageError("--storage is only read with --from-study; drop it with --suite")
    if args.mlflow is not None:
        from dgkd.cliparts import check_mlflow_uri

        check_mlflow_uri(args.mlflow)
    plan = plan_suite(args.suite, opts, overrides=overrides)  # every setup checked first
    print(
        f"suite {plan.suite.name}: {len(plan.setups)} setups x "
        f"{len(plan.setups[0][2].variants)} variants x {len(plan.setups[0][2].teacher_seeds)} "
        f"teacher(s) x {opts.n_seeds} seeds: {plan.pending} runs to train, "
        f"{plan.total - plan.pending} finished in {plan.directory}",
        file=sys.stderr,
    )
    announce = None if args.quiet else (lambda line: print(line, file=sys.stderr))
    result = run_suite(plan.suite, opts, overrides=overrides, announce=announce)
    if result.moved_to is not None:
        print(f"moved the old results to {result.moved_to}", file=sys.stderr)
    print_suite(result)
    print(
        f"{result.ran} runs trained, {result.reused} reused; results in {result.directory} "
        "(suite.csv, suite.md, suite.png)",
        file=sys.stderr,
    )
    if args.mlflow is not None:  # one experiment per setup: dgkd-ablate/<suite>/<setup>
        from dgkd.tracking import log_cells

        logged = sum(
            log_cells(args.mlflow, f"dgkd-ablate/{r.name}", r.cells) for _, r in result.ablations
        )
        print(f"{logged} runs logged to MLflow {args.mlflow}", file=sys.stderr)
    return EXIT_OK
