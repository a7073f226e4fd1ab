"""How noisy is one trial's value? One config trained as a trial on several disjoint seed sets.

Usage: ``python scripts/trial_noise.py [--study eps_sweep] [--sets 5] [--first-seed 20000]
[--set KEY=VALUE ...] [--out runs/trial_noise]``.

The config is the study's baseline (its first enqueued point, e.g. epsilon = 0) with the study's
seeds per trial K; set s trains seeds ``first + s*K .. first + s*K + K - 1`` (fresh seeds, disjoint
from the search's and the confirm stage's). All sets train as one population, exactly as the
search trains a trial. The spread of the sets' values is what two trials of the same config would
differ by: the bar any difference between trials must clear. Writes ``<out>/<study>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from dgkd.config import ConfigError, parse_overrides
from dgkd.io import atomic_write_text
from dgkd.search.trial import TrialJob, TrialOutcome, train_trials
from dgkd.study import SpecError, load_study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="eps_sweep")
    p.add_argument("--sets", type=int, default=5, help="disjoint seed sets (default 5)")
    p.add_argument("--first-seed", type=int, default=20000)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/trial_noise")
    args = p.parse_args(argv)
    if args.sets < 2:
        p.error("--sets must be at least 2 to measure a spread")
    try:
        study = load_study(args.study)
        overrides = parse_overrides(args.overrides)
        params = dict(study.enqueue[0]) if study.enqueue else {}
        cfg = study.config(params, overrides)
    except (ConfigError, SpecError) as exc:
        p.error(str(exc))
    k = study.n_seeds
    first = args.first_seed
    sets = [tuple(range(first + s * k, first + (s + 1) * k)) for s in range(args.sets)]
    jobs = [TrialJob(cfg, lambda *a: None, seeds=seeds) for seeds in sets]
    outcomes = train_trials(jobs, metric=study.metric)
    values, per_seed = [], []
    for seeds, outcome in zip(sets, outcomes, strict=True):
        if not isinstance(outcome, TrialOutcome) or outcome.value is None:
            print(f"trial_noise: seeds {seeds[0]}..{seeds[-1]} failed: {outcome}", file=sys.stderr)
            return 1
        values.append(outcome.value)
        per_seed += [m[study.metric] for m in outcome.seed_metrics]
    result = {
        "study": study.name,
        "params": params,
        "overrides": overrides,
        "metric": study.metric,
        "seeds_per_trial": k,
        "sets": [list(s) for s in sets],
        "values": values,
        "std_of_trial_value": statistics.stdev(values),
        "std_of_one_seed": statistics.stdev(per_seed),
        "expected_std_of_trial_value": statistics.stdev(per_seed) / k**0.5,
    }
    out = Path(args.out) / f"{study.name}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(
        f"{study.name} {params or ''}: {study.metric} of a trial of {k} seeds on {args.sets} "
        "disjoint seed sets: " + ", ".join(f"{v:.4f}" for v in values)
    )
    print(
        f"std of the trial's value {100 * result['std_of_trial_value']:.2f} points "
        f"(one seed: {100 * result['std_of_one_seed']:.2f}; expected for the mean of {k}: "
        f"{100 * result['expected_std_of_trial_value']:.2f}); written to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
