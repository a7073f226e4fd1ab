"""Run a suite: the same ablation on every setup, then one table across them.

Each setup is an ordinary ablation (the same variants, teacher seeds and seeds; its cells in
populations; its own resumable directory ``<out>/ablate/<suite>/<setup>/``), run in the suite's
order. Every setup's base config and directory is checked before the first cell trains, so a typo
in the last setup costs nothing; a killed suite resumes setup by setup, cell by cell. The suite's
tables are written once every setup has finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgkd.ablate import AblateError, AblationOptions, BaseConfig, Plan, preflight, resolve_base
from dgkd.ablate.result import AblationResult
from dgkd.ablate.runner import run_ablation
from dgkd.ablate.store import ablation_dir, directory_lock
from dgkd.config import ConfigError
from dgkd.errors import one_line
from dgkd.io import move_aside
from dgkd.suite.result import SuiteResult
from dgkd.suite.spec import Setup, Suite, SuiteError, load_suite

__all__ = ["SuitePlan", "SuiteResult", "plan_suite", "run_suite"]


@dataclass(frozen=True)
class SuitePlan:
    """What a suite will do: its directory, and each setup's base config and ablation plan."""

    suite: Suite
    name: str
    directory: Path
    setups: tuple[tuple[Setup, BaseConfig, Plan], ...]

    @property
    def pending(self) -> int:
        """Cells still to train, over every setup."""
        return sum(len(plan.pending) for _, _, plan in self.setups)

    @property
    def total(self) -> int:
        """Cells of the whole suite."""
        return sum(len(plan.cells) for _, _, plan in self.setups)


def _setup_options(
    opts: AblationOptions, name: str, directory: Path, setup: Setup
) -> AblationOptions:
    """One setup's options: its directory under the suite's, named ``<suite>/<setup>``."""
    return dataclasses.replace(
        opts, name=f"{name}/{setup.name}", directory=directory / setup.name, fresh=False
    )


def plan_suite(
    suite: Suite | str,
    opts: AblationOptions,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> SuitePlan:
    """Resolve every setup's base config and check its directory, changing nothing.

    ``overrides`` (the command line's ``--set``) apply to every setup, after its own ``set``.

    Raises:
        SuiteError: an unknown suite, or a setup whose config or directory is refused (the
            message names the setup).
    """
    if isinstance(suite, str):
        suite = load_suite(suite)
    name = opts.name or suite.name
    if "/" in name or "\\" in name or name.startswith("."):
        raise AblateError(f"--name must be a plain directory name, got {name!r}")
    directory = ablation_dir(opts.out_dir, name)
    fresh = opts.fresh and directory.exists()
    out = []
    for setup in suite.setups:
        where = f"suite {suite.name}, setup {setup.name!r}"
        try:
            base = resolve_base(
                study=setup.study, overrides={**setup.overrides, **(overrides or {})}
            )
            sub = _setup_options(opts, name, directory, setup)
            plan = preflight(base, dataclasses.replace(sub, fresh=fresh))
        except (AblateError, ConfigError) as exc:
            raise SuiteError(f"{where}: {one_line(exc)}") from None
        out.append((setup, base, plan))
    return SuitePlan(suite, name, directory, tuple(out))


def run_suite(
    suite: Suite | str,
    opts: AblationOptions,
    *,
    overrides: Mapping[str, Any] | None = None,
    announce: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Run (or finish) the ablation of every setup of ``suite`` and write the suite's tables.

    ``opts`` are one ablation's options, shared by every setup (``name`` names the suite's
    directory, default the suite's name; ``fresh`` moves the whole suite's directory aside).
    ``announce`` receives one line as each setup starts.

    Raises:
        SuiteError: a setup's config or directory is refused (before anything runs).
        AblateError: the suite is running elsewhere, or a setup's directory holds cells of
            another config (rerun with ``fresh``).
        CellFailedError: a cell failed; the finished cells stay for a rerun.
    """
    from dgkd.ablate.claims import check_claims
    from dgkd.suite.export import write_suite_outputs
    from dgkd.suite.stats import aggregate_summary, suite_rows

    plan = plan_suite(suite, opts, overrides=overrides)
    directory = plan.directory
    with directory_lock(directory):
        moved = move_aside(directory) if opts.fresh else None
        ablations: list[tuple[Setup, AblationResult]] = []
        for i, (setup, base, _) in enumerate(plan.setups):
            if announce is not None:
                what = f"study {setup.study}" if setup.study else "the defaults"
                changes = " ".join(f"{k}={v}" for k, v in setup.overrides.items())
                announce(
                    f"setup {i + 1}/{len(plan.setups)} {setup.name}: {what}"
                    + (f" + {changes}" if changes else "")
                )
            sub = _setup_options(opts, plan.name, directory, setup)
            ablations.append((setup, run_ablation(base, sub)))
        variants = ablations[0][1].variants
        rows = suite_rows({s.name: r.cells for s, r in ablations}, variants)
        result = SuiteResult(
            plan.suite,
            plan.name,
            directory,
            ablations,
            rows,
            check_claims(aggregate_summary(rows)),
            ran=sum(r.ran for _, r in ablations),
            reused=sum(r.reused for _, r in ablations),
            moved_to=moved,
        )
        write_suite_outputs(result, opts)
        return result
