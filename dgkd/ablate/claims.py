"""The seed's claims for DGKD over DKD, each checked on the paired ``full - no_grad_term``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dgkd.ablate.summary import METRICS

__all__ = ["ALPHA", "CLAIMS", "DKD_VARIANT", "Claim", "check_claims"]

ALPHA = 0.05  # level at which a claim's difference counts as shown
DKD_VARIANT = "no_grad_term"  # the row that is DKD: DGKD with epsilon 0

# The seed's claims for DGKD against DKD, and the metric that measures each.
CLAIMS: tuple[tuple[str, str], ...] = (
    ("accuracy", "test_acc"),
    ("fidelity", "test_agreement"),
    ("fidelity", "test_kl_to_teacher"),
    ("calibration", "test_ece"),
    ("compactness", "train_nc1"),
)


@dataclass(frozen=True)
class Claim:
    """One of the seed's claims for DGKD over DKD, checked on the paired differences.

    The numbers are ``full - no_grad_term`` (DGKD minus DKD) with the bootstrap CI. ``verdict``
    is ``"supported"`` when the CI excludes zero in the claimed direction *and* the
    Holm-corrected paired t-test agrees (p < ``ALPHA``), ``"opposite"`` when both say so the
    other way, ``"no difference"`` when the CI contains zero and p >= ``ALPHA``,
    ``"inconclusive"`` when the two disagree (with few seeds the percentile bootstrap is
    narrow, so a CI alone is not trusted), and ``"not checked"`` when ``no_grad_term`` is not
    in the ablation or has fewer than two seed pairs.
    """

    topic: str  # accuracy | fidelity | calibration | compactness
    metric: str
    verdict: str
    delta: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    n_pairs: int = 0
    note: str = ""  # why it was not checked


def check_claims(summary: Sequence[Mapping[str, Any]]) -> list[Claim]:
    """The seed's claims (DGKD vs DKD: accuracy, fidelity, calibration, compactness) checked."""
    row = next((r for r in summary if r["variant"] == DKD_VARIANT), None)
    out = []
    for topic, metric in CLAIMS:
        if row is None or row["n_pairs"] < 2 or not math.isfinite(row[f"{metric}_delta_ci_low"]):
            if row is None:
                note = f"add {DKD_VARIANT} to --variants"
            else:
                note = (
                    f"{row['n_pairs']} seed pair(s) of full and {DKD_VARIANT} finished with this "
                    "metric; 2 or more are needed"
                )
            pairs = row["n_pairs"] if row else 0
            out.append(Claim(topic, metric, "not checked", n_pairs=pairs, note=note))
            continue
        # The summary holds no_grad_term - full; the claim reads full - no_grad_term.
        delta = -row[f"{metric}_delta"]
        low, high = -row[f"{metric}_delta_ci_high"], -row[f"{metric}_delta_ci_low"]
        sign = 1.0 if METRICS[metric].higher_is_better else -1.0
        beyond_ci = low > 0 or high < 0
        significant = row[f"{metric}_p_holm"] < ALPHA
        if beyond_ci and significant:
            verdict = "supported" if delta * sign > 0 else "opposite"
        elif not beyond_ci and not significant:
            verdict = "no difference"
        else:
            verdict = "inconclusive"
        out.append(
            Claim(
                topic,
                metric,
                verdict,
                delta,
                low,
                high,
                row[f"{metric}_p"],
                row[f"{metric}_p_holm"],
                row["n_pairs"],
            )
        )
    return out
