"""A batch of trials trained as one population: each trial's seeds, its own seed means, its
own pruning, and metrics identical to the trial trained alone."""

from __future__ import annotations

from typing import Any

import pytest

from dgkd.config import TrainConfig
from dgkd.search.records import TrialState
from dgkd.search.trial import TrialJob, TrialOutcome, train_trial, train_trials


def _timeless(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "duration_s"}


class _Pruned(Exception):
    pass


def test_a_batch_gives_each_trial_its_metrics_alone_and_prunes_one_on_its_own(
    tiny: TrainConfig,
) -> None:
    cfgs = [tiny.replace(epochs=3, epsilon=e) for e in (0.0, 2.0, 6.0)]
    seen: dict[int, list[tuple[int, bool]]] = {0: [], 1: [], 2: []}

    def hook(j: int):
        def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
            seen[j].append((epoch, last))
            if j == 1 and epoch == 2:
                raise _Pruned(f"pruned at {epoch}")

        return on_epoch

    jobs = [TrialJob(cfg, hook(j), seeds=(0, 1)) for j, cfg in enumerate(cfgs)]
    outcomes = train_trials(jobs, metric="val_acc")
    assert isinstance(outcomes[1], _Pruned) and seen[1] == [(1, False), (2, False)]
    for j in (0, 2):
        out = outcomes[j]
        assert isinstance(out, TrialOutcome) and out.state == TrialState.COMPLETE
        assert seen[j] == [(1, False), (2, False), (3, True)]
        alone = train_trial(cfgs[j], metric="val_acc", on_epoch=lambda *a: None, seeds=(0, 1))
        assert out.value == alone.value and out.seeds == (0, 1)
        for mine, theirs in zip(out.seed_metrics, alone.seed_metrics, strict=True):
            assert _timeless(mine) == _timeless(theirs)


def test_trials_with_other_seeds_or_shapes_share_a_batch(tiny: TrainConfig) -> None:
    """Jobs that cannot share one population (another width) still train in one call."""
    jobs = [
        TrialJob(tiny, lambda *a: None, seeds=(3,)),
        TrialJob(tiny.replace(student_width=4), lambda *a: None, seeds=(0, 1, 2)),
    ]
    first, second = train_trials(jobs, metric="val_acc")
    assert isinstance(first, TrialOutcome) and isinstance(second, TrialOutcome)
    assert first.seeds == (3,) and second.seeds == (0, 1, 2)
    assert len(second.seed_metrics) == 3
    alone = train_trial(tiny.replace(student_width=4), metric="val_acc",
                        on_epoch=lambda *a: None, seeds=(0, 1, 2))  # fmt: skip
    assert second.value == alone.value


def test_an_interrupt_in_a_batch_propagates(tiny: TrainConfig) -> None:
    def stop(epoch: int, row: dict[str, float], last: bool) -> None:
        raise KeyboardInterrupt

    jobs = [TrialJob(tiny, lambda *a: None, seeds=(0,)), TrialJob(tiny, stop, seeds=(1,))]
    with pytest.raises(KeyboardInterrupt):
        train_trials(jobs, metric="val_acc")


def test_an_mlflow_run_logs_each_epoch_before_the_search_sees_it() -> None:
    from dgkd.search.trial import _logged

    calls: list[tuple[Any, ...]] = []

    class Run:
        def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
            calls.append(("log", epoch, row))

    def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
        calls.append(("search", epoch, row, last))

    hook = _logged(on_epoch, Run())
    hook(4, {"val_acc": 0.5}, False)
    hook(5, {"val_acc": 0.6}, True)
    assert calls == [
        ("log", 4, {"val_acc": 0.5}),
        ("search", 4, {"val_acc": 0.5}, False),
        ("log", 5, {"val_acc": 0.6}),
        ("search", 5, {"val_acc": 0.6}, True),
    ]
