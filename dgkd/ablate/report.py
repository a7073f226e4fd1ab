"""The ablation in words and tables: the base config line, the claims, markdown, the terminal.

Numbers are shown with three significant digits of the reference mean (two decimals for
percentages), missing values as a dash, and differences signed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dgkd.ablate.base import BaseConfig
from dgkd.ablate.claims import ALPHA, Claim
from dgkd.ablate.result import AblationResult
from dgkd.ablate.summary import METRICS, MetricSpec
from dgkd.ablate.variants import REFERENCE
from dgkd.config import TrainConfig
from dgkd.metricspec import spec as spec_of

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod

__all__ = ["claim_sentences", "describe_base", "print_summary", "summary_markdown"]

DASH = "—"
# The claims' topics as sentence heads.
_TOPIC_WORDS = {
    "accuracy": "Accuracy",
    "fidelity": "Fidelity",
    "calibration": "Calibration",
    "compactness": "Class compactness (neural collapse)",
}
# Shown in the base config line whatever their values.
_SHOWN = ("method", "alpha", "beta", "epsilon", "temperature", "grad_term", "grad_sign", "seed")


# --- number formatting -------------------------------------------------------------------------


def _decimals(spec: MetricSpec, summary: Sequence[Mapping[str, Any]]) -> int:
    """Decimals showing three significant digits of the reference mean (2 for percentages)."""
    if spec.percent:
        return 2
    ref = next((r[f"{spec.name}_mean"] for r in summary if r["variant"] == REFERENCE), math.nan)
    if not math.isfinite(ref) or ref == 0:
        return 4
    return max(0, 2 - math.floor(math.log10(abs(ref))))


def _num(v: float | None, spec: MetricSpec, decimals: int, *, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return DASH
    v = v * 100 if spec.percent else v
    return f"{v:+.{decimals}f}" if signed else f"{v:.{decimals}f}"


def _p(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return DASH
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _n(row: Mapping[str, Any]) -> str:
    return f"{row['n']} ({row['diverged']} diverged)" if row["diverged"] else str(row["n"])


def _cells(row: Mapping[str, Any], spec: MetricSpec, dec: int) -> dict[str, str]:
    """One summary row's numbers for one metric, formatted for a table."""
    m = spec.name
    ci = (
        f"[{_num(row[f'{m}_ci_low'], spec, dec)}, {_num(row[f'{m}_ci_high'], spec, dec)}]"
        if math.isfinite(row[f"{m}_ci_low"])
        else DASH
    )
    mean = _num(row[f"{m}_mean"], spec, dec)
    if math.isfinite(row[f"{m}_std"]):
        mean += f" ± {_num(row[f'{m}_std'], spec, dec)}"
    if row["variant"] == REFERENCE or not math.isfinite(row[f"{m}_delta"]):
        delta = DASH if row["variant"] != REFERENCE else "(reference)"
    else:
        delta = _num(row[f"{m}_delta"], spec, dec, signed=True)
        if math.isfinite(row[f"{m}_delta_ci_low"]):
            low = _num(row[f"{m}_delta_ci_low"], spec, dec, signed=True)
            high = _num(row[f"{m}_delta_ci_high"], spec, dec, signed=True)
            delta += f" [{low}, {high}]"
    improve = row[f"{m}_p_improve"]
    return {
        "sd_teacher": _num(row.get(f"{m}_sd_teacher"), spec, dec),
        "sd_seed": _num(row.get(f"{m}_sd_seed"), spec, dec),
        "mean": mean,
        "ci": ci,
        "delta": delta,
        "p": _p(row[f"{m}_p"]),
        "p_holm": _p(row[f"{m}_p_holm"]),
        "improve": f"{improve:.2f}" if math.isfinite(improve) else DASH,
        "verdict": row.get(f"{m}_verdict") or DASH,
    }


