"""The confirm stage's verdict: each top config against the baseline on fresh, paired seeds.

The best of many noisy trials overestimates its true value (the winner's curse), so a search's
ranking is only a shortlist. The confirm stage retrains the shortlist and the baseline on seeds
the search never saw; this module compares them seed by seed, corrects for the number of
configs (Holm, per metric) and says, in the ablation's words, what holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dgkd.stats import compare_paired, holm, verdict

__all__ = ["VERDICT_METRICS", "Comparison", "Verdict", "judge", "verdict_markdown"]

# metric -> higher is better: the study's objective on validation, accuracy on test, and the
# seed's claims (fidelity to the teacher, calibration, compactness).
VERDICT_METRICS: dict[str, bool] = {
    "val_acc": True,
    "test_acc": True,
    "test_agreement": True,
    "test_kl_to_teacher": False,
    "test_ece": False,
    "train_nc1": False,
}


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
    verdict: str  # supported | opposite | no difference | inconclusive | not checked


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
        return (
            f"{lead} on {self.metric} over {c.n_pairs} fresh seeds: "
            f"{c.delta:+.4f} (95% CI {c.ci_low:+.4f}..{c.ci_high:+.4f}, Holm p {c.p_holm:.3g}): "
            f"{c.verdict}; {shown}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        out["headline"] = self.headline
        out["comparisons"] = [
            {k: _finite(v) for k, v in asdict(c).items()} for c in self.comparisons
        ]
        for key in ("winner_search_value", "winner_confirmed_value"):
            out[key] = _finite(out[key])
        return out


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def judge(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    baseline: str | None,
    winner: str,
    winner_search_value: float,
    metric: str,
    seeds: Sequence[int],
) -> Verdict:
    """Compare every config with ``baseline``, paired by seed.

    Args:
        values: ``values[config][metric]`` is the metric on each of ``seeds``, in that order
            (NaN for a seed that did not finish).
        baseline: The config every other is compared with; None when the study has none (the
            verdict then only shows the winner's search and confirmed values).
        winner: The top config by search value.
        winner_search_value: Its value in the search (mean over the search's seeds).
        metric: The study's objective, a key of :data:`VERDICT_METRICS` or another final metric.
        seeds: The confirm seeds, in the order of the values.
    """
    metrics = dict(VERDICT_METRICS)
    metrics.setdefault(metric, True)
    others = [c for c in values if c != baseline]
    comparisons: list[Comparison] = []
    if baseline is not None:
        for name, higher in metrics.items():
            cmps = [
                compare_paired(
                    values[c].get(name, [math.nan] * len(seeds)),
                    values[baseline].get(name, [math.nan] * len(seeds)),
                    higher_is_better=higher,
                )
                for c in others
            ]
            corrected = holm([c.p for c in cmps])
            for c, cmp, p_holm in zip(others, cmps, corrected, strict=True):
                comparisons.append(
                    Comparison(
                        config=c,
                        metric=name,
                        mean=_mean(values[c].get(name, [])),
                        baseline_mean=_mean(values[baseline].get(name, [])),
                        delta=cmp.delta,
                        ci_low=cmp.delta_ci_low,
                        ci_high=cmp.delta_ci_high,
                        p=cmp.p,
                        p_holm=p_holm,
                        n_pairs=cmp.n_pairs,
                        verdict=verdict(
                            cmp.delta_ci_low, cmp.delta_ci_high, p_holm, higher_is_better=higher
                        ),
                    )
                )
    return Verdict(
        metric=metric,
        seeds=tuple(seeds),
        baseline=baseline or "",
        winner=winner,
        winner_search_value=winner_search_value,
        winner_confirmed_value=_mean(values[winner].get(metric, [])),
        comparisons=tuple(comparisons),
    )


def verdict_markdown(v: Verdict, *, labels: Mapping[str, str] | None = None) -> str:
    """``verdict.md``: the headline, then one table row per config and metric."""
    labels = labels or {}
    lines = [
        "# Verdict",
        "",
        v.headline,
        "",
        f"Confirm seeds {', '.join(map(str, v.seeds))}: never used by the search. Each row is "
        f"a config minus the baseline ({v.baseline or 'none'}), paired by seed; p is the "
        "paired t-test, Holm-corrected across the configs for each metric. A difference is "
        "supported when its 95% bootstrap CI excludes 0 and the corrected p is below 0.05.",
        "",
        "| config | metric | mean | baseline | difference (95% CI) | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in v.comparisons:
        name = f"{c.config} ({labels[c.config]})" if c.config in labels else c.config
        lines.append(
            f"| {name} | {c.metric} | {c.mean:.4f} | {c.baseline_mean:.4f} | "
            f"{c.delta:+.4f} ({c.ci_low:+.4f}, {c.ci_high:+.4f}) | {c.p_holm:.3g} | "
            f"{c.verdict} |"
        )
    return "\n".join(lines) + "\n"
