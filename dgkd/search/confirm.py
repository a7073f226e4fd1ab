"""The confirm stage: retrain a search's top configs and its baseline on fresh, paired seeds,
under several teachers.

A search ranks configs under one teacher; a verdict about them must hold across teachers, so the
stage runs its seeds under each of the study's ``[confirm] teachers`` teacher seeds (the base's
``teacher_seed`` onwards; the first is the search's) and judges with teachers as a random
factor. Rows go to ``confirm.csv`` as each config's populations finish, so a killed confirm stage
resumes where it stopped; the comparison is :func:`dgkd.search.verdict.judge`.
"""

from __future__ import annotations

import csv
import dataclasses
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
from dgkd.search.verdict import Round, Verdict, judge, verdict_markdown
from dgkd.sequential import obrien_fleming_levels

if TYPE_CHECKING:
    from dgkd.study import Study

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
_KEY_COLUMNS = ("config", "trial", "params", "teacher_seed", "seed", "error")

# train_population, or anything returning per config an object with ``metrics`` and ``error``
# (a dgkd.parallel.PopulationPool spreads the populations over processes).
Trainer = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass(frozen=True)
class ConfirmPlan:
    """What the confirm stage trains: named param sets, the baseline's name, the seeds."""

    configs: dict[str, dict[str, Any]]  # name -> the searched params
    trials: dict[str, int | None]  # name -> its trial number in the search
    baseline: str | None
    winner: str
    winner_search_value: float
    seeds: tuple[int, ...]
    teachers: int = 1  # teacher seeds: the base config's teacher_seed and the next teachers - 1
    round: int = 0  # fresh seeds added per round (a look of the sequential design); 0 = all

    @property
    def looks(self) -> tuple[int, ...]:
        """How many of :attr:`seeds` each round has trained: ``(5, 10)`` for 10 in rounds of 5."""
        n = len(self.seeds)
        step = self.round if 0 < self.round < n else n
        return tuple(min(n, k) for k in range(step, n + step, step))


def confirm_seeds(search_seeds: Sequence[int], n: int) -> tuple[int, ...]:
    """``n`` seeds disjoint from every seed the search trained."""
    start = max(FIRST_CONFIRM_SEED, max(search_seeds, default=-1) + 1)
    return tuple(range(start, start + n))


