"""The interface every search backend implements.

A backend runs a study's trials with its library and returns backend-neutral records; the
orchestration (:func:`dgkd.search.run_search`) knows backends only through this class and the
registry (:mod:`dgkd.search.registry`), never by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from dgkd.search.common import Log
    from dgkd.search.records import SearchOptions, TrialRecord
    from dgkd.study import Study

__all__ = ["SearchBackend"]


class SearchBackend(ABC):
    """Runs a study's trials until ``opts.trials`` have finished, resuming stored ones.

    Subclasses set :attr:`name` (the ``--backend`` value) and implement :meth:`run`; the other
    hooks have do-nothing defaults.
    """

    name: ClassVar[str]
    #: Whether it runs on a cluster and takes --address, --cpus-per-trial, --gpus-per-trial.
    uses_cluster: ClassVar[bool] = False
    #: Whether it can train several trials as one population (--batch).
    batches: ClassVar[bool] = False

    def preflight(self, study: Study, opts: SearchOptions) -> None:
        """Checks that must pass before anything is moved aside or written (e.g. the storage).

        Raises:
            SearchInputError: with what to fix.
        """
        return None

    @abstractmethod
    def run(
        self, study: Study, opts: SearchOptions, *, log: Log | None = None
    ) -> list[TrialRecord]:
        """Run (or continue) ``study`` to ``opts.trials`` finished trials; every record by number.

        Feeds a :class:`~dgkd.search.reporter.SearchReporter` (live progress and the outputs)
        as trials finish.

        Raises:
            SearchInputError: bad input found only now (storage, cluster, a changed study).
            KeyboardInterrupt: interrupted; the state is saved and a rerun continues.
        """

    def inspect_command(self, study: Study, opts: SearchOptions) -> str | None:
        """A command that lists the study's trials with the library's own tools, if any."""
        return None
