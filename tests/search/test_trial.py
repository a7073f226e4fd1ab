"""A batch of trials trained as one population: each trial's seeds, its own seed means, its
own pruning, and metrics identical to the trial trained alone; and a trial's record from its
seeds' results."""

from __future__ import annotations

from pathlib import Path
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


def _result(cfg: TrainConfig, model: str, error: Exception | None = None, **metrics: float) -> Any:
    from dgkd.train import TrainResult

    return TrainResult(config=cfg, metrics=dict(metrics), model=model, error=error)


# A trial's record from its seeds' results (what trials.csv and the pruner see). The results of
# a batch interleave its trials' members; ``owner`` says whose each one is.


def test_a_trial_with_a_diverged_seed_fails_naming_the_seed_and_its_epoch(
    tiny: TrainConfig,
) -> None:
    from dgkd.loop import DivergedError
    from dgkd.search.trial import _outcome

    diverged = DivergedError(7, 3, float("nan"))
    results = [
        _result(tiny, "m4", val_acc=0.5),
        _result(tiny, "other", val_acc=0.9),  # another trial's member
        _result(tiny, "m5", error=diverged),
    ]
    out = _outcome("val_acc", (4, 5), results, owner=[0, 1, 0], job=0)
    assert out == TrialOutcome(
        TrialState.FAIL,
        None,
        fail_reason=f"diverged: {diverged} (seed 5)",
        fail_epoch=7,
        seeds=(4, 5),
    )


def test_a_seeds_other_error_is_the_trials_outcome(tiny: TrainConfig) -> None:
    from dgkd.search.trial import _outcome

    crash = ValueError("boom")
    results = [_result(tiny, "m0", val_acc=0.5), _result(tiny, "m1", error=crash)]
    assert _outcome("val_acc", (0, 1), results, owner=[0, 0], job=0) is crash


def test_a_complete_trial_is_the_seed_mean_with_every_seeds_metrics_and_student(
    tiny: TrainConfig,
) -> None:
    from dgkd.search.trial import _outcome

    results = [
        _result(tiny, "other", val_acc=0.1, test_acc=0.1),
        _result(tiny, "m2", val_acc=0.5, test_acc=0.75, nc1=2.0),  # nc1 not on every seed
        _result(tiny, "m3", val_acc=0.75, test_acc=0.5),
    ]
    out = _outcome("val_acc", (2, 3), results, owner=[1, 0, 0], job=0)
    assert out == TrialOutcome(
        TrialState.COMPLETE,
        0.625,
        {"val_acc": 0.625, "test_acc": 0.625},
        model="m2",  # the first seed's
        seeds=(2, 3),
        seed_metrics=[
            {"val_acc": 0.5, "test_acc": 0.75, "nc1": 2.0},
            {"val_acc": 0.75, "test_acc": 0.5},
        ],
        models=("m2", "m3"),
    )


def test_a_trial_without_a_finite_value_fails_saying_what_the_metric_was(
    tiny: TrainConfig,
) -> None:
    from dgkd.search.trial import _outcome

    results = [_result(tiny, "m0", test_acc=0.5), _result(tiny, "m1", test_acc=0.75)]
    out = _outcome("val_acc", (0, 1), results, owner=[0, 0], job=0)
    assert out == TrialOutcome(
        TrialState.FAIL,
        None,
        {"test_acc": 0.625},
        fail_reason="val_acc is None",
        seeds=(0, 1),
        seed_metrics=[{"test_acc": 0.5}, {"test_acc": 0.75}],
    )
    results = [_result(tiny, "m0", val_acc=0.5), _result(tiny, "m1", val_acc=float("nan"))]
    out = _outcome("val_acc", (0, 1), results, owner=[0, 0], job=0)
    assert isinstance(out, TrialOutcome)
    assert (out.state, out.value, out.fail_reason) == (TrialState.FAIL, None, "val_acc is nan")