def plan_confirm(
    study: Study,
    records: Sequence[TrialRecord],
    *,
    top: int,
    n_seeds: int,
    search_seeds: Sequence[int],
    teachers: int | None = None,
    round: int | None = None,
) -> ConfirmPlan | None:
    """The top ``top`` COMPLETE configs by the study's metric, and the study's baseline (its
    first enqueued point), to retrain on ``n_seeds`` fresh seeds; None when no trial completed
    or ``top`` or ``n_seeds`` is 0. ``teachers`` and ``round`` default to the study's
    ``[confirm]`` values."""
    done = completed(records)
    if not done or top < 1 or n_seeds < 1:
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
        seeds=confirm_seeds(search_seeds, n_seeds),
        teachers=study.confirm_teachers if teachers is None else teachers,
        round=study.confirm_round if round is None else round,
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
    """Train every planned config on the plan's seeds under each of its teachers, in rounds, and
    judge after each round; write ``confirm.csv`` after each round's runs, then ``verdict.md``.

    A round adds ``plan.round`` fresh seeds to every config (one trainer call for all of them, a
    population per teacher) and is a look of an O'Brien-Fleming group-sequential design
    (:func:`dgkd.sequential.obrien_fleming_levels`): "better" and "worse" on the objective need the
    Holm-corrected p below that look's nominal level, so looking after every round keeps the
    rate of a false "better" at 5%. The stage stops at the first round where every top config's
    verdict on the objective is decisive (better, worse or equivalent), or when the seeds run
    out. Rows already in ``confirm.csv`` for the same config, params, teacher and seed are kept,
    so a killed stage resumes (and takes the same decisions again); rows of a config whose
    params changed since (the study's baseline point, its first ``enqueue``) are retrained, and
    one line says so.

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
    bases = {
        name: study.config(params, dict(overrides or {})) for name, params in plan.configs.items()
    }
    first = next(iter(bases.values())).teacher_seed
    teachers = tuple(range(first, first + plan.teachers))
    kept: dict[tuple[str, int, int], dict[str, Any]] = {}
    stale = 0
    moved: dict[str, int] = {}  # a planned config whose rows were trained at other params
    for old in _read(path):
        name, seed, under = old["config"], int(old["seed"]), _int(old.get("teacher_seed"))
        same = name in plan.configs and same_params(json.loads(old["params"]), plan.configs[name])
        if same and seed in plan.seeds and under in teachers:
            trial = plan.trials.get(name)
            kept[(name, under, seed)] = {**old, "trial": "" if trial is None else trial}
        elif name in plan.configs and not same:
            moved[name] = moved.get(name, 0) + 1
        stale += under is None
    if stale:
        log(f"confirm: {stale} row(s) of {path} name no teacher (an older release); retraining")
    if moved:
        log(
            "confirm: the plan changed since "
            + f"{path} was written ("
            + ", ".join(
                f"{n} is now {_label(plan.configs[n])}: {k} row(s)" for n, k in moved.items()
            )
            + "); retraining those"
        )
    order = {name: i for i, name in enumerate(plan.configs)}
    levels = obrien_fleming_levels(len(plan.looks))
    rounds: list[Round] = []
    for look, (upto, level) in enumerate(zip(plan.looks, levels, strict=True), start=1):
        seeds = plan.seeds[:upto]
        # Every config's missing runs of this round in one call: configs that differ only in
        # loss settings share a population per teacher, and the populations spread over the
        # trainer's workers together.
        pending = [
            (name, t, s)
            for name in plan.configs
            for t in teachers
            for s in seeds
            if (name, t, s) not in kept
        ]
        if pending:
            log(f"confirm: {_count(pending, teachers)}" + _of(look, plan.looks))
            cfgs = [bases[name].replace(teacher_seed=t, seed=s) for name, t, s in pending]
            for (name, teacher, seed), res in zip(pending, trainer(cfgs), strict=True):
                kept[(name, teacher, seed)] = {
                    "config": name,
                    "trial": "" if plan.trials.get(name) is None else plan.trials[name],
                    "params": json.dumps(plan.configs[name], sort_keys=True),
                    "teacher_seed": teacher,
                    "seed": seed,
                    "error": "" if res.error is None else str(res.error).splitlines()[0],
                    **{k: repr(float(v)) for k, v in res.metrics.items()},
                }
            _write(path, [kept[k] for k in sorted(kept, key=lambda k: (order[k[0]], *k[1:]))])
        verdict = judge(
            _values(plan, kept, teachers, seeds),
            baseline=plan.baseline,
            winner=plan.winner,
            winner_search_value=plan.winner_search_value,
            metric=study.metric,
            seeds=seeds,
            teachers=teachers,
            alpha=level,
        )
        rounds.append(Round.of(verdict, look, level))
        if rounds[-1].decided:
            break
    verdict = dataclasses.replace(verdict, rounds=tuple(rounds), looks=len(plan.looks))
    labels = {n: _label(p) for n, p in plan.configs.items()}
    atomic_write_text(out_dir / VERDICT_FILE, verdict_markdown(verdict, labels=labels))
    return verdict


def _values(
    plan: ConfirmPlan,
    kept: Mapping[tuple[str, int, int], Mapping[str, Any]],
    teachers: Sequence[int],
    seeds: Sequence[int],
) -> dict[str, dict[str, list[list[float]]]]:
    """``values[config][metric]``: per teacher, the metric on each of ``seeds``."""
    values: dict[str, dict[str, list[list[float]]]] = {}
    for name in plan.configs:
        rows = [[kept[(name, t, s)] for s in seeds] for t in teachers]
        keys = {k for group in rows for r in group for k in r} - set(_KEY_COLUMNS)
        values[name] = {k: [[_float(r.get(k)) for r in group] for group in rows] for k in keys}
    return values


def _of(look: int, looks: Sequence[int]) -> str:
    return f" (round {look} of at most {len(looks)})" if len(looks) > 1 else ""


def _count(pending: Sequence[tuple[str, int, int]], teachers: Sequence[int]) -> str:
    """``2 configs on 10 fresh seed(s)`` or ``2 configs x 3 teachers x 5 fresh seeds`` (or a
    count of runs on resume)."""
    configs, seeds = {c for c, _, _ in pending}, {s for _, _, s in pending}
    head = f"{len(configs)} config(s)"
    if len(pending) != len(configs) * len(teachers) * len(seeds):
        return f"{head}, {len(pending)} (teacher, fresh seed) runs"
    if len(teachers) == 1:
        return f"{head} on {len(seeds)} fresh seed(s)"
    return f"{head} x {len(teachers)} teachers x {len(seeds)} fresh seeds"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _label(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
