"""What a finished ablation hands back: its cells, summary and claims, and what this run did."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgkd.ablate.base import BaseConfig
from dgkd.ablate.cells import CellResult
from dgkd.ablate.claims import Claim

__all__ = ["AblationResult"]


@dataclass
class AblationResult:
    """A finished ablation: every planned cell, its summary and the claims check."""

    name: str
    directory: Path
    base: BaseConfig
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    teacher_seeds: tuple[int, ...]
    cells: list[CellResult]
    summary: list[dict[str, Any]]  # one row per variant (see summarize_cells)
    claims: list[Claim]
    ran: int  # cells trained by this invocation
    reused: int  # cells found finished on disk
    moved_to: Path | None = None  # where --fresh moved the old directory
