"""A run's saved state, so that a killed run resumes where it stopped with the same metrics.

A population (one run, or K trained at once) keeps a snapshot of everything its next epoch
depends on: the stacked weights and buffers, the optimizer's state, each member's generators
(data order, augmentation), the epoch, each member's history, and which members stopped and
why. It writes the snapshot every ``checkpoint_every`` epochs and, when an exception leaves the
epoch loop (Ctrl-C, SIGTERM turned into ``KeyboardInterrupt``, a crash), the last one it took:
the state at the end of the last complete epoch. The learning-rate schedule is a function of
the epoch: it is recomputed on resume and checked against the saved rates. A resumed run ends
bit for bit where an uninterrupted one does.

Files: ``<directory>/population-<digest>.pt``, one per population (the digest of its configs,
less the fields that do not change results), written atomically, read with
``torch.load(weights_only=True)``. A file of other configs or of another format is ignored (and
replaced by the next save); :func:`clear` deletes them once the run's results are recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dgkd.config import STATE_GLOB, TrainConfig
from dgkd.errors import one_line
from dgkd.io import atomic_write_bytes
from dgkd.state import MemberRun, PopulationState, evaluates
from dgkd.step import DivergedError

__all__ = [
    "STATE_GLOB",
    "Checkpoint",
    "CheckpointError",
    "Keeper",
    "StoppedError",
    "as_checkpoint",
    "clear",
    "sigterm_interrupts",
]

_FORMAT = 1
# Fields that locate data or say when to save: a run may resume under other values.
_NOT_STATE = ("checkpoint_every", "data_root", "download")


class CheckpointError(RuntimeError):
    """A checkpoint of the same configs does not fit the run (another version of the code);
    ``reason`` says what did not fit."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class StoppedError(RuntimeError):
    """A member stopped by its report (e.g. pruned) before the run was saved and resumed; the
    original exception is not restored, its type and message are in this one's."""


@dataclass
class Checkpoint:
    """Where a run keeps its state, and how it resumes.

    Attributes:
        directory: Holds one state file per population; created on the first save.
        replay: On resume, call the run's report again for every restored epoch, so that the
            caller sees every epoch (a search trial re-run under a new number). Off where the
            caller keeps the reports of the attempt it resumes (Tune).
        saved_epoch: The epoch of the last state written (set by the loop): Tune attaches the
            directory to that epoch's report; a command says where it stopped.
        resumed_epoch: The epoch the run resumed after (set by the loop); None: it did not.
        ignored: Why a state found in the directory was not resumed (set by the loop): of
            other configs, unreadable, or of another format; None: there was none.
        on_restore: Called with this object once the run has resumed, or found nothing to
            resume, before its first epoch (a command says so then).
    """

    directory: Path
    replay: bool = True
    saved_epoch: int | None = None
    resumed_epoch: int | None = None
    ignored: str | None = None
    on_restore: Callable[[Checkpoint], None] | None = None


def as_checkpoint(value: str | os.PathLike | Checkpoint | None) -> Checkpoint | None:
    """A :class:`Checkpoint` of a directory, or ``value`` itself."""
    if value is None or isinstance(value, Checkpoint):
        return value
    return Checkpoint(Path(value).expanduser())


