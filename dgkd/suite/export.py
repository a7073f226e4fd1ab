"""A suite's files: suite.csv, suite.md, suite.png and suite.json, each written atomically."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dgkd.ablate.export import claim_json, jsonable
from dgkd.ablate.options import AblationOptions
from dgkd.ablate.store import versions
from dgkd.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from dgkd.suite.plot import PLOT_FILE, forest_png
from dgkd.suite.report import suite_markdown
from dgkd.suite.stats import COLUMNS

if TYPE_CHECKING:
    from dgkd.suite.result import SuiteResult

__all__ = ["MANIFEST_FILE", "write_suite_outputs"]

MANIFEST_FILE = "suite.json"


def write_suite_outputs(result: SuiteResult, opts: AblationOptions) -> None:
    """Write suite.csv, suite.md, suite.png and suite.json into the suite's directory."""
    import pandas as pd

    d = result.directory
    frame = pd.DataFrame(result.rows, columns=list(COLUMNS))
    for col in ("n_setups", "n_teachers", "n_pairs", "n_setups_better"):  # counts, blank on full
        frame[col] = frame[col].astype("Int64")
    atomic_write_text(d / "suite.csv", frame.to_csv(index=False))
    atomic_write_text(d / "suite.md", suite_markdown(result))
    atomic_write_bytes(d / PLOT_FILE, forest_png(result))
    atomic_write_json(d / MANIFEST_FILE, jsonable(_manifest(result, opts)))


def _manifest(result: SuiteResult, opts: AblationOptions) -> dict[str, Any]:
    first = result.ablations[0][1]
    return {
        "suite": result.suite.name,
        "description": result.suite.description,
        "file": str(result.suite.path),
        "setups": [
            {
                "name": s.name,
                "description": s.description,
                "study": s.study,
                "set": dict(s.overrides),
                "base_hash": r.base.hash,
                "directory": str(r.directory),
                "cells": len(r.cells),
            }
            for s, r in result.ablations
        ],
        "variants": list(result.variants),
        "seeds": list(first.seeds),
        "teacher_seeds": list(first.teacher_seeds),
        "statistics": {
            "setup_rows": "each setup's ablation statistics (teachers, then seeds)",
            "aggregate": "mean over setups of each setup's mean paired difference; percentile "
            "bootstrap over setups, then teachers, then seeds; one-sample t-test on the "
            "setup-level means; setups better: exact binomial CI",
            "correction": "Holm per metric, over the (setup, variant) rows and separately over "
            "the aggregate rows",
        },
        "claims": [claim_json(c) for c in result.claims],
        "cells": {"ran_now": result.ran, "reused": result.reused},
        "command": ["dgkd-ablate", *opts.argv],
        "versions": versions(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
