"""How Tune picks and stops trials: Optuna's sampler inside Tune, and ASHA for the pruner.

Search. ``tune.Tuner`` with ``OptunaSearch`` over :meth:`Space.distributions` (the study's
sampler, seeded; enqueued points first) and an ASHA scheduler for the study's pruner: ``median``
is ASHA with reduction factor 2 (a trial below the median at a rung stops) from a quarter of the
epochs, ``hyperband`` ASHA with reduction factor 3 from an eighth, ``none`` no scheduler. Actors
are reused, so a worker process loads the data and the teacher once. Tune's CSV and JSON logs
of each trial are kept, not its TensorBoard files (whose writer would import torch in the
driver), and each trial keeps its last two checkpoints (fewer forced experiment snapshots).

A trial stopped by the scheduler is PRUNED in the Optuna study the searcher learns from too
(Ray's own ``OptunaSearch`` would tell it COMPLETE with a partial value).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dgkd.search.common import is_finite_number
from dgkd.search.ray.results import EPOCH_KEY, Done, classify
from dgkd.search.records import FINAL_STATES, SearchOptions, TrialState
from dgkd.search.sampling import make_sampler

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["KEEP_CHECKPOINTS", "MAX_FAILURES", "new_tuner", "quiet_tune", "ray_classes", "set_live"]

MAX_FAILURES = 1  # re-runs of a trial whose worker crashed (a lost node, not a divergence)
KEEP_CHECKPOINTS = 2  # per trial: the latest state and the one before (see new_tuner)

_CLASSES = ("_Searcher", "_Progress", "_NoTensorBoard")  # made by ray_classes()
LiveHook = Callable[[Sequence[Any], dict[str, str]], None]  # (Tune trials, {id: ended status})
_LIVE: LiveHook | None = None  # the running search's hook


def set_live(hook: LiveHook | None) -> None:
    """Send the running search's trials to ``hook`` as they start and end (None: stop)."""
    global _LIVE
    _LIVE = hook