def clear(directory: str | os.PathLike) -> None:
    """Delete the state files in ``directory``, then the directory if that leaves it empty."""
    folder = Path(directory)
    if not folder.is_dir():
        return
    for path in folder.glob(STATE_GLOB):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """In the block, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does, so that a run writes
    its state before the process ends. Only in the main thread (where Python runs signal
    handlers); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in _NOT_STATE}


_Report = Callable[[int, int, dict[str, float]], None]  # dgkd.loop.PopulationReport


def _encode(error: Exception | None) -> dict[str, Any] | None:
    if error is None:
        return None
    if isinstance(error, DivergedError):
        return {"diverged": [error.epoch, error.step, error.value]}
    return {"type": type(error).__name__, "message": str(error)}


def _decode(data: dict[str, Any] | None) -> Exception | None:
    if data is None:
        return None
    if "diverged" in data:
        epoch, step, value = data["diverged"]
        return DivergedError(int(epoch), int(step), float(value))
    return StoppedError(f"{data['type']}: {data['message']}")


def _cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_cpu(v) for v in obj]
    return obj


class Keeper:
    """The loop's side of a population's checkpoint: snapshot, save, restore.

    Build with :meth:`open`; ``None`` there means checkpointing is off (no directory, or
    ``checkpoint_every`` 0 for every member).
    """

    def __init__(self, checkpoint: Checkpoint, cfgs: Sequence[TrainConfig], every: int) -> None:
        self.checkpoint, self.every, self.epochs = checkpoint, every, cfgs[0].epochs
        self._cfg = cfgs[0]  # what the members share: epochs, eval_every
        self._configs = [_identity(c) for c in cfgs]
        blob = json.dumps(self._configs, sort_keys=True, default=str).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        self.path = checkpoint.directory / f"population-{digest}.pt"
        self._snapshot: dict[str, Any] | None = None
        self._written = 0  # the epoch of the snapshot last written

    @classmethod
    def open(cls, checkpoint: Checkpoint | None, cfgs: Sequence[TrainConfig]) -> Keeper | None:
        """The keeper of population ``cfgs``; members may differ in ``checkpoint_every``: the
        population saves at the shortest interval any of them asks for."""
        every = min((c.checkpoint_every for c in cfgs if c.checkpoint_every > 0), default=0)
        return None if checkpoint is None or not every else cls(checkpoint, cfgs, every)

    # --- saving ---------------------------------------------------------------------------

    def epoch_end(self, state: PopulationState) -> None:
        """Take the snapshot of the end of ``state.epoch`` (histories appended, not yet
        reported) and write it when due: every ``every`` epochs (or the first evaluated epoch
        after), except the last (the run then ends)."""
        alive, epoch = state.alive, state.epoch
        snapshot = {
            "format": _FORMAT,
            "configs": self._configs,
            "epoch": epoch,
            "alive": list(alive),
            "model": {k: v.detach().clone() for k, v in state.pop.state_dict().items()},
            "optimizer": {k: [t.clone() for t in ts] for k, ts in state.opt.state.items()},
            "lrs": list(state.schedules.lrs(alive)),
            "orders": [state.orders[i].get_state() for i in alive],
            "augs": [state.augs[i].get_state() for i in alive],
            "histories": [list(r.history) for r in state.runs],
            "errors": [_encode(r.error) for r in state.runs],
        }
        self._snapshot = snapshot  # one assignment: an interruption sees the old or the new
        # Due once a multiple of ``every`` has passed since the last write, at an evaluated
        # epoch (eval_every), whose report a Tune trial attaches the state to.
        due = epoch // self.every > self._written // self.every and evaluates(self._cfg, epoch)
        if due and epoch < self.epochs:
            self._write()

    def _write(self) -> None:
        snapshot = self._snapshot
        if snapshot is None or snapshot["epoch"] <= self._written:
            return
        buf = io.BytesIO()
        torch.save(_cpu(snapshot), buf)
        atomic_write_bytes(self.path, buf.getvalue())
        self._written = snapshot["epoch"]
        self.checkpoint.saved_epoch = self._written

    @contextlib.contextmanager
    def on_interrupt(self) -> Iterator[None]:
        """Write the last snapshot when an exception (Ctrl-C, SIGTERM as KeyboardInterrupt, a
        crash) leaves the block; a failure to write it does not hide that exception."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._write()
            raise

    # --- restoring ------------------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The saved state of these configs, or None (no file, or one this run cannot use)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            if any(self.checkpoint.directory.glob(STATE_GLOB)):
                self.checkpoint.ignored = "it was saved by other options"
            return None
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            warnings.warn(
                f"ignoring unreadable checkpoint {self.path}: {one_line(exc)}", stacklevel=2
            )
            self.checkpoint.ignored = f"it is unreadable ({one_line(exc)})"
            return None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            self.checkpoint.ignored = "it is of another format"
            return None
        if state.get("configs") != self._configs:
            self.checkpoint.ignored = "it was saved by other options"
            return None
        return state

    def restore(self, state: PopulationState, report: _Report | None) -> bool:
        """Load the saved state into ``state``, a fresh population, and say whether anything
        was saved. ``state.epoch`` is then the last epoch trained; members the saved state has
        stopped keep their history and error (the caller drops them as the loop does). With
        ``replay``, ``report`` sees every restored epoch again, in the loop's order, and may stop
        members as it did then.

        Raises:
            CheckpointError: the state of these configs does not fit this code.
        """
        saved = self.load()
        if saved is None:
            self._restored()
            return False
        loop_order = list(state.alive)
        try:
            state.select([state.alive.index(i) for i in saved["alive"]])
            state.pop.load_state_dict(saved["model"])
            saved_opt = saved["optimizer"]
            if set(saved_opt) != set(state.opt.state):
                raise ValueError(
                    f"optimizer state {sorted(saved_opt)}, not {sorted(state.opt.state)}"
                )
            with torch.no_grad():
                for name, tensors in saved_opt.items():
                    for dst, src in zip(state.opt.state[name], tensors, strict=True):
                        dst.copy_(src)
            for _ in range(saved["epoch"]):
                state.schedules.step()
            if state.schedules.lrs(state.alive) != saved["lrs"]:
                raise ValueError("the learning-rate schedule does not match")
            for i, order, aug in zip(state.alive, saved["orders"], saved["augs"], strict=True):
                state.orders[i].set_state(order)
                state.augs[i].set_state(aug)
            runs = zip(state.runs, saved["histories"], saved["errors"], strict=True)
            for run, history, error in runs:
                run.history = list(history)
                run.error = _decode(error)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {self.path} does not fit this run ({one_line(exc)}); delete it to "
                "start over",
                one_line(exc),
            ) from exc
        state.epoch = self._written = saved["epoch"]
        self.checkpoint.saved_epoch = self._written
        self.checkpoint.resumed_epoch = self._written
        if self.checkpoint.replay and report is not None:
            _replay(report, state.runs, order=loop_order)
        self._restored()
        return True

    def _restored(self) -> None:
        if self.checkpoint.on_restore is not None:
            self.checkpoint.on_restore(self.checkpoint)


def _replay(report: _Report, runs: Sequence[MemberRun], *, order: Sequence[int]) -> None:
    """Report every restored epoch again, epoch by epoch, members in ``order``; a report that
    raises stops its member there, as it did in the loop."""
    stopped: set[int] = set()
    for epoch in range(1, max((len(r.history) for r in runs), default=0) + 1):
        for i in order:
            history = runs[i].history
            if i in stopped or len(history) < epoch:
                continue
            row = history[epoch - 1]
            try:
                report(i, int(row["epoch"]), dict(row))
            except Exception as exc:
                runs[i].error = exc
                runs[i].history = history[:epoch]
                stopped.add(i)
