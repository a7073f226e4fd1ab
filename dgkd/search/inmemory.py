"""Records as an in-memory Optuna study, for Optuna's importances and plots; Optuna kept quiet.

Both backends' records go through here, so a Ray search gets the same importances and figures
as an Optuna one. Optuna is imported on first use.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from dgkd.search.records import TrialRecord, TrialState

if TYPE_CHECKING:
    import optuna

    from dgkd.study import Study

__all__ = ["memory_study", "quiet_optuna"]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's log lines ("A new study created in memory ...") and its experimental-feature
    warnings off for the block: the search prints its own lines."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def memory_study(study: Study, records: Sequence[TrialRecord]) -> optuna.Study:
    """The finished records (COMPLETE, PRUNED, FAIL) whose parameters fit today's space, with
    their learning curves as intermediate values, in a new in-memory study."""
    import optuna

    dists = study.space.distributions()
    states = {
        TrialState.COMPLETE: optuna.trial.TrialState.COMPLETE,
        TrialState.PRUNED: optuna.trial.TrialState.PRUNED,
        TrialState.FAIL: optuna.trial.TrialState.FAIL,
    }
    with quiet_optuna():
        mem = optuna.create_study(direction=study.direction)  # type: ignore[arg-type]
        trials = []
        for r in sorted(records, key=lambda r: r.number):
            if r.state not in states or not all(n in r.params for n in dists):
                continue
            try:  # a value outside the space (an edited space file) is left out, not fatal
                trials.append(
                    optuna.trial.create_trial(
                        state=states[r.state],
                        value=r.value if r.state == TrialState.COMPLETE else None,
                        params={n: r.params[n] for n in dists},
                        distributions=dists,
                        intermediate_values=dict(r.curve),
                    )
                )
            except ValueError:
                continue
        mem.add_trials(trials)
    return mem