class _FakeMlflow:
    """``dgkd.tracking.mlflow_run`` without MLflow (the real store: test_tracking.py): what each
    trial's run was opened with, logged and ended with."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, uri: str, *, experiment: str, trial: Any, config: TrainConfig) -> Any:
        import contextlib

        calls = self.calls

        class Run:
            def log_epoch(self, epoch: int, row: dict[str, float]) -> None:
                calls.append((trial, "epoch", epoch))

            def end(self, state: str, metrics: dict[str, float]) -> None:
                calls.append((trial, "end", state, dict(metrics)))

        @contextlib.contextmanager
        def run() -> Any:
            calls.append((trial, "start", uri, experiment, config.epsilon))
            yield Run()

        return run()


def test_a_trial_keeps_its_state_where_asked_and_logs_to_its_tracking(
    tiny: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dgkd.tracking
    from dgkd.search.trial import TrialTracking

    fake = _FakeMlflow()
    monkeypatch.setattr(dgkd.tracking, "mlflow_run", fake)
    cfg = tiny.replace(epochs=2, checkpoint_every=1, epsilon=3.0)
    track = TrialTracking(uri="file:///nowhere", study="smoke", trial=3)
    out = train_trial(cfg, metric="val_acc", on_epoch=lambda *a: None, seeds=(0,),
                      track=track, checkpoint=tmp_path)  # fmt: skip
    assert fake.calls == [
        (3, "start", "file:///nowhere", "smoke", 3.0),
        (3, "epoch", 1),
        (3, "epoch", 2),
        (3, "end", "COMPLETE", out.metrics),
    ]
    assert list(tmp_path.iterdir())  # the trial's state, for a re-run to resume


def test_each_tracked_trial_of_a_batch_ends_its_own_run_pruned_or_complete(
    tiny: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dgkd.tracking
    from dgkd.search.trial import TrialTracking

    def prune(epoch: int, row: dict[str, float], last: bool) -> None:
        raise _Pruned(f"pruned at {epoch}")

    fake = _FakeMlflow()
    monkeypatch.setattr(dgkd.tracking, "mlflow_run", fake)
    cfg = tiny.replace(epochs=2)
    jobs = [
        TrialJob(cfg.replace(epsilon=1.0), lambda *a: None, seeds=(0,)),  # not tracked
        TrialJob(cfg.replace(epsilon=2.0), prune, (0,), TrialTracking("u", "smoke", 1)),
        TrialJob(cfg.replace(epsilon=3.0), lambda *a: None, (0,), TrialTracking("u", "smoke", 2)),
    ]
    outcomes = train_trials(jobs, metric="val_acc")
    assert isinstance(outcomes[1], _Pruned) and isinstance(outcomes[2], TrialOutcome)
    assert [c for c in fake.calls if c[0] == 1] == [
        (1, "start", "u", "smoke", 2.0),
        (1, "epoch", 1),
        (1, "end", "_Pruned", {}),
    ]
    assert [c for c in fake.calls if c[0] == 2] == [
        (2, "start", "u", "smoke", 3.0),
        (2, "epoch", 1),
        (2, "epoch", 2),
        (2, "end", "COMPLETE", outcomes[2].metrics),
    ]


def test_a_diverged_teacher_fails_every_trial_of_the_batch(
    tiny: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dgkd.tracking
    import dgkd.train
    from dgkd.loop import DivergedError
    from dgkd.search.trial import TrialTracking

    diverged = DivergedError(3, 5, float("inf"))

    def teacher_diverges(*args: Any, **kwargs: Any) -> Any:
        raise diverged

    fake = _FakeMlflow()
    monkeypatch.setattr(dgkd.tracking, "mlflow_run", fake)
    monkeypatch.setattr(dgkd.train, "train_population", teacher_diverges)
    jobs = [
        TrialJob(tiny, lambda *a: None, seeds=(0,)),
        TrialJob(tiny, lambda *a: None, (1, 2), TrialTracking("u", "smoke", 7)),
    ]
    failed = TrialOutcome(TrialState.FAIL, None, fail_reason=f"diverged: {diverged}", fail_epoch=3)
    assert train_trials(jobs, metric="val_acc") == [failed, failed]
    assert fake.calls[-1] == (7, "end", TrialState.FAIL.value, {})
