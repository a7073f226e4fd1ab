"""The variant registry: each ablation row, what it tests, and the config fields it changes.

A variant changes exactly the fields its name is about and nothing else, so the difference
between two cells on the same seed is the variant alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dgkd.ablate.errors import AblateError
from dgkd.config import TrainConfig

__all__ = ["REFERENCE", "VARIANTS", "Variant", "parse_variants"]

REFERENCE = "full"  # the row every other variant is compared with


@dataclass(frozen=True)
class Variant:
    """One ablation row: a name, one line saying what it tests, and the fields it changes."""

    name: str
    doc: str
    changes: Mapping[str, Any]

    def apply(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this variant's changes (and nothing else) applied."""
        return base.replace(**self.changes) if self.changes else base


# `no_grad_term` keeps method "dgkd" and sets epsilon 0 rather than switching to method "dkd":
# the two are numerically identical (the same loss function with a zero weight), and this way
# the variant changes exactly the one field its name is about.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(REFERENCE, "DGKD as configured (the reference row)", {}),
        Variant("no_grad_term", "epsilon = 0: no gradient term, i.e. DKD", {"epsilon": 0.0}),
        Variant("minimize_mse", "grad_sign = +1: minimize the gradient MSE", {"grad_sign": 1.0}),
        Variant("raw_mse", "grad_term = raw: unnormalized M (seed text)", {"grad_term": "raw"}),
        Variant("kd", "method = kd: Hinton KD at the same temperature", {"method": "kd"}),
        Variant("ce", "method = ce: the student alone, no teacher", {"method": "ce"}),
        Variant("tckd_only", "beta = 0, epsilon = 0: TCKD alone", {"beta": 0.0, "epsilon": 0.0}),
        Variant("nckd_only", "alpha = 0, epsilon = 0: NCKD alone", {"alpha": 0.0, "epsilon": 0.0}),
    )
}


def parse_variants(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Variant names from ``"a,b"`` or ``"all"``: ``full`` first, then in the order given.

    Raises:
        AblateError: an unknown name (the message lists the valid ones).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip() for s in items if s.strip()]
    if "all" in names:
        return tuple(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise AblateError(
            f"unknown variant {unknown[0]!r}; valid variants: {', '.join(VARIANTS)} (or all)"
        )
    return tuple(dict.fromkeys([REFERENCE, *names]))
