"""What a finished suite hands back: each setup's ablation, and the rows and claims across them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgkd.ablate.claims import Claim
from dgkd.ablate.result import AblationResult
from dgkd.suite.spec import Setup, Suite

__all__ = ["SuiteResult"]


@dataclass
class SuiteResult:
    """A finished suite: each setup's ablation and the rows and claims across them."""

    suite: Suite
    name: str
    directory: Path
    ablations: list[tuple[Setup, AblationResult]]
    rows: list[dict[str, Any]]  # suite.csv (dgkd.suite.stats.suite_rows)
    claims: list[Claim]  # the seed's claims for DGKD over DKD, on the aggregate rows
    ran: int
    reused: int
    moved_to: Path | None = None

    @property
    def variants(self) -> tuple[str, ...]:
        """The ablation's variants, ``full`` first."""
        return self.ablations[0][1].variants
