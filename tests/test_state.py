"""Tests for PopulationState: the checkpoint saves and restores every part of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dgkd.checkpoint import Checkpoint, Keeper, StoppedError
from dgkd.config import TrainConfig
from dgkd.data import load_splits
from dgkd.state import PopulationState
from dgkd.step import DivergedError

# How to compare each field of a state; a field added without an entry here fails the test,
# so the checkpoint cannot silently leave it out.
_SAME: dict[str, Callable[[Any, Any], bool]] = {
    "cfgs": lambda a, b: list(a) == list(b),
    "alive": lambda a, b: a == b,
    "epoch": lambda a, b: a == b,
    "pop": lambda a, b: _same_tensors(a.state_dict(), b.state_dict()),
    "opt": lambda a, b: (
        a.state.keys() == b.state.keys()
        and all(_same_lists(a.state[k], b.state[k]) for k in a.state)
    ),
    "schedules": lambda a, b: a.lrs(range(3)) == b.lrs(range(3)),
    "orders": lambda a, b: _same_generators(a, b),
    "augs": lambda a, b: _same_generators(a, b),
    "runs": lambda a, b: (
        [(r.history, _error(r.error)) for r in a] == [(r.history, _error(r.error)) for r in b]
    ),
}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _error(error: Exception | None) -> str | None:
    """What a restored run keeps of an error: a divergence as it was, a report's exception as a
    StoppedError that names it."""
    if error is None or isinstance(error, DivergedError):
        return None if error is None else f"diverged {error.epoch} {error.step} {error.value}"
    return str(error) if isinstance(error, StoppedError) else f"{type(error).__name__}: {error}"


def _same_lists(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _same_generators(a: dict[int, torch.Generator], b: dict[int, torch.Generator]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].get_state(), b[k].get_state()) for k in a)


def test_a_state_restored_from_its_checkpoint_equals_the_saved_one(tmp_path: Path) -> None:
    cfgs = [
        TrainConfig(seed=s, epochs=4, checkpoint_every=1, val_pool=200, test_pool=400)
        for s in range(3)
    ]
    splits = load_splits(val_pool=200, test_pool=400)
    saved = PopulationState.fresh(cfgs, splits, torch.device("cpu"))
    # As after two epochs: weights and generators moved on, one member stopped by its report,
    # one diverged.
    with torch.no_grad():
        for p in saved.pop.parameters():
            p.add_(0.5)
    for gen in (*saved.orders.values(), *saved.augs.values()):
        torch.randperm(10, generator=gen)
    saved.schedules.step()
    saved.schedules.step()
    saved.epoch = 2
    for i, run in enumerate(saved.runs):
        run.history = [{"epoch": 1.0, "val_acc": 0.5 + i}, {"epoch": 2.0, "val_acc": 0.6 + i}]
    saved.runs[1].error = ValueError("pruned at epoch 2")
    saved.runs[2].error = DivergedError(2, 7, float("inf"))
    keeper = Keeper.open(Checkpoint(tmp_path), cfgs)
    assert keeper is not None
    keeper.epoch_end(saved)  # written: every epoch, and not the last

    restored = PopulationState.fresh(cfgs, splits, torch.device("cpu"))
    assert not _SAME["pop"](saved.pop, restored.pop)  # a fresh state differs before restoring
    fresh_keeper = Keeper.open(Checkpoint(tmp_path, replay=False), cfgs)
    assert fresh_keeper is not None and fresh_keeper.restore(restored, report=None)
    names = [f.name for f in dataclasses.fields(PopulationState)]
    assert sorted(names) == sorted(_SAME)
    for name in names:
        assert _SAME[name](getattr(saved, name), getattr(restored, name)), name


def test_dropping_stopped_members_keeps_the_others_in_order() -> None:
    cfgs = [TrainConfig(seed=s, val_pool=200, test_pool=400) for s in range(3)]
    state = PopulationState.fresh(
        cfgs, load_splits(val_pool=200, test_pool=400), torch.device("cpu")
    )
    weights = {i: state.pop.member(k).state_dict() for k, i in enumerate(state.alive)}
    state.runs[1].error = RuntimeError("stopped")
    state.drop_stopped()
    assert state.alive == [0, 2] and state.pop.size == 2 and not state.done
    for k, i in enumerate(state.alive):
        assert _same_tensors(state.pop.member(k).state_dict(), weights[i])
    for i in state.alive:
        state.runs[i].error = RuntimeError("stopped")
    state.drop_stopped()  # none goes on: the run ends with the last members in place
    assert state.alive == [0, 2] and state.done
