"""Trials run elsewhere (Ray Tune) recorded in an Optuna storage, so that ``optuna trials``,
optuna-dashboard and ``dgkd-ablate --from-study`` read every search the same way.

The study is the one the Optuna backend would use (``--storage``, else the journal
``<out>/<study>/journal.log``), with the same signature attributes, plus ``dgkd_backend``. Trials
are added in number order once finished, with their final metrics as user attributes and the
metric by epoch as intermediate values, so trial ``n`` of ``trials.csv`` is trial ``n`` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from dgkd.io import json_metrics
from dgkd.search.common import Log
from dgkd.search.inmemory import quiet_optuna
from dgkd.search.optuna.records import SEED_METRICS_ATTR, TRIAL_ATTRS, seed_attrs
from dgkd.search.optuna.storage import create_or_load, open_for_search
from dgkd.search.records import FINAL_STATES, SearchOptions, TrialRecord, TrialState

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["StorageMirror", "frozen_trial"]

_STATES = {
    TrialState.COMPLETE: OptunaState.COMPLETE,
    TrialState.PRUNED: OptunaState.PRUNED,
    TrialState.FAIL: OptunaState.FAIL,
}


def frozen_trial(
    record: TrialRecord, distributions: dict[str, Any], metric: str = ""
) -> FrozenTrial:
    """A finished record as an Optuna trial (number and id are assigned when it is added);
    ``metric``: the study's, whose value per seed is a user attribute of its own."""
    attrs: dict[str, Any] = {
        k: v for k, v in json_metrics(record.metrics).items() if k not in TRIAL_ATTRS
    }
    if record.seeds:
        attrs["seeds"] = list(record.seeds)
    system: dict[str, Any] = {}
    if record.seed_metrics:
        system[SEED_METRICS_ATTR] = [json_metrics(m) for m in record.seed_metrics]
        if metric:
            attrs.update(seed_attrs(record.seeds, record.seed_metrics, metric))
    if record.state == TrialState.PRUNED and record.pruned_epoch is not None:
        attrs["pruned_epoch"] = record.pruned_epoch
    if record.state == TrialState.FAIL:
        attrs["fail_reason"] = record.fail_reason
        if record.fail_epoch is not None:
            attrs["fail_epoch"] = record.fail_epoch
    fits = all(n in record.params for n in distributions)
    params = {n: record.params[n] for n in distributions} if fits else {}
    end = datetime.now()
    return FrozenTrial(
        number=record.number,
        trial_id=record.number,
        state=_STATES[record.state],
        value=record.value if record.state == TrialState.COMPLETE else None,
        values=None,
        datetime_start=end - timedelta(seconds=record.duration_s or 0.0),
        datetime_complete=end,
        params=params,
        distributions=distributions if fits else {},
        user_attrs=attrs,
        system_attrs=system,
        intermediate_values=dict(record.curve),
    )


class StorageMirror:
    """Adds a search's finished records to its Optuna storage, in number order.

    Args:
        study: The study.
        opts: Its options (``storage``, ``out_dir``, ``fresh``).
        log: Where notices go (a study moved aside with ``--fresh``).
    """

    def __init__(self, study: Study, opts: SearchOptions, log: Log) -> None:
        with quiet_optuna():
            storage = open_for_search(study, opts, log)
            self.ostudy = create_or_load(study, opts, storage, enqueue=False)
        self.distributions = study.space.distributions()
        self.metric = study.metric

    def update(self, records: Sequence[TrialRecord]) -> int:
        """Add the records not yet stored, up to the first one still unfinished; how many."""
        with quiet_optuna():
            n = len(self.ostudy.get_trials(deepcopy=False))
            added = 0
            for r in sorted(records, key=lambda r: r.number):
                if r.number < n:
                    continue
                if r.number != n or r.state not in FINAL_STATES:
                    break
                try:
                    self.ostudy.add_trial(frozen_trial(r, self.distributions, self.metric))
                except ValueError:  # a value outside today's space: keep the number anyway
                    bare = TrialRecord(r.number, r.state, r.value, {}, metrics=r.metrics)
                    self.ostudy.add_trial(frozen_trial(bare, {}))
                n += 1
                added += 1
        return added
