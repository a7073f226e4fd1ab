"""The seed's claims for DGKD over DKD, each checked on the paired ``full - no_grad_term``.

Neural collapse is claimed to be *faster*, so compactness is checked first on the NC1 curve over
the epochs (``nc1_auc``, :mod:`dgkd.ablate.curves`), then on the final NC1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dgkd.ablate.summary import METRICS
from dgkd.stats import ALPHA, verdict

__all__ = ["ALPHA", "CLAIMS", "DKD_VARIANT", "Claim", "check_claims"]

DKD_VARIANT = "no_grad_term"  # the row that is DKD: DGKD with epsilon 0

# The seed's claims for DGKD against DKD, and the metric that measures each.
CLAIMS: tuple[tuple[str, str], ...] = (
    ("accuracy", "test_acc"),
    ("fidelity", "test_agreement"),
    ("fidelity", "test_kl_to_teacher"),
    ("calibration", "test_ece"),
    ("compactness", "nc1_auc"),  # *faster* collapse: the paired NC1 curves (dgkd.ablate.curves)
    ("compactness", "train_nc1"),  # and the final value
)


@dataclass(frozen=True)
class Claim:
    """One of the seed's claims for DGKD over DKD, checked on the paired differences.

    The numbers are ``full - no_grad_term`` (DGKD minus DKD) with the bootstrap CI; ``verdict``
    is :func:`dgkd.stats.verdict` of them with the Holm-corrected test and the metric's rope
    (better, worse, equivalent, inconclusive), or
    ``"not checked"`` when ``no_grad_term`` is not in the ablation or has fewer than two seed
    pairs.
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
    n_teachers: int = 1  # teachers the pairs come from (the test is on their means when > 1)
    sd_teacher: float = math.nan  # the differences' spread between teachers
    sd_seed: float = math.nan  # and between seeds of one teacher

    @property
    def more(self) -> str:
        """What to add to decide an inconclusive claim: teachers when the spread between them
        weighs more in a teacher's mean difference than the seeds' does, else seeds."""
        if self.n_teachers <= 1 or not math.isfinite(self.sd_teacher):
            return "seeds"
        per = max(1.0, self.n_pairs / self.n_teachers)
        return "teachers" if self.sd_teacher**2 >= self.sd_seed**2 / per else "seeds"


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
        ms = METRICS[metric]
        within = (-row[f"{metric}_equiv_high"], -row[f"{metric}_equiv_low"])
        word = verdict(low, high, row[f"{metric}_p_holm"], higher_is_better=ms.higher_is_better,
                       rope=ms.rope, within=within)  # fmt: skip
        out.append(
            Claim(
                topic,
                metric,
                word,
                delta,
                low,
                high,
                row[f"{metric}_p"],
                row[f"{metric}_p_holm"],
                row["n_pairs"],
                n_teachers=int(row.get("n_teachers", 1)),
                sd_teacher=float(row.get(f"{metric}_sd_teacher", math.nan)),
                sd_seed=float(row.get(f"{metric}_sd_seed", math.nan)),
            )
        )
    return out
