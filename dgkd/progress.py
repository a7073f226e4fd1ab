"""One rich progress bar on stderr, shared by the epoch loop and the ablation's cells."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["Bar"]


class Bar:
    """A transient bar with count, elapsed time, ETA and a free-text field; a no-op when
    ``enabled`` is False, so callers need no branches for pipes and logs."""

    def __init__(self, enabled: bool, label: str, total: int, *, completed: int = 0) -> None:
        self.enabled, self.label, self.total, self.completed = enabled, label, total, completed
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(stderr=True),
                transient=True,
            )
            progress.__enter__()
            self._task = progress.add_task(
                self.label, total=self.total, completed=self.completed, info=""
            )
            self._progress = progress
        return self

    def advance(self, info: str | None = "") -> None:
        """One more step done; ``info`` replaces the free-text field (None keeps it)."""
        if self._progress is not None and self._task is not None:
            if info is None:
                self._progress.update(self._task, advance=1)
            else:
                self._progress.update(self._task, advance=1, info=info)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