def _v(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


# --- text ----------------------------------------------------------------------------------------


def describe_base(base: BaseConfig) -> str:
    """One line: where the base config came from and its DGKD settings and changed fields."""
    cfg = base.config
    source = {
        "default": "defaults",
        "study": f"study {base.study} (base, no search)",
        "from-study": f"study {base.study}, best trial",
    }[base.source]
    if base.overrides:
        source += " + " + " ".join(f"{k}={_v(v)}" for k, v in base.overrides.items())
    method = (
        f"dgkd alpha={cfg.alpha:g} beta={cfg.beta:g} epsilon={cfg.epsilon:g} "
        f"T={cfg.temperature:g} grad_term={cfg.grad_term} grad_sign={cfg.grad_sign:+g}"
    )
    shown = {*_SHOWN, *base.overrides}
    defaults = TrainConfig().to_dict()
    changed = [
        f"{k}={_v(v)}" for k, v in cfg.to_dict().items() if k not in shown and v != defaults[k]
    ]
    text = f"base config [{base.hash}] from {source}: {method}"
    return text + (f"; also differs from defaults in {' '.join(changed)}" if changed else "")


def claim_sentences(claims: Sequence[Claim]) -> list[str]:
    """Each claim of DGKD over DKD (full vs no_grad_term) in plain words, with the numbers."""
    out = []
    for c in claims:
        spec = METRICS[c.metric]
        head = f"{_TOPIC_WORDS[c.topic]}, {spec.label} ({spec.direction})"
        if c.verdict == "not checked":
            out.append(f"{head}: not checked ({c.note}).")
            continue
        dec = 2 if spec.percent else max(0, 2 - math.floor(math.log10(max(abs(c.delta), 1e-12))))
        unit = " pts" if spec.percent else ""
        numbers = (
            f"full - no_grad_term = {_num(c.delta, spec, dec, signed=True)}{unit} "
            f"(95% CI {_num(c.ci_low, spec, dec, signed=True)} to "
            f"{_num(c.ci_high, spec, dec, signed=True)}; "
            + (
                f"paired t-test p = {_p(c.p)}, Holm {_p(c.p_holm)}; {c.n_pairs} seed pairs)"
                if c.n_teachers <= 1
                else f"t-test on teacher means p = {_p(c.p)}, Holm {_p(c.p_holm)}; "
                f"{c.n_pairs} pairs under {c.n_teachers} teachers)"
            )
        )
        word = ("higher" if c.delta > 0 else "lower") if c.delta != 0 else "equal to"
        rope = _num(spec.rope, spec, dec) + unit
        if c.verdict == "better":
            text = (
                f"better: DGKD is {word} than DKD beyond the CI: {numbers}. "
                "The claim holds on this setup."
            )
        elif c.verdict == "worse":
            text = (
                f"worse: DGKD is {word} than DKD beyond the CI: {numbers}. "
                "The claim fails on this setup."
            )
        elif c.verdict == "equivalent":
            text = (
                f"equivalent: the whole CI lies within ±{rope}, too close to DKD to matter: "
                f"{numbers}. The claim is not supported on this setup."
            )
        else:
            text = (
                f"inconclusive: neither a difference (CI beyond 0 and Holm p below "
                f"{ALPHA:.0%}) nor equivalence (CI within ±{rope}): {numbers}. "
                f"Run more {c.more} to decide."
            )
        out.append(f"{head}: {text}")
    return out


def rope_text(names: Sequence[str] = tuple(METRICS)) -> str:
    """Each metric's rope in its table's units, e.g. ``test_acc ±0.5 pts``."""
    parts = []
    for name in names:
        ms = spec_of(name)
        if math.isfinite(ms.rope):
            value = f"{ms.rope * 100:g} pts" if ms.percent else f"{ms.rope:g}"
            parts.append(f"{name} ±{value}")
    return ", ".join(parts)


def summary_markdown(result: AblationResult) -> str:
    """The ablation as markdown: how to read it, one table per metric, the claims."""
    from dgkd.stats import CONFIDENCE, N_RESAMPLES, verdict_legend

    rows = result.summary
    seeds = result.seeds
    teachers = result.teacher_seeds
    cells = result.cells
    diverged = sum(c.status == "diverged" for c in cells)
    keys = sorted({c.teacher_key for c in cells})
    if len(teachers) == 1:
        design = f"{len(result.variants)} variants x {len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
        shared = f"every variant ran on the same seeds, validation split and teacher (`{keys[0]}`)"
        how = (
            f"How to read: mean ± std (ddof 1) over seeds; {CONFIDENCE:.0%} CI = percentile "
            f"bootstrap of the mean ({N_RESAMPLES:,} resamples, seeded); Δ = variant - full, "
            "paired by seed, with its bootstrap CI; p = two-sided paired t-test on the seed "
            "pairs, Holm = Holm-corrected across the variants of that metric; "
        )
    else:
        design = (
            f"{len(result.variants)} variants x {len(teachers)} teachers (teacher seeds "
            f"{teachers[0]}-{teachers[-1]}) x {len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
        )
        shared = (
            "every variant ran under the same teachers ("
            + ", ".join(f"`{k}`" for k in keys)
            + ") on the same seeds and validation split"
        )
        how = (
            f"How to read: teachers are a random factor. Mean = mean over teachers of the mean "
            f"over seeds, ± std (ddof 1) over every run; {CONFIDENCE:.0%} CI = two-level "
            f"percentile bootstrap ({N_RESAMPLES:,} resamples, seeded: resample teachers, then "
            "seeds within each); Δ = variant - full, paired by teacher and seed, with its "
            "two-level CI; p = two-sided one-sample t-test of the teacher-level mean "
            f"differences ({len(teachers) - 1} degrees of freedom), Holm = Holm-corrected "
            "across the variants of that metric; sd_teacher and sd_seed = the spread of the "
            "paired differences between teachers and between seeds of one teacher (one-way "
            "random-effects ANOVA), in summary.csv and every table below; "
        )
    lines = [
        f"# Ablation `{result.name}`",
        "",
        describe_base(result.base) + ".",
        "",
        f"{design} = {len(cells)} runs"
        + (f", {diverged} diverged" if diverged else "")
        + f"; {shared}. Final-epoch metrics, except the mean log train NC1 over "
        "epochs (`nc1_auc`), which summarizes the NC1 curve: lower means the classes collapsed "
        "faster along the way, and exp(Δ) is the geometric-mean ratio of NC1 over the epochs.",
        "",
        how + "P(better) = probability that a run of the variant beats a run of full (Mann-Whitney "
        "U / n²; 0.5 = no difference). n counts finished runs; diverged runs are counted, not "
        "averaged.",
        "",
        verdict_legend(rope_text()) + " The verdict column reads the variant against full.",
        "",
        "## The seed's claims: full (DGKD) vs no_grad_term (DKD)",
        "",
        *[f"- {s}" for s in claim_sentences(result.claims)],
        "",
    ]
    several = len(teachers) > 1
    for spec in METRICS.values():
        dec = _decimals(spec, rows)
        extra = " sd_teacher | sd_seed |" if several else ""
        lines += [
            f"## {spec.label[0].upper() + spec.label[1:]}{spec.unit}, {spec.direction}",
            "",
            "| variant | what changes | n | mean ± std | 95% CI | Δ vs full [95% CI] "
            "| p | p (Holm) | P(better) | verdict |" + extra,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---:|---:|" if several else ""),
        ]
        for row in rows:
            c = _cells(row, spec, dec)
            line = (
                f"| {row['variant']} | {row['description']} | {_n(row)} | {c['mean']} | "
                f"{c['ci']} | {c['delta']} | {c['p']} | {c['p_holm']} | {c['improve']} | "
                f"{c['verdict']} |"
            )
            if several:
                line += f" {c['sd_teacher']} | {c['sd_seed']} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def print_summary(result: AblationResult, console: Console | None = None) -> None:
    """Rich tables of the summary (test accuracy in full, then the claim metrics) and claims."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or pipe: do not squeeze the tables into 80
            console.width = max(console.width, 130)
    rows = result.summary
    spec = METRICS["test_acc"]
    dec = _decimals(spec, rows)
    several = len(result.teacher_seeds) > 1
    if several:
        title = (
            f"ablation {result.name}: test accuracy (%), {len(result.teacher_seeds)} teachers x "
            f"{len(result.seeds)} paired seeds"
        )
        caption = (
            "Δ = variant - full paired by teacher and seed, two-level bootstrap CI; p = t-test "
            "on teacher means, Holm-corrected; sd = the Δ's spread between teachers / seeds"
        )
    else:
        title = f"ablation {result.name}: test accuracy (%), {len(result.seeds)} paired seeds"
        caption = (
            "Δ = variant - full paired by seed; p = paired t-test, Holm-corrected; "
            "P(better) = P(variant seed beats full seed)"
        )
    table = Table(title=title, caption=caption)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("variant", "left"),
        ("n", "right"),
        ("mean ± std", "right"),
        ("95% CI", "right"),
        ("Δ vs full [95% CI]", "right"),
        ("p (Holm)", "right"),
        ("P(better)", "right"),
        ("verdict", "left"),
    )
    if several:
        columns += (("sd_teacher", "right"), ("sd_seed", "right"))
    for col, just in columns:
        table.add_column(col, justify=just)
    for row in rows:
        c = _cells(row, spec, dec)
        cols = [row["variant"], _n(row), c["mean"], c["ci"], c["delta"], c["p_holm"], c["improve"]]
        cols.append(c["verdict"] if row["variant"] != REFERENCE else "")
        table.add_row(*cols, *((c["sd_teacher"], c["sd_seed"]) if several else ()))
    console.print(table)

    claim_metrics = ("test_agreement", "test_kl_to_teacher", "test_ece", "nc1_auc", "train_nc1")
    others = [METRICS[m] for m in claim_metrics]
    table = Table(title="claim metrics: mean ± std, then Δ vs full (Holm p)")
    table.add_column("variant")
    for s in others:
        arrow = "↑" if s.higher_is_better else "↓"
        table.add_column(f"{s.name}{s.unit} {arrow}", justify="right")
    decs = {s.name: _decimals(s, rows) for s in others}
    for row in rows:
        values = []
        for s in others:
            c = _cells(row, s, decs[s.name])
            delta = c["delta"].split(" [")[0]
            values.append(
                c["mean"] + ("" if row["variant"] == REFERENCE else f"\nΔ {delta} ({c['p_holm']})")
            )
        table.add_row(row["variant"], *values)
    console.print(table)
    console.print("[bold]The seed's claims, full (DGKD) vs no_grad_term (DKD):[/bold]")
    for sentence in claim_sentences(result.claims):
        console.print(f"- {sentence}", highlight=False)