def ray_classes() -> dict[str, type]:
    """``_Searcher``, ``_Progress`` and ``_NoTensorBoard``, defined on first use so that
    importing this module stays light; module attributes, so Tune's pickles find them."""
    if "_Searcher" in globals():
        return {name: globals()[name] for name in _CLASSES}
    import optuna
    from optuna.trial import TrialState as OptunaState
    from ray.tune import Callback
    from ray.tune.logger import LoggerCallback, TBXLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    to_optuna = {TrialState.COMPLETE: OptunaState.COMPLETE, TrialState.PRUNED: OptunaState.PRUNED}

    class _Searcher(OptunaSearch):
        """OptunaSearch that tells Optuna PRUNED/FAIL instead of COMPLETE with a partial value,
        reports intermediate values by epoch, and can start from earlier runs' trials."""

        _space: dict[str, Any]  # OptunaSearch's space, once converted to distributions

        def __init__(self, *, prior: Sequence[Done] = (), **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._reported: dict[str, set[int]] = {}
            for done in prior:
                self._add_prior(done)

        def _study(self) -> optuna.Study:
            """The Optuna study OptunaSearch created (its class body types it as None)."""
            return cast("optuna.Study", self._ot_study)

        def _add_prior(self, done: Done) -> None:
            r = done.record
            if r.state not in FINAL_STATES:
                return
            state = to_optuna.get(r.state, OptunaState.FAIL)
            inter = {}
            if r.state == TrialState.PRUNED and r.pruned_epoch and done.last_value is not None:
                inter = {int(r.pruned_epoch): done.last_value}
            try:
                trial = optuna.trial.create_trial(
                    state=state,
                    value=r.value if state == OptunaState.COMPLETE else None,
                    params=dict(r.params),
                    distributions=self._space,
                    intermediate_values=inter,
                )
                self._study().add_trial(trial)
            except ValueError:  # outside today's space (the space file changed): skip
                pass

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            value, step = result.get(self.metric), result.get(EPOCH_KEY)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            if is_finite_number(value) and is_finite_number(step):
                epoch, seen = int(step), self._reported.setdefault(trial_id, set())
                if epoch not in seen:  # a trial re-run after a crash reports its epochs again
                    seen.add(epoch)
                    ot_trial.report(float(value), epoch)

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            result = result or {}
            metric = str(self.metric)
            state, info = classify(result, "ERROR" if error else "TERMINATED", None, metric)
            if state not in FINAL_STATES:
                return  # cut off by an interruption: it runs again when the search resumes
            if state == TrialState.PRUNED:
                self.on_trial_result(trial_id, result)  # the epoch it was stopped at
            self._study().tell(
                ot_trial,
                info if state == TrialState.COMPLETE else None,
                state=to_optuna.get(state, OptunaState.FAIL),
                skip_if_finished=True,
            )
            self._completed_trials.add(trial_id)

    class _Progress(Callback):
        """Feeds the running search's reporter; holds no state, so it pickles with the run."""

        def _notify(self, trials: Sequence[Any], ended: dict[str, str] | None = None) -> None:
            if _LIVE is not None:
                _LIVE(trials, ended or {})

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._notify(trials)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._notify(trials, {trial.trial_id: "TERMINATED"})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._notify(trials, {trial.trial_id: "ERROR"})

    class _NoTensorBoard(TBXLoggerCallback):
        """Stands in for the TensorBoard logger Tune adds to every run: nothing here reads its
        files, and its tensorboardX imports torch, seconds of the driver's time at each start
        while the trials' workers start on the same cores. Tune's CSV and JSON logs stay."""

        def __init__(self) -> None:  # not TBXLoggerCallback's: that imports tensorboardX
            pass

        log_trial_start = LoggerCallback.log_trial_start
        log_trial_result = LoggerCallback.log_trial_result
        log_trial_end = LoggerCallback.log_trial_end

    classes: dict[str, type] = {
        "_Searcher": _Searcher,
        "_Progress": _Progress,
        "_NoTensorBoard": _NoTensorBoard,
    }
    for cls in classes.values():
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    return classes


def __getattr__(name: str) -> Any:  # PEP 562: unpickling a restored run finds the classes
    if name in _CLASSES:
        return ray_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scheduler(study: Study, epochs: int) -> Any:
    """The study's pruner as a Tune scheduler (see the module docstring)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.pruner == "none" or epochs < 2:
        return FIFOScheduler()
    rf, grace = (2, max(1, epochs // 4)) if study.pruner == "median" else (3, max(1, epochs // 8))
    return ASHAScheduler(
        time_attr=EPOCH_KEY,
        max_t=epochs,
        grace_period=min(grace, epochs),
        reduction_factor=rf,
        brackets=1,
    )


def _same(point: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether ``params`` already evaluated the enqueued ``point``."""
    return all(k in params and params[k] == v for k, v in point.items())


def new_tuner(
    study: Study,
    opts: SearchOptions,
    trainable: Any,
    path: Path,
    *,
    samples: int,
    epochs: int,
    slots: int,
    prior: Sequence[Done],
    index: int,
) -> Any:
    """A fresh Tune run of ``samples`` trials whose searcher knows every earlier trial.

    Args:
        study: The study.
        opts: Its options.
        trainable: The trial function, with its resources.
        path: The run's directory (``<out>/<study>/ray/<run name>``).
        samples: Trials to run.
        epochs: Epochs per trial (the scheduler's horizon).
        slots: Trials the cluster runs at once.
        prior: Every finished trial of the earlier runs.
        index: The run's index (0 for the first): a later run's sampler gets its own seed.
    """
    from ray import tune

    classes = ray_classes()
    mode = "max" if study.direction == "maximize" else "min"
    seen = [r.record.params for r in prior]
    points = [dict(p) for p in study.enqueue if not any(_same(p, q) for q in seen)]
    searcher = classes["_Searcher"](
        space=study.space.distributions(),
        metric=study.metric,
        mode=mode,
        # A later run gets its own seed: a random sampler must not replay the first run's draws.
        sampler=make_sampler(study, seed=study.seed + index),
        points_to_evaluate=points or None,
        prior=prior,
    )
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=study.metric,
            mode=mode,
            search_alg=searcher,
            scheduler=_scheduler(study, epochs),
            num_samples=samples,
            max_concurrent_trials=max(1, min(slots, samples)),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # A trial's latest state is all a retry needs (and its last holds the student);
            # older ones would pile up, megabytes each for a CIFAR ResNet. Tune snapshots the
            # whole experiment on the spot each time a trial has saved num_to_keep checkpoints
            # since the last snapshot (a restore must not look for a deleted one): at 1 that is
            # at every trial's end, at 2 every other state saved, and never for a trial that
            # saves only its student (checkpoint_every >= epochs).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            callbacks=[classes["_Progress"](), classes["_NoTensorBoard"]()],
            verbose=0,
        ),
    )


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """Tune's classic reporter at verbosity 0 prints nothing (the newer one prints a header
    even then); Optuna's per-study log lines off. The reporter shows progress instead."""
    import optuna

    old_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    old_verbosity = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old_verbosity)
        if old_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old_env
