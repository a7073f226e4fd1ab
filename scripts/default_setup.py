"""Choose the default setup by a protocol that reads validation accuracy only.

Usage: ``python scripts/default_setup.py [--spec scripts/default_setup.toml] [--out DIR]``.
Every (setup, method settings, seed) run is one row of ``<out>/runs.csv``; rows already there
are kept, so a killed run resumes. ``<out>/summary.md`` ranks the setups.

Once the defaults are set, ``python scripts/default_setup.py --check runs/ablate/default`` reads
that ablation (``dgkd-ablate --variants all --teachers 3 --seeds 10``) and checks the bar on the
test split: ``kd`` and ``no_grad_term`` each above ``ce`` with a paired 95% CI excluding 0 (the
two-level CI over teachers, then seeds, when the ablation ran several teachers), and the std of
``full`` over its runs at most 1.5 points.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import sys
import tomllib
from pathlib import Path
from typing import Any

from dgkd.ablate.variants import VARIANTS
from dgkd.config import TrainConfig, coerce
from dgkd.io import atomic_write_text
from dgkd.nested import compare_grouped
from dgkd.stats import compare_paired

HERE = Path(__file__).parent
COLUMNS = ("setup", "method", "settings", "seed", "val_acc")


def _product(table: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(table)
    lists = [v if isinstance(v, list) else [v] for v in table.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]


def _label(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items()) or "-"


def _read(path: Path) -> dict[tuple[str, str, str, int], float]:
    if not path.exists():
        return {}
    with path.open() as f:
        rows = csv.DictReader(f)
        return {
            (r["setup"], r["method"], r["settings"], int(r["seed"])): float(r["val_acc"])
            for r in rows
        }


def _write(path: Path, done: dict[tuple[str, str, str, int], float]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for key, value in done.items():
        w.writerow([*key, f"{value:.6f}"])
    atomic_write_text(path, buf.getvalue())


MAX_FULL_STD = 1.5  # points of test accuracy


def check(ablation: Path) -> int:
    """The bar on the test split, from an ablation's ``runs.csv``: 0 when it is met."""
    import pandas as pd

    runs = pd.read_csv(ablation / "runs.csv")
    if "teacher_seed" not in runs.columns:  # an ablation from before teachers were a factor
        runs["teacher_seed"] = 0
    acc = runs.pivot(index=["teacher_seed", "seed"], columns="variant", values="test_acc") * 100
    teachers = sorted(acc.index.get_level_values(0).unique())
    seeds = sorted(acc.index.get_level_values(1).unique())

    def groups(variant: str) -> list[list[float]]:
        return [acc.loc[t, variant].reindex(seeds).tolist() for t in teachers]

    several = len(teachers) > 1
    design = (
        f"{len(teachers)} teachers x {len(seeds)} paired seeds"
        if several
        else (f"{len(seeds)} paired seeds")
    )
    test = "t-test on teacher means" if several else "paired t-test"
    lines = [
        f"test accuracy (%), {design}, from {ablation / 'runs.csv'}",
        "",
        f"| variant | mean ± std | minus ce, paired (95% CI) | p ({test}) | sd_teacher | sd_seed |",
        "|---|---|---|---|---|---|",
    ]
    ok = True
    order = ["ce", *(v for v in VARIANTS if v != "ce")]  # the ablation's order, ce first
    for variant in [v for v in order if v in acc.columns]:
        cells = f"{acc[variant].mean():.2f} ± {acc[variant].std(ddof=1):.2f}"
        if variant == "ce":
            lines.append(f"| `ce` | {cells} | | | | |")
            continue
        cmp = compare_grouped(groups(variant), groups("ce"))
        lines.append(
            f"| `{variant}` | {cells} | {cmp.delta:+.2f} ({cmp.delta_ci_low:+.2f}, "
            f"{cmp.delta_ci_high:+.2f}) | {cmp.p:.2g} | {cmp.sd_teacher:.2f} | {cmp.sd_seed:.2f} |"
        )
        if variant in ("kd", "no_grad_term"):
            ok = ok and cmp.delta_ci_low > 0
    std = float(acc["full"].std(ddof=1))
    ok = ok and std <= MAX_FULL_STD
    lines += [
        "",
        f"full's std over its runs {std:.2f} (bar {MAX_FULL_STD}); kd and no_grad_term above ce "
        f"with CIs excluding 0: {'met' if ok else 'NOT met'}",
    ]
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=str(HERE / "default_setup.toml"))
    p.add_argument("--out", default="runs/default_setup")
    p.add_argument("--check", metavar="ABLATION_DIR", help="check the bar on an ablation's runs")
    args = p.parse_args(argv)
    if args.check:
        path = Path(args.check)
        if not (path / "runs.csv").is_file():
            p.error(f"{path / 'runs.csv'} not found; run dgkd-ablate --variants all --seeds 10")
        return check(path)
    from dgkd.train import train_population

    spec = tomllib.loads(Path(args.spec).read_text())
    out = Path(args.out)
    runs = out / "runs.csv"
    done = _read(runs)
    seeds = [spec.get("seed_offset", 0) + i for i in range(spec["seeds"])]
    base = {k: coerce(k, v) for k, v in spec.get("base", {}).items()}
    setups = _product(spec["grid"])
    lines = ["| setup | ce | best kd | kd - ce (95% CI) | best dkd | dkd - ce (95% CI) |"]
    lines.append("|---|---|---|---|---|---|")
    ranked = []
    for setup in setups:
        # Every method, setting and seed of a setup as one population (each member is exactly
        # its own train() run), then the rows it adds.
        planned = [
            (method, settings, seed)
            for method, table in spec["methods"].items()
            for settings in _product(table)
            for seed in seeds
        ]
        todo = [p for p in planned if (_label(setup), p[0], _label(p[1]), p[2]) not in done]
        if todo:
            cfgs = [
                TrainConfig().replace(**base, **setup, **settings, method=method, seed=seed)
                for method, settings, seed in todo
            ]
            for (method, settings, seed), res in zip(todo, train_population(cfgs), strict=True):
                key = (_label(setup), method, _label(settings), seed)
                done[key] = res.metrics.get("val_acc", float("nan"))
                print(*key, f"{done[key]:.4f}", file=sys.stderr)
            _write(runs, done)
        per_method: dict[str, dict[str, list[float]]] = {}
        for method, settings, seed in planned:
            key = (_label(setup), method, _label(settings), seed)
            per_method.setdefault(method, {}).setdefault(_label(settings), []).append(done[key])
        ce = per_method["ce"]["-"]
        cells, gains = [], []
        for method in ("kd", "dkd"):
            name, values = max(per_method[method].items(), key=lambda kv: sum(kv[1]))
            cmp = compare_paired(values, ce)
            cells += [
                f"{name}: {sum(values) / len(values):.4f}",
                f"{cmp.delta:+.4f} ({cmp.delta_ci_low:+.4f}, {cmp.delta_ci_high:+.4f})",
            ]
            gains.append(cmp.delta_ci_low > 0 and cmp.delta)
        ok = all(gains)
        ranked.append((ok, min(float(g) for g in gains), _label(setup)))
        lines.append(f"| {_label(setup)} | {sum(ce) / len(ce):.4f} | " + " | ".join(cells) + " |")
    ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
    verdict = (
        f"chosen: {ranked[0][2]}"
        if ranked and ranked[0][0]
        else "no candidate has both kd and dkd above ce with a CI excluding 0"
    )
    text = (
        "\n".join([f"seeds {seeds[0]}..{seeds[-1]}, validation accuracy", "", *lines, "", verdict])
        + "\n"
    )
    atomic_write_text(out / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
