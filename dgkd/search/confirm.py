"""The confirm stage: retrain a search's top configs and its baseline on fresh, paired seeds.

Rows go to ``confirm.csv`` as each config's population finishes, so a killed confirm stage
resumes where it stopped; the comparison is :func:`dgkd.search.verdict.judge`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.io import atomic_write_text
from dgkd.search.records import TrialRecord, completed
from dgkd.search.seeds import same_params
from dgkd.search.verdict import Verdict, judge, verdict_markdown

if TYPE_CHECKING:
    from dgkd.study import Study
    from dgkd.train import TrainResult

__all__ = [
    "CONFIRM_FILE",
    "FIRST_CONFIRM_SEED",
    "VERDICT_FILE",
    "ConfirmPlan",
    "confirm_seeds",
    "plan_confirm",
    "run_confirm",
]

CONFIRM_FILE = "confirm.csv"
VERDICT_FILE = "verdict.md"
# Confirm seeds start here (or after the search's last seed), far from the 0..K-1 a search and
# an ablation use, so they stay fresh when a study's seed count grows.
FIRST_CONFIRM_SEED = 10_000
BASELINE = "baseline"
_KEY_COLUMNS = ("config", "trial", "params", "seed", "error")

Trainer = Callable[[Sequence[Any]], "list[TrainResult]"]


@dataclass(frozen=True)
class ConfirmPlan:
    """What the confirm stage trains: named param sets, the baseline's name, the seeds."""

    configs: dict[str, dict[str, Any]]  # name -> the searched params
    trials: dict[str, int | None]  # name -> its trial number in the search
    baseline: str | None
    winner: str
    winner_search_value: float
    seeds: tuple[int, ...]


def confirm_seeds(search_seeds: Sequence[int], n: int) -> tuple[int, ...]:
    """``n`` seeds disjoint from every seed the search trained."""
    start = max(FIRST_CONFIRM_SEED, max(search_seeds, default=-1) + 1)
    return tuple(range(start, start + n))


def plan_confirm(
    study: Study,
    records: Sequence[TrialRecord],
    *,
    top: int,
    seeds: int,
    search_seeds: Sequence[int],
) -> ConfirmPlan | None:
    """The top ``top`` COMPLETE configs by the study's metric, and the study's baseline (its
    first enqueued point), or None when no trial completed or ``top`` or ``seeds`` is 0."""
    done = completed(records)
    if not done or top < 1 or seeds < 1:
        return None
    maximize = study.direction == "maximize"
    ranked = sorted(done, key=lambda r: -(r.value or 0.0) if maximize else (r.value or 0.0))
    base_params = dict(study.enqueue[0]) if study.enqueue else None
    configs: dict[str, dict[str, Any]] = {}
    trials: dict[str, int | None] = {}
    if base_params is not None:
        configs[BASELINE] = base_params
        match = next((r for r in done if same_params(r.params, base_params)), None)
        trials[BASELINE] = match.number if match else None
    for r in ranked:
        if len(configs) - (base_params is not None) >= top:
            break
        if base_params is not None and same_params(r.params, base_params):
            continue
        if any(same_params(r.params, p) for p in configs.values()):
            continue  # a repeated point (a grid or a re-run): one entry is enough
        name = f"trial {r.number}"
        configs[name], trials[name] = dict(r.params), r.number
    winner = ranked[0]
    winner_name = next((n for n, t in trials.items() if t == winner.number), BASELINE)
    return ConfirmPlan(
        configs=configs,
        trials=trials,
        baseline=BASELINE if base_params is not None else None,
        winner=winner_name,
        winner_search_value=float(winner.value or math.nan),
        seeds=confirm_seeds(search_seeds, seeds),
    )


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    metrics = sorted({k for r in rows for k in r} - set(_KEY_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*_KEY_COLUMNS, *metrics], extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_confirm(
    study: Study,
    plan: ConfirmPlan,
    out_dir: Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    trainer: Trainer | None = None,
    log: Callable[[str], None] = print,
) -> Verdict:
    """Train every planned config on the plan's seeds (one population per config), write
    ``confirm.csv`` after each, then ``verdict.md``; rows already in ``confirm.csv`` for the
    same config, params and seed are kept, so a killed stage resumes.

    Args:
        study: The searched study (its base config and overrides make each config).
        plan: From :func:`plan_confirm`.
        out_dir: The study's output directory.
        overrides: The search's ``--set`` changes.
        trainer: ``train_population`` (the default), replaceable in tests.
        log: Where progress lines go.
    """
    if trainer is None:
        from dgkd.train import train_population

        trainer = train_population
    path = out_dir / CONFIRM_FILE
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for old in _read(path):
        name, seed = old["config"], int(old["seed"])
        same = name in plan.configs and same_params(json.loads(old["params"]), plan.configs[name])
        if same and seed in plan.seeds:
            kept[(name, seed)] = old
    for name, params in plan.configs.items():
        pending = [s for s in plan.seeds if (name, s) not in kept]
        if not pending:
            continue
        log(f"confirm: {name} on {len(pending)} fresh seed(s)")
        base = study.config(params, dict(overrides or {}))
        results = trainer([base.replace(seed=s) for s in pending])
        for seed, res in zip(pending, results, strict=True):
            row: dict[str, Any] = {
                "config": name,
                "trial": "" if plan.trials.get(name) is None else plan.trials[name],
                "params": json.dumps(params, sort_keys=True),
                "seed": seed,
                "error": "" if res.error is None else str(res.error).splitlines()[0],
                **{k: repr(float(v)) for k, v in res.metrics.items()},
            }
            kept[(name, seed)] = row
        _write(
            path,
            [kept[k] for k in sorted(kept, key=lambda k: (list(plan.configs).index(k[0]), k[1]))],
        )
    values: dict[str, dict[str, list[float]]] = {}
    for name in plan.configs:
        rows = [kept[(name, s)] for s in plan.seeds]
        keys = {k for r in rows for k in r} - set(_KEY_COLUMNS)
        values[name] = {k: [_float(r.get(k)) for r in rows] for k in keys}
    verdict = judge(
        values,
        baseline=plan.baseline,
        winner=plan.winner,
        winner_search_value=plan.winner_search_value,
        metric=study.metric,
        seeds=plan.seeds,
    )
    labels = {n: _label(p) for n, p in plan.configs.items()}
    atomic_write_text(out_dir / VERDICT_FILE, verdict_markdown(verdict, labels=labels))
    return verdict


def _float(value: Any) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _label(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
