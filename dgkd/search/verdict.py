"""The confirm stage's verdict: each top config against the baseline on fresh, paired seeds.

The best of many noisy trials overestimates its true value (the winner's curse), so a search's
ranking is only a shortlist. The confirm stage retrains the shortlist and the baseline on seeds
the search never saw; this module compares them seed by seed, corrects for the number of
configs (Holm, per metric) and says, in the ablation's words, what holds. With several
teachers the values come per teacher, and the comparison treats the teacher as a random factor
(:func:`dgkd.nested.compare_grouped`: two-level bootstrap CIs, the t-test on teacher-level means).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dgkd.metricspec import VERDICT_METRICS, spec
from dgkd.nested import compare_grouped, nested_mean
from dgkd.stats import ALPHA, holm, verdict, verdict_legend

__all__ = ["VERDICT_METRICS", "Comparison", "Round", "Verdict", "judge", "verdict_markdown"]


@dataclass(frozen=True)
class Comparison:
    """``config - baseline`` on one metric over the confirm seeds both finished."""

    config: str
    metric: str
    mean: float  # the config's mean over confirm seeds
    baseline_mean: float
    delta: float
    ci_low: float
    ci_high: float
    p: float  # paired t-test, uncorrected
    p_holm: float  # Holm across the top configs, per metric
    n_pairs: int
    verdict: str  # better | worse | equivalent | inconclusive | not checked (dgkd.stats)
    sd_teacher: float = math.nan  # the differences' spread between teachers (NaN: one teacher)
    sd_seed: float = math.nan  # and between seeds of one teacher


DECISIVE = ("better", "worse", "equivalent")


@dataclass(frozen=True)
class Round:
    """One look of a sequential confirm stage: the objective's comparisons after it."""

    look: int  # 1, 2, ...
    n_seeds: int  # fresh seeds per teacher so far
    level: float  # the nominal level "better"/"worse" needed at this look
    comparisons: tuple[Comparison, ...]  # on the objective, one per top config

    @property
    def decided(self) -> bool:
        """Every top config's verdict on the objective is better, worse or equivalent."""
        return all(c.verdict in DECISIVE for c in self.comparisons)

    @classmethod
    def of(cls, v: Verdict, look: int, level: float) -> Round:
        """The round a verdict judged at ``look`` makes (no baseline: decided at once)."""
        on_metric = tuple(c for c in v.comparisons if c.metric == v.metric)
        return cls(look, len(v.seeds), level, on_metric)


