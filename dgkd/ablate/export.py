"""An ablation's files: runs.csv, history.csv, summary.csv, summary.md, config.json and the PNG.

Everything is written atomically (temporary file, then rename), so an interrupted export never
leaves a half-written table beside a finished one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dgkd.ablate.cells import CellResult
from dgkd.ablate.claims import Claim
from dgkd.ablate.plot import PLOT_FILE, plot_png
from dgkd.ablate.report import summary_markdown
from dgkd.ablate.result import AblationResult
from dgkd.ablate.store import write_manifest
from dgkd.ablate.summary import METRICS
from dgkd.io import atomic_write_bytes, atomic_write_text, finite_or_none

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["history_frame", "runs_frame", "summary_frame", "write_ablation_outputs"]


def write_ablation_outputs(result: AblationResult, manifest: Mapping[str, Any]) -> None:
    """Write runs.csv, history.csv, summary.csv, summary.md, config.json and the plot."""
    d = result.directory
    atomic_write_text(d / "runs.csv", runs_frame(result.cells).to_csv(index=False))
    atomic_write_text(d / "history.csv", history_frame(result.cells).to_csv(index=False))
    atomic_write_text(d / "summary.csv", summary_frame(result.summary).to_csv(index=False))
    atomic_write_text(d / "summary.md", summary_markdown(result))
    done = dict(manifest)
    done["cells"] = {
        "total": len(result.cells),
        "ok": sum(c.status == "ok" for c in result.cells),
        "diverged": sum(c.status == "diverged" for c in result.cells),
        "ran_now": result.ran,
        "reused": result.reused,
    }
    done["claims"] = [claim_json(c) for c in result.claims]
    write_manifest(d, jsonable(done))
    atomic_write_bytes(d / PLOT_FILE, plot_png(result))


def jsonable(obj: Any) -> Any:
    """``obj`` with every NaN or infinity, however deep, as None (JSON has neither)."""
    if isinstance(obj, Mapping):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return finite_or_none(obj)


def claim_json(c: Claim) -> dict[str, Any]:
    return {
        "topic": c.topic,
        "metric": c.metric,
        "verdict": c.verdict,
        "full_minus_no_grad_term": c.delta,
        "ci": [c.ci_low, c.ci_high],
        "p": c.p,
        "p_holm": c.p_holm,
        "n_pairs": c.n_pairs,
        "note": c.note,
    }


def runs_frame(cells: Sequence[CellResult]) -> pd.DataFrame:
    """One row per (variant, teacher_seed, seed): status, where it diverged, every final
    metric, keys."""
    import pandas as pd

    metric_names = list(METRICS)
    for c in cells:
        metric_names += [k for k in c.metrics if k not in metric_names]
    rows = []
    for c in cells:
        where = c.diverged or {}
        row = {
            "variant": c.variant,
            "teacher_seed": c.teacher_seed,
            "seed": c.seed,
            "status": c.status,
            "diverged_epoch": where.get("epoch"),
            "diverged_step": where.get("step"),
        }
        row.update({m: c.value(m) for m in metric_names})
        row.update(
            {
                "cell_duration_s": c.duration_s,
                "teacher_key": c.teacher_key,
                "config_hash": c.config_hash,
            }
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("diverged_epoch", "diverged_step"):
        frame[col] = frame[col].astype("Int64")
    return frame


def history_frame(cells: Sequence[CellResult]) -> pd.DataFrame:
    """One row per (variant, teacher_seed, seed, epoch): the per-epoch history each cell stored
    (the NC1, validation accuracy and ECE curves, the training loss and its terms)."""
    import pandas as pd

    keys = ["variant", "teacher_seed", "seed", "status"]
    rows = [
        {"variant": c.variant, "teacher_seed": c.teacher_seed, "seed": c.seed, "status": c.status}
        | row
        for c in cells
        for row in c.history
    ]
    frame = pd.DataFrame(rows, columns=None if rows else [*keys, "epoch"])
    frame["epoch"] = frame["epoch"].astype("Int64")
    return frame


def summary_frame(summary: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The summary rows as a DataFrame (one row per variant)."""
    import pandas as pd

    return pd.DataFrame(list(summary))
