"""The ablation's errors, split by what the user does next: fix the input, or rerun."""

from __future__ import annotations

__all__ = ["AblateError", "BaseConfigChangedError", "CellFailedError"]


class AblateError(ValueError):
    """Bad input to an ablation (unknown variant, no finished trials, ...); exit code 2."""


class BaseConfigChangedError(AblateError):
    """The ablation directory holds cells of a different base configuration."""


class CellFailedError(RuntimeError):
    """A cell raised something other than divergence; finished cells are kept for a rerun."""
