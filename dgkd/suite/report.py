"""A suite in words and tables: the paper table, the differences, the aggregate, the claims.

Accuracy-like metrics are shown in percent (differences in points), others in their own units.
A cell is marked ▲ (better) or ▼ (worse) when its verdict says so: its CI excludes 0 and its
Holm-corrected p is below 5%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dgkd.ablate.claims import ALPHA, DKD_VARIANT
from dgkd.ablate.report import rope_text
from dgkd.ablate.variants import REFERENCE
from dgkd.metricspec import ABLATION_METRICS, METRICS, MetricSpec
from dgkd.suite.stats import ALL

if TYPE_CHECKING:
    from rich.console import Console

    from dgkd.suite.result import SuiteResult

__all__ = ["HEADLINE", "aggregate_sentence", "print_suite", "suite_markdown"]

HEADLINE = "test_acc"  # the metric of the paper table and the forest plot
DASH = "—"
_MARK = {"better": " ▲", "worse": " ▼"}


def _fmt(v: float, spec: MetricSpec, *, signed: bool = False, dec: int | None = None) -> str:
    if not math.isfinite(v):
        return DASH
    v = v * 100 if spec.percent else v
    d = (2 if spec.percent else 3) if dec is None else dec
    return f"{v:+.{d}f}" if signed else f"{v:.{d}f}"


def _p(v: float) -> str:
    if not math.isfinite(v):
        return DASH
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _rows(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], Mapping]:
    return {(r["setup"], r["variant"]): r for r in rows if r["metric"] == metric}


def _order(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    setups = list(dict.fromkeys(r["setup"] for r in rows if r["setup"] != ALL))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    return setups, variants


def _share(k: int, n: int, low: float, high: float) -> str:
    return f"{k} of {n} ({low:.0%} to {high:.0%})" if n else DASH


def aggregate_sentence(row: Mapping[str, Any]) -> str:
    """One aggregate row in words: the difference, its CI and test, the verdict, how often."""
    spec = METRICS[row["metric"]]
    unit = " pts" if spec.percent else ""
    how = (
        f"better than full in {row['n_setups_better']} of {row['n_setups']} setups "
        f"(95% CI {row['setups_better_low']:.0%} to {row['setups_better_high']:.0%}) and in "
        f"{row['runs_better']:.0%} of {row['n_pairs']} paired runs "
        f"({row['runs_better_low']:.0%} to {row['runs_better_high']:.0%})"
        if row["n_setups"]
        else "no finished pairs"
    )
    return (
        f"`{row['variant']}` - `full`, {spec.label}, across {row['n_setups']} setups: "
        f"{_fmt(row['delta'], spec, signed=True)}{unit} (95% CI "
        f"{_fmt(row['ci_low'], spec, signed=True)} to {_fmt(row['ci_high'], spec, signed=True)}; "
        f"t-test on setup means p {_p(row['p'])}, Holm {_p(row['p_holm'])}): "
        f"**{row['verdict'] or 'not checked'}**; {how}."
    )


def _mean_table(rows: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """Setups as columns, variants as rows: each variant's mean ± the CI's half-width."""
    spec = METRICS[metric]
    by = _rows(rows, metric)
    setups, variants = _order(rows)
    head = ["variant", *setups, "mean over setups"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for v in variants:
        cells = [f"`{v}`"]
        for s in [*setups, ALL]:
            r = by[(s, v)]
            half = (r["mean_ci_high"] - r["mean_ci_low"]) / 2
            text = _fmt(r["mean"], spec)
            if math.isfinite(half):
                text += f" ± {_fmt(half, spec)}"
            cells.append(text + _MARK.get(r["verdict"], ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _delta_table(rows: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """Setups as columns, variants as rows: the paired difference to full with its CI."""
    spec = METRICS[metric]
    by = _rows(rows, metric)
    setups, variants = _order(rows)
    head = ["variant", *setups, "all setups"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for v in variants:
        if v == REFERENCE:
            continue
        cells = [f"`{v}`"]
        for s in [*setups, ALL]:
            r = by[(s, v)]
            text = _fmt(r["delta"], spec, signed=True)
            if math.isfinite(r["ci_low"]):
                low, high = (
                    _fmt(r["ci_low"], spec, signed=True),
                    _fmt(r["ci_high"], spec, signed=True),
                )
                text += f" [{low}, {high}]"
            cells.append(f"{text} {r['verdict'] or DASH}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _claims(result: SuiteResult) -> list[str]:
    lines = [
        f"| claim | metric | full - {DKD_VARIANT} (95% CI) | p (Holm) | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in result.claims:
        spec = METRICS[c.metric]
        unit = " pts" if spec.percent else ""
        if c.verdict == "not checked":
            lines.append(f"| {c.topic} | {spec.label} | {DASH} | {DASH} | not checked: {c.note} |")
            continue
        numbers = (
            f"{_fmt(c.delta, spec, signed=True)}{unit} ({_fmt(c.ci_low, spec, signed=True)} to "
            f"{_fmt(c.ci_high, spec, signed=True)})"
        )
        lines.append(
            f"| {c.topic} | {spec.label} ({spec.direction}) | {numbers} | {_p(c.p_holm)} | "
            f"**{c.verdict}** |"
        )
    return lines


def suite_markdown(result: SuiteResult) -> str:
    """suite.md: the design, the paper table, the differences, the aggregates and the claims."""
    from dgkd.stats import CONFIDENCE, verdict_legend

    rows = result.rows
    first = result.ablations[0][1]
    design = (
        f"{len(result.ablations)} setups x {len(first.teacher_seeds)} teacher(s) x "
        f"{len(first.seeds)} seeds, variants {', '.join(result.variants)}"
    )
    headline = METRICS[HEADLINE]
    out = [
        f"# Suite {result.suite.name}",
        "",
        result.suite.description,
        "",
        f"Design: {design}. Each setup is its own ablation (its directory below); the aggregate "
        "weighs every setup once: the mean over setups of each setup's mean paired difference, "
        f"a {CONFIDENCE:.0%} CI from a three-level bootstrap (setups, then teachers, then seeds) "
        "and a t-test on the setup-level means; Holm's correction runs over every (setup, "
        "variant) cell of a metric, and separately over the aggregate rows.",
        "",
        "| setup | description | directory |",
        "|---|---|---|",
        *(
            f"| `{s.name}` | {s.description or DASH} | `{r.directory}` |"
            for s, r in result.ablations
        ),
        "",
        f"## {headline.label.capitalize()}{headline.unit}: mean ± half the {CONFIDENCE:.0%} CI",
        "",
        f"▲ / ▼: better / worse than `full` on that setup (CI excludes 0, Holm p < {ALPHA:.0%}).",
        "",
        *_mean_table(rows, HEADLINE),
        "",
        f"## Difference to `full`, {headline.label}" + (" (points)" if headline.percent else ""),
        "",
        *_delta_table(rows, HEADLINE),
        "",
        "## The answer across setups",
        "",
        *(
            f"- {aggregate_sentence(r)}"
            for r in rows
            if r["setup"] == ALL and r["variant"] != REFERENCE and r["metric"] == HEADLINE
        ),
        "",
        f"## The seed's claims for DGKD over DKD (`full` - `{DKD_VARIANT}`), across setups",
        "",
        *_claims(result),
        "",
        verdict_legend(rope_text(ABLATION_METRICS)),
        "",
        "Every metric's per-setup and aggregate rows are in suite.csv; each setup's own tables "
        "(summary.md) are in its directory.",
    ]
    return "\n".join(out) + "\n"


def print_suite(result: SuiteResult, console: Console | None = None) -> None:
    """The difference table of the headline metric and the aggregate sentences, on stdout."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = console or Console()
    if not console.is_terminal:
        console.width = 10_000
    text = [
        f"suite {result.suite.name}: {HEADLINE}, difference to full"
        + (" (points)" if METRICS[HEADLINE].percent else ""),
        "",
        *_delta_table(result.rows, HEADLINE),
        "",
        *(
            f"- {aggregate_sentence(r)}"
            for r in result.rows
            if r["setup"] == ALL and r["variant"] != REFERENCE and r["metric"] == HEADLINE
        ),
    ]
    if console.is_terminal:
        console.print(Markdown("\n".join(text)))
    else:
        print("\n".join(text))
