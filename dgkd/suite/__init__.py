"""Suites: one ablation over several teacher-student pairs, and one answer across them.

A suite (``suites/<name>.toml``) names setups; :func:`run_suite` runs the same ablation (variants,
teacher seeds, seeds) on each, then writes ``suite.csv`` (each setup's difference to ``full``
and the aggregate across setups), ``suite.md`` (the table a paper prints) and ``suite.png`` (a
forest plot). Typical use::

    from dgkd import AblationOptions, run_suite

    result = run_suite("mnist1d_pairs", AblationOptions(variants=("no_grad_term",), n_seeds=10))
    print(result.directory / "suite.md")

Modules: ``spec`` (the TOML files; torch-free), ``stats`` (setup rows and the three-level
aggregate), ``runner``, ``report``, ``plot`` and ``export``.
"""

from __future__ import annotations

from dgkd.suite.report import print_suite, suite_markdown
from dgkd.suite.runner import SuitePlan, SuiteResult, plan_suite, run_suite
from dgkd.suite.spec import Setup, Suite, SuiteError, available_suites, load_suite

__all__ = [
    "Setup",
    "Suite",
    "SuiteError",
    "SuitePlan",
    "SuiteResult",
    "available_suites",
    "load_suite",
    "plan_suite",
    "print_suite",
    "run_suite",
    "suite_markdown",
]
