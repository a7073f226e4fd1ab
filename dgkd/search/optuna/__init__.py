"""The Optuna backend: the only place that imports ``optuna`` at module level.

:mod:`.storage` opens and checks the journal or RDB, :mod:`.records` turns its trials into
records, :mod:`.workers` runs trials in one or more processes, :mod:`.backend` puts them
together as :class:`OptunaBackend`.
"""

from dgkd.search.optuna.backend import OptunaBackend

__all__ = ["OptunaBackend"]
