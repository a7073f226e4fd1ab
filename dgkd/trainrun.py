"""What ``dgkd-train`` does once its options are parsed: pick the run (or a search trial's
seeds), train it, print its metrics, and log it to MLflow when asked.

``--config best.json`` reruns the search's best trial as the search trained it: every seed of
the trial as one population, the value the mean of the study's metric over them, so the table
shows what ``best.json`` holds (its ``value`` and ``seed_metrics``). ``--seed N`` (or
``--set seed=N``) trains that seed alone.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dgkd.cliparts import EXIT_OK
from dgkd.config import TrainConfig, check_method
from dgkd.io import json_metrics

if TYPE_CHECKING:
    from dgkd.train import TrainResult

__all__ = ["rerun"]


def _saved(path: str | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration in ``path`` (defaults without one) and the file's whole object."""
    from dgkd.runfiles import load_config, read_config_file

    if path is None:
        return TrainConfig(), {}
    return load_config(path), read_config_file(path)


def rerun(
    config: str | None,
    changes: Mapping[str, Any],
    *,
    out: str | None,
    as_json: bool,
    mlflow: str | None,
    progress: bool,
) -> int:
    """Train the run ``config`` and ``changes`` describe, print it, log it; the exit code."""
    from dgkd.runfiles import mean_metrics, train_seeds_into

    base, saved = _saved(config)
    cfg = base.replace(**changes)
    seeds = [int(s) for s in saved.get("seeds") or ()]
    if "seed" in changes or len(seeds) < 2:
        seeds = [cfg.seed]
    cfgs = [cfg.replace(seed=s) for s in seeds]

    def log(line: str) -> None:
        print(f"dgkd-train: {line}", file=sys.stderr)

    results = train_seeds_into(out, cfgs, progress=progress, log=log)
    if mlflow is not None:
        _track(mlflow, results)
    metric = str(saved.get("metric") or "val_acc")
    if len(results) == 1:
        result = results[0]
        if as_json:
            print(json.dumps({"config": cfg.to_dict(), "metrics": json_metrics(result.metrics)}))
        else:
            _print_table(result.config, {f"seed {result.config.seed}": result.metrics})
            _recorded(saved, metric, result)
        return EXIT_OK
    mean = mean_metrics([r.metrics for r in results])
    if as_json:
        print(json.dumps({
            "config": cfgs[0].to_dict(),
            "metric": metric,
            "value": json_metrics(mean).get(metric),
            "metrics": json_metrics(mean),
            "seeds": seeds,
            "seed_metrics": [json_metrics(r.metrics) for r in results],
        }))  # fmt: skip
        return EXIT_OK
    columns = {f"seed {r.config.seed}": r.metrics for r in results}
    _print_table(cfgs[0], {**columns, "mean": mean})
    line = f"{metric} {mean.get(metric, float('nan')):.4f}: the mean over seeds " + ", ".join(
        str(s) for s in seeds
    )
    if saved.get("value") is not None:
        line += f"; best.json: {float(saved['value']):.4f} (trial {saved.get('number')})"
    print(line)
    return EXIT_OK


def _recorded(saved: Mapping[str, Any], metric: str, result: TrainResult) -> None:
    """With a best.json: what the trial recorded for this seed, beside the rerun's."""
    seeds, per_seed = saved.get("seeds") or [], saved.get("seed_metrics") or []
    seed = result.config.seed
    if seed not in seeds or len(per_seed) != len(seeds):
        return
    recorded = per_seed[seeds.index(seed)].get(metric)
    if recorded is not None:
        print(
            f"{metric} {result.metrics.get(metric, float('nan')):.4f}; best.json: seed {seed} "
            f"of trial {saved.get('number')} {float(recorded):.4f}"
        )


def _print_table(cfg: TrainConfig, columns: Mapping[str, Mapping[str, float]]) -> None:
    """One row per metric, one column per seed (and their mean)."""
    from rich.console import Console
    from rich.table import Table

    seeds = [k.removeprefix("seed ") for k in columns if k.startswith("seed ")]
    caption = f"{cfg.dataset}, teacher {cfg.teacher}, seed{'s' * (len(seeds) > 1)} "
    caption += ", ".join(seeds)
    reads = check_method(cfg.method).reads  # the loss settings this method reads
    settings = [f"{k}={getattr(cfg, k):g}" for k in reads if not isinstance(getattr(cfg, k), str)]
    if settings:
        caption = " ".join(settings) + f"\n{caption}"
    table = Table(title=f"{cfg.method}: student {cfg.student}", caption=caption)
    table.add_column("metric")
    names = list(columns)
    for name in names:
        table.add_column("value" if len(names) == 1 else name, justify="right")
    keys: list[str] = []
    for metrics in columns.values():
        keys += [k for k in metrics if k not in keys]
    for key in keys:
        cells = []
        for metrics in columns.values():
            value = metrics.get(key)
            if value is None:
                cells.append("")
            else:
                cells.append(f"{value:.0f}" if key == "epochs" else f"{value:.4f}")
        table.add_row(key, *cells)
    console = Console()
    if not console.is_terminal:  # a pipe or file: the table's natural width, not 80 columns
        console.width = 10_000
    console.print(table)


def _track(uri: str, results: Sequence[TrainResult]) -> None:
    """Each seed's run to MLflow, in the experiment ``dgkd-train``."""
    from dgkd.tracking import log_finished

    for r in results:
        log_finished(
            uri,
            experiment="dgkd-train",
            name=f"seed-{r.config.seed}",
            params=r.config.to_dict(),
            history=r.history,
            metrics=r.metrics,
            state="COMPLETE",
            tags={"dgkd.command": "dgkd-train", "dgkd.seed": str(r.config.seed)},
        )