@dataclass(frozen=True)
class Verdict:
    """Everything the confirm stage concludes; ``to_dict`` is the ``best.json`` block."""

    metric: str  # the study's objective
    seeds: tuple[int, ...]
    baseline: str
    winner: str  # the top config by search value
    winner_search_value: float
    winner_confirmed_value: float
    comparisons: tuple[Comparison, ...]
    teachers: tuple[int, ...] = (0,)  # the teacher seeds every confirm seed ran under
    rounds: tuple[Round, ...] = ()  # the looks taken, when the stage ran in rounds
    looks: int = 1  # the most looks the seed budget allowed
    alpha: float = 0.05  # the nominal level of the last look (0.05 for a single look)

    @property
    def runs(self) -> str:
        """``10 fresh seeds`` or ``3 teachers x 10 fresh seeds``."""
        seeds = f"{len(self.seeds)} fresh seeds"
        return seeds if len(self.teachers) <= 1 else f"{len(self.teachers)} teachers x {seeds}"

    @property
    def headline(self) -> str:
        """One line: the winner against the baseline on the objective, and the verdict; when
        the baseline itself won the search, the runner-up against it."""
        on_metric = [c for c in self.comparisons if c.metric == self.metric]
        c = next((c for c in on_metric if c.config == self.winner), None)
        bias = self.winner_search_value - self.winner_confirmed_value
        shown = (
            f"search {self.winner_search_value:.4f} -> confirmed "
            f"{self.winner_confirmed_value:.4f} ({bias:+.4f} selection bias)"
        )
        lead = f"{self.winner} vs {self.baseline}"
        if c is None and self.winner == self.baseline and on_metric:
            c = on_metric[0]  # comparisons follow the search's ranking: the runner-up
            lead = f"{self.baseline} won the search; runner-up {c.config} vs {self.baseline}"
            shown = f"{self.baseline}'s {shown}"
        if c is None:
            return f"{self.winner}: {shown}; no baseline to compare with"
        over = f"{c.n_pairs} fresh seeds" if len(self.teachers) <= 1 else self.runs
        if self.looks > 1:
            over += f" (round {len(self.rounds)} of at most {self.looks})"
        return (
            f"{lead} on {self.metric} over {over}: "
            f"{c.delta:+.4f} (95% CI {c.ci_low:+.4f}..{c.ci_high:+.4f}, Holm p {c.p_holm:.3g}): "
            f"{c.verdict}; {shown}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        out["teachers"] = list(self.teachers)
        out["rounds"] = [
            {
                "look": r.look,
                "seeds": r.n_seeds,
                "level": r.level,
                "decided": r.decided,
                "comparisons": [
                    {k: _finite(v) for k, v in asdict(c).items()} for c in r.comparisons
                ],
            }
            for r in self.rounds
        ]
        out["headline"] = self.headline
        out["comparisons"] = [
            {k: _finite(v) for k, v in asdict(c).items()} for c in self.comparisons
        ]
        for key in ("winner_search_value", "winner_confirmed_value"):
            out[key] = _finite(out[key])
        return out


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


Values = Sequence[float] | Sequence[Sequence[float]]


def _groups(values: Values | None, n_teachers: int, n_seeds: int) -> list[list[float]]:
    """Per-teacher lists of a metric's values (one teacher's flat list wrapped), NaN if absent."""
    if values is None or not len(values):
        return [[math.nan] * n_seeds for _ in range(n_teachers)]
    if isinstance(values[0], (list, tuple)):
        return [list(map(float, g)) for g in values]  # type: ignore[arg-type]
    return [[float(v) for v in values]]  # type: ignore[arg-type]


def judge(
    values: Mapping[str, Mapping[str, Values]],
    *,
    baseline: str | None,
    winner: str,
    winner_search_value: float,
    metric: str,
    seeds: Sequence[int],
    teachers: Sequence[int] = (0,),
    alpha: float = ALPHA,
) -> Verdict:
    """Compare every config with ``baseline``, paired by teacher and seed.

    Args:
        values: ``values[config][metric]`` is the metric on each of ``seeds``, in that order
            (NaN for a seed that did not finish); with several ``teachers``, one such list per
            teacher, in the order of ``teachers``.
        baseline: The config every other is compared with; None when the study has none (the
            verdict then only shows the winner's search and confirmed values).
        winner: The top config by search value.
        winner_search_value: Its value in the search (mean over the search's seeds).
        metric: The study's objective, a key of :data:`VERDICT_METRICS` or another final metric.
        seeds: The confirm seeds, in the order of the values.
        teachers: The teacher seeds, in the order of the values' groups.
        alpha: The level a Holm-corrected p must be below for "better" or "worse": lower than
            0.05 at the looks of a sequential confirm stage.
    """
    nt, ns = len(teachers), len(seeds)

    def get(config: str, name: str) -> list[list[float]]:
        return _groups(values[config].get(name), nt, ns)

    metrics = {name: spec(name) for name in (*VERDICT_METRICS, metric)}
    others = [c for c in values if c != baseline]
    comparisons: list[Comparison] = []
    if baseline is not None:
        for name, ms in metrics.items():
            higher = ms.higher_is_better
            cmps = [
                compare_grouped(get(c, name), get(baseline, name), higher_is_better=higher)
                for c in others
            ]
            corrected = holm([c.p for c in cmps])
            for c, cmp, p_holm in zip(others, cmps, corrected, strict=True):
                comparisons.append(
                    Comparison(
                        config=c,
                        metric=name,
                        mean=nested_mean(get(c, name)),
                        baseline_mean=nested_mean(get(baseline, name)),
                        delta=cmp.delta,
                        ci_low=cmp.delta_ci_low,
                        ci_high=cmp.delta_ci_high,
                        p=cmp.p,
                        p_holm=p_holm,
                        n_pairs=cmp.n_pairs,
                        verdict=verdict(
                            cmp.delta_ci_low,
                            cmp.delta_ci_high,
                            p_holm,
                            higher_is_better=higher,
                            rope=ms.rope,
                            alpha=alpha,
                            within=cmp.equivalence_bounds,
                        ),
                        sd_teacher=cmp.sd_teacher,
                        sd_seed=cmp.sd_seed,
                    )
                )
    return Verdict(
        metric=metric,
        seeds=tuple(seeds),
        baseline=baseline or "",
        winner=winner,
        winner_search_value=winner_search_value,
        winner_confirmed_value=nested_mean(get(winner, metric)),
        comparisons=tuple(comparisons),
        teachers=tuple(teachers),
        alpha=alpha,
    )


def _ropes(names: Iterable[str]) -> str:
    """Each judged metric's rope, e.g. ``val_acc ±0.005``, in first-seen order."""
    seen = dict.fromkeys(names)
    return ", ".join(f"{n} ±{spec(n).rope:g}" for n in seen if math.isfinite(spec(n).rope))


def verdict_markdown(v: Verdict, *, labels: Mapping[str, str] | None = None) -> str:
    """``verdict.md``: the headline, then one table row per config and metric (without a
    baseline, what was run and how to get comparisons)."""
    labels = labels or {}
    several = len(v.teachers) > 1
    if not v.baseline:
        # Without a baseline nothing was compared: a legend and an empty table would only
        # suggest that something is missing.
        return "\n".join(["# Verdict", "", v.headline, "", _no_baseline(v), ""])
    if several:
        design = (
            f"Confirm seeds {', '.join(map(str, v.seeds))} (never used by the search), each under "
            f"teacher seeds {', '.join(map(str, v.teachers))}: {v.runs} per config. Each row is "
            f"a config minus the baseline ({v.baseline}), paired by teacher and seed; "
            "teachers are a random factor: mean = the mean over teachers of the seed means, the "
            "95% CI a two-level bootstrap (teachers, then seeds within each), p the one-sample "
            "t-test of the teacher-level mean differences, Holm-corrected across the configs "
            "for each metric; sd_teacher and sd_seed split the differences' spread."
        )
    else:
        design = (
            f"Confirm seeds {', '.join(map(str, v.seeds))}: never used by the search. Each row is "
            f"a config minus the baseline ({v.baseline}), paired by seed; p is the "
            "paired t-test, Holm-corrected across the configs for each metric."
        )
    head = "| config | metric | mean | baseline | difference (95% CI) | p (Holm) | verdict |"
    rule = "|---|---|---|---|---|---|---|"
    lines = [
        "# Verdict",
        "",
        v.headline,
        "",
        design,
        "",
        verdict_legend(_ropes(m.metric for m in v.comparisons))
        + (
            f" At this stage's last look, better and worse needed a corrected p below "
            f"{v.alpha:.3g} (the sequential design's level; see the rounds below)."
            if v.looks > 1
            else ""
        ),
        "",
        head + (" sd_teacher | sd_seed |" if several else ""),
        rule + ("---|---|" if several else ""),
    ]
    for c in v.comparisons:
        name = f"{c.config} ({labels[c.config]})" if c.config in labels else c.config
        line = (
            f"| {name} | {c.metric} | {c.mean:.4f} | {c.baseline_mean:.4f} | "
            f"{c.delta:+.4f} ({c.ci_low:+.4f}, {c.ci_high:+.4f}) | {c.p_holm:.3g} | "
            f"{c.verdict} |"
        )
        if several:
            line += f" {c.sd_teacher:.4f} | {c.sd_seed:.4f} |"
        lines.append(line)
    if v.looks > 1:
        lines += _rounds_markdown(v, labels)
    return "\n".join(lines) + "\n"


def _no_baseline(v: Verdict) -> str:
    """What a stage without a baseline measured, and how to get comparisons."""
    under = f" under teacher seeds {', '.join(map(str, v.teachers))}" if len(v.teachers) > 1 else ""
    return (
        f"Confirm seeds {', '.join(map(str, v.seeds))}{under}: never used by the search. The "
        "study has no baseline point, so no config was compared with one; give the study an "
        "`enqueue` point (for example `enqueue = [{ epsilon = 0.0 }]`: DKD) to get differences, "
        "p-values and verdicts."
    )


def _rounds_markdown(v: Verdict, labels: Mapping[str, str]) -> list[str]:
    """The rounds of a sequential stage: after each, the objective's comparisons and words."""
    stop = (
        "every verdict on the objective was decisive"
        if v.rounds and v.rounds[-1].decided
        else "the seed budget was spent"
    )
    lines = [
        "",
        "## Rounds",
        "",
        f"The stage added fresh seeds in rounds and judged after each: an O'Brien-Fleming "
        f"group-sequential design with at most {v.looks} looks at an overall level of 0.05, so a "
        f"look's better or worse needs the corrected p below that look's level. It stopped after "
        f"round {len(v.rounds)}: {stop}.",
        "",
        "| round | seeds per teacher | level | config | difference (95% CI) | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in v.rounds:
        for c in r.comparisons:
            name = f"{c.config} ({labels[c.config]})" if c.config in labels else c.config
            lines.append(
                f"| {r.look} | {r.n_seeds} | {r.level:.3g} | {name} | {c.delta:+.4f} "
                f"({c.ci_low:+.4f}, {c.ci_high:+.4f}) | {c.p_holm:.3g} | {c.verdict} |"
            )
    return lines
