"""Every number of verdict.md and the verdict's headline read back and checked against values
worked out here with numpy and scipy: the means, the baseline column, the differences, the
Holm-corrected p-values and the verdict words (never the code under test's own statistics)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats as sps

from dgkd.search.verdict import judge, verdict_markdown


def holm_by_hand(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down, written from its definition: the i-th smallest p (1-based) times
    (m - i + 1), never below the one before it, at most 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """verdict.md's main table: (config, metric) -> the row's cells."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[1] in ("val_acc", "test_ece") and cells[0] != "config":
            rows[(cells[0].split(" (")[0], cells[1])] = cells
    return rows


def difference(cell: str) -> tuple[float, float, float]:
    """``+0.0208 (+0.0150, +0.0250)`` as three floats."""
    m = re.fullmatch(r"([+-][\d.]+) \(([+-][\d.]+), ([+-][\d.]+)\)", cell)
    assert m, cell
    return float(m[1]), float(m[2]), float(m[3])


SEEDS = [10_000, 10_001, 10_002, 10_003, 10_004, 10_005]
BASE = np.array([0.60, 0.62, 0.58, 0.61, 0.59, 0.63])
DIFFS = {
    "a": np.array([0.02, 0.03, 0.01, 0.025, 0.015, 0.02]),  # clearly better
    "b": np.array([0.001, 0.02, 0.003, 0.015, 0.002, 0.01]),  # p < 0.05, Holm p > 0.05
    "c": np.array([-0.03, 0.01, -0.02, 0.005, -0.01, 0.0]),  # noisy: the largest p
}
ECE_BASE = np.array([0.10, 0.12, 0.11, 0.09, 0.10, 0.11])
ECE_DIFFS = {  # lower is better: a lowers the calibration error on every seed
    "a": np.array([-0.02, -0.03, -0.025, -0.02, -0.03, -0.025]),
    "b": np.array([0.0, 0.001, -0.001, 0.0, 0.0, 0.0]),
    "c": np.array([0.01, 0.02, 0.015, 0.01, 0.02, 0.015]),
}


def _values() -> dict[str, dict[str, list[float]]]:
    values = {"baseline": {"val_acc": list(BASE), "test_ece": list(ECE_BASE)}}
    for name in DIFFS:
        values[name] = {
            "val_acc": list(BASE + DIFFS[name]),
            "test_ece": list(ECE_BASE + ECE_DIFFS[name]),
        }
    return values


def test_verdict_md_prints_the_means_differences_holm_p_and_words_worked_by_hand() -> None:
    v = judge(_values(), baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=SEEDS)  # fmt: skip
    text = verdict_markdown(v, labels={"a": "epsilon=2"})
    rows = table_rows(text)
    for metric, base, diffs in (("val_acc", BASE, DIFFS), ("test_ece", ECE_BASE, ECE_DIFFS)):
        names = list(diffs)
        raw = [float(sps.ttest_rel(base + diffs[n], base).pvalue) for n in names]
        corrected = dict(zip(names, holm_by_hand(raw), strict=True))
        for name in names:
            cells = rows[(name, metric)]
            assert float(cells[2]) == pytest.approx((base + diffs[name]).mean(), abs=5e-5)
            assert float(cells[3]) == pytest.approx(base.mean(), abs=5e-5)  # the baseline's
            delta, low, high = difference(cells[4])
            assert delta == pytest.approx(diffs[name].mean(), abs=5e-5)
            # a bootstrap CI of the mean lies between the smallest and largest difference
            assert diffs[name].min() - 5e-5 <= low <= delta <= high <= diffs[name].max() + 5e-5
            assert cells[5] == f"{corrected[name]:.3g}"  # as printed: 3 significant digits
    by = {(r[0].split(" (")[0], r[1]): r[6] for r in rows.values()}
    # b's raw p is below 0.05, its Holm p (second smallest of three, times 2) is not
    raw = [float(sps.ttest_rel(BASE + DIFFS[n], BASE).pvalue) for n in DIFFS]
    assert raw[1] < 0.05 < holm_by_hand(raw)[1] == 2 * raw[1]
    assert by == {
        ("a", "val_acc"): "better",
        ("b", "val_acc"): "inconclusive",  # "better" on the uncorrected p
        ("c", "val_acc"): "inconclusive",
        ("a", "test_ece"): "better",  # lower calibration error
        ("b", "test_ece"): "equivalent",  # within ±0.005 of the baseline
        ("c", "test_ece"): "worse",
    }
    assert "a (epsilon=2)" in text
    assert "Confirm seeds 10000, 10001, 10002, 10003, 10004, 10005" in text


def test_the_headline_shows_the_winners_difference_holm_p_and_selection_bias() -> None:
    v = judge(_values(), baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=SEEDS)  # fmt: skip
    m = re.fullmatch(
        r"a vs baseline on val_acc over (\d+) fresh seeds: ([+-][\d.]+) \(95% CI ([+-][\d.]+)\.\."
        r"([+-][\d.]+), Holm p ([\d.e-]+)\): (\w+); search ([\d.]+) -> confirmed ([\d.]+) "
        r"\(([+-][\d.]+) selection bias\)",
        v.headline,
    )
    assert m, v.headline
    names = list(DIFFS)
    raw = [float(sps.ttest_rel(BASE + DIFFS[n], BASE).pvalue) for n in names]
    confirmed = (BASE + DIFFS["a"]).mean()
    assert int(m[1]) == len(SEEDS)
    assert float(m[2]) == pytest.approx(DIFFS["a"].mean(), abs=5e-5)
    assert DIFFS["a"].min() <= float(m[3]) <= float(m[4]) <= DIFFS["a"].max()
    assert m[5] == f"{holm_by_hand(raw)[0]:.3g}" != f"{raw[0]:.3g}"  # corrected, not the raw p
    assert m[6] == "better"
    assert float(m[7]) == 0.7 and float(m[8]) == pytest.approx(confirmed, abs=5e-5)
    assert float(m[9]) == pytest.approx(0.7 - confirmed, abs=5e-5)
    # best.json's block carries the same numbers
    block = v.to_dict()
    row = next(c for c in block["comparisons"] if (c["config"], c["metric"]) == ("a", "val_acc"))
    assert row["p_holm"] == pytest.approx(holm_by_hand(raw)[0], rel=1e-9)
    assert row["p"] == pytest.approx(raw[0], rel=1e-9)
    assert row["baseline_mean"] == pytest.approx(BASE.mean(), rel=1e-12)
    assert block["headline"] == v.headline


def test_under_several_teachers_the_table_reads_teacher_means_and_their_t_test() -> None:
    """Three teachers, three seeds each, one seed of config a missing under teacher 1: the
    mean is the mean of teacher means, p the one-sample t-test of the teacher-level mean
    differences, Holm across the two configs, sd_teacher and sd_seed the one-way ANOVA's."""
    base = np.array([[0.60, 0.62, 0.61], [0.55, 0.56, 0.54], [0.65, 0.64, 0.66]])
    gain_a = np.array([[0.03, 0.02, 0.025], [0.01, np.nan, 0.012], [0.02, 0.03, 0.028]])
    gain_b = np.array([[0.00, 0.01, 0.005], [0.004, 0.002, 0.0], [-0.002, 0.006, 0.001]])
    values = {
        "baseline": {"val_acc": base.tolist()},
        "a": {"val_acc": (base + gain_a).tolist()},
        "b": {"val_acc": (base + gain_b).tolist()},
    }
    v = judge(values, baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=[1, 2, 3], teachers=[0, 1, 2])  # fmt: skip
    text = verdict_markdown(v)
    rows = table_rows(text)

    def teacher_means(x: np.ndarray) -> np.ndarray:
        return np.array([np.nanmean(row) for row in x])

    raw = [float(sps.ttest_1samp(teacher_means(g), 0.0).pvalue) for g in (gain_a, gain_b)]
    corrected = holm_by_hand(raw)
    for name, gain, p in (("a", gain_a, corrected[0]), ("b", gain_b, corrected[1])):
        cells = rows[(name, "val_acc")]
        assert float(cells[2]) == pytest.approx(teacher_means(base + gain).mean(), abs=5e-5)
        assert float(cells[3]) == pytest.approx(teacher_means(base).mean(), abs=5e-5)
        assert difference(cells[4])[0] == pytest.approx(teacher_means(gain).mean(), abs=5e-5)
        assert cells[5] == f"{p:.3g}"
        groups = [g[np.isfinite(g)] for g in gain]
        sizes = np.array([len(g) for g in groups], dtype=float)
        n, k = sizes.sum(), len(groups)
        ms_within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
        grand = np.concatenate(groups).mean()
        ms_between = (sizes * (np.array([g.mean() for g in groups]) - grand) ** 2).sum() / (k - 1)
        n0 = (n - (sizes**2).sum() / n) / (k - 1)
        sd_teacher = math.sqrt(max(0.0, (ms_between - ms_within) / n0))
        assert float(cells[7]) == pytest.approx(sd_teacher, abs=5e-5)
        assert float(cells[8]) == pytest.approx(math.sqrt(ms_within), abs=5e-5)
    a = next(c for c in v.comparisons if c.config == "a" and c.metric == "val_acc")
    assert a.n_pairs == 8
    assert "over 3 teachers x 3 fresh seeds" in v.headline
    assert f"Holm p {corrected[0]:.3g}" in v.headline


def test_best_jsons_block_holds_the_rounds_seeds_and_teachers_as_strict_json() -> None:
    """The verdict's JSON block: each look's seeds, level, decision and comparisons, the seeds
    and teachers as lists, and every non-finite number as null (strict JSON)."""
    import dataclasses
    import json

    from dgkd.search.verdict import Round

    v = judge(_values(), baseline="baseline", winner="a", winner_search_value=float("nan"),
              metric="val_acc", seeds=SEEDS, teachers=[3])  # fmt: skip
    v = dataclasses.replace(v, rounds=(Round.of(v, 1, 0.005), Round.of(v, 2, 0.048)))
    raw = v.to_dict()
    fields = {f.name for f in dataclasses.fields(v)}
    assert set(raw) == fields | {"headline"}  # every field once, under its own name
    assert isinstance(raw["seeds"], list) and isinstance(raw["teachers"], list)
    block = json.loads(json.dumps(raw, allow_nan=False))
    assert block["seeds"] == SEEDS and block["teachers"] == [3]
    assert block["winner_search_value"] is None
    assert block["winner_confirmed_value"] == pytest.approx((BASE + DIFFS["a"]).mean())
    # a better, b and c inconclusive on val_acc: neither look is decided
    looks = [(r["look"], r["seeds"], r["level"], r["decided"]) for r in block["rounds"]]
    assert looks == [(1, 6, 0.005, False), (2, 6, 0.048, False)]
    first = {c["config"]: c for c in block["rounds"][0]["comparisons"]}
    assert set(first) == {"a", "b", "c"} and {c["metric"] for c in first.values()} == {"val_acc"}
    assert first["a"]["delta"] == pytest.approx(DIFFS["a"].mean())
    assert first["a"]["verdict"] == "better" and first["a"]["sd_teacher"] is None  # one teacher


def test_verdict_md_lists_every_rounds_comparisons_and_why_the_stage_stopped() -> None:
    import dataclasses

    from dgkd.search.verdict import Round

    v = judge(_values(), baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=SEEDS)  # fmt: skip
    v = dataclasses.replace(v, rounds=(Round.of(v, 1, 0.005), Round.of(v, 2, 0.048)), looks=3)
    text = verdict_markdown(v, labels={"a": "epsilon=2"})
    assert text.split("\n\n")[3].endswith(
        " At this stage's last look, better and worse needed a corrected p below 0.05 (the "
        "sequential design's level; see the rounds below)."
    )
    section = text.split("\n\n## Rounds\n\n", 1)[1].split("\n\n")  # a section of its own
    assert section[0].endswith(
        "with at most 3 looks at an overall level of 0.05, so a look's better or worse needs the "
        "corrected p below that look's level. It stopped after round 2: the seed budget was "
        "spent."  # b and c are inconclusive at the last look
    )
    lines = section[1].splitlines()
    assert lines[:2] == [
        "| round | seeds per teacher | level | config | difference (95% CI) | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    on_metric = {c.config: c for c in v.comparisons if c.metric == "val_acc"}
    expected = []
    for look, level in ((1, "0.005"), (2, "0.048")):
        for name in ("a", "b", "c"):
            c = on_metric[name]
            expected.append([
                str(look), "6", level, "a (epsilon=2)" if name == "a" else name,
                f"{c.delta:+.4f} ({c.ci_low:+.4f}, {c.ci_high:+.4f})", f"{c.p_holm:.3g}",
                c.verdict,
            ])  # fmt: skip
    assert rows == expected
    clear = {k: _values()[k] for k in ("baseline", "a")}  # a alone: better at once
    v = judge(clear, baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=SEEDS)  # fmt: skip
    v = dataclasses.replace(v, rounds=(Round.of(v, 1, 0.005),), looks=3)
    assert "It stopped after round 1: every verdict on the objective was decisive." in (
        verdict_markdown(v, labels={})
    )
    two = verdict_markdown(dataclasses.replace(v, looks=2), labels={})  # the fewest looks
    assert "At this stage's last look, better and worse needed a corrected p below" in two
    assert "with at most 2 looks" in two


def test_verdict_md_says_how_it_was_computed_for_one_teacher_and_for_several() -> None:
    from dgkd.metricspec import spec

    v = judge(_values(), baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=SEEDS)  # fmt: skip
    paragraphs = verdict_markdown(v).split("\n\n")
    assert paragraphs[2] == (
        "Confirm seeds 10000, 10001, 10002, 10003, 10004, 10005: never used by the search. Each "
        "row is a config minus the baseline (baseline), paired by seed; p is the paired t-test, "
        "Holm-corrected across the configs for each metric."
    )
    head = "| config | metric | mean | baseline | difference (95% CI) | p (Holm) | verdict |"
    rule = "|---|---|---|---|---|---|---|"
    assert paragraphs[4].splitlines()[:2] == [head, rule]
    metrics = dict.fromkeys(c.metric for c in v.comparisons)  # each judged metric, in order
    ropes = ", ".join(f"{m} ±{spec(m).rope:g}" for m in metrics)
    assert "val_acc ±0.005, " in ropes and "test_kl_to_teacher ±0.01" in ropes
    assert paragraphs[3].endswith(f" Ropes: {ropes}.")
    base = [[0.60, 0.62], [0.55, 0.56]]
    gain = [[x + 0.02 for x in t] for t in base]
    values = {"baseline": {"val_acc": base}, "a": {"val_acc": gain}}
    v = judge(values, baseline="baseline", winner="a", winner_search_value=0.7,
              metric="val_acc", seeds=[7, 8], teachers=[3, 4])  # fmt: skip
    paragraphs = verdict_markdown(v).split("\n\n")
    assert paragraphs[4].splitlines()[:2] == [f"{head} sd_teacher | sd_seed |", f"{rule}---|---|"]
    assert paragraphs[2] == (
        f"Confirm seeds 7, 8 (never used by the search), each under teacher seeds 3, 4: {v.runs} "
        "per config. Each row is a config minus the baseline (baseline), paired by teacher and "
        "seed; teachers are a random factor: mean = the mean over teachers of the seed means, the "
        "95% CI a two-level bootstrap (teachers, then seeds within each), p the one-sample t-test "
        "of the teacher-level mean differences, Holm-corrected across the configs for each "
        "metric; sd_teacher and sd_seed split the differences' spread."
    )


@pytest.mark.parametrize("teachers", [[0], [3, 4]])
def test_without_a_baseline_verdict_md_says_nothing_was_compared_and_how_to_compare(
    teachers: list[int],
) -> None:
    one = [0.60, 0.62]
    values = {"a": {"val_acc": [one] * len(teachers) if len(teachers) > 1 else one}}
    v = judge(values, baseline=None, winner="a", winner_search_value=0.7, metric="val_acc",
              seeds=[7, 8], teachers=teachers)  # fmt: skip
    under = " under teacher seeds 3, 4" if len(teachers) > 1 else ""
    assert verdict_markdown(v) == (
        "# Verdict\n\n"
        "a: search 0.7000 -> confirmed 0.6100 (+0.0900 selection bias); no baseline to compare "
        "with\n\n"
        f"Confirm seeds 7, 8{under}: never used by the search. The study has no baseline point, "
        "so no config was compared with one; give the study an `enqueue` point (for example "
        "`enqueue = [{ epsilon = 0.0 }]`: DKD) to get differences, p-values and verdicts.\n"
    )


def test_equivalence_under_teachers_reads_the_teacher_means_interval_and_the_looks_level() -> None:
    """Under 3 teachers a config is +0.004, -0.004 and +0.003 against the baseline on every seed:
    the two-level bootstrap CI lies inside val_acc's rope of 0.005, but the t-interval on the 3
    teacher means (0.001 ± 4.30 x 0.00436 / sqrt(3) = ± 0.0108) does not: inconclusive, not
    equivalent. And a difference with p 0.00096 (one config: its Holm p) is better at level 0.05
    but not at a sequential look's level of 0.0005."""
    seeds = [1, 2, 3, 4]
    base = [[0.60, 0.61, 0.62, 0.63]] * 3
    shifted = [[x + d for x in base[0]] for d in (0.004, -0.004, 0.003)]
    v = judge({"baseline": {"val_acc": base}, "a": {"val_acc": shifted}}, baseline="baseline",
              winner="a", winner_search_value=0.7, metric="val_acc", seeds=seeds,
              teachers=[0, 1, 2])  # fmt: skip
    c = next(c for c in v.comparisons if c.metric == "val_acc")
    assert -0.005 < c.ci_low < c.ci_high < 0.005  # the bootstrap CI alone would say equivalent
    half = sps.t.ppf(0.975, 2) * np.std([0.004, -0.004, 0.003], ddof=1) / math.sqrt(3)
    assert 0.001 + half > 0.005
    assert c.verdict == "inconclusive"
    gain = {"val_acc": list(BASE + DIFFS["a"])}
    p = sps.ttest_rel(BASE + DIFFS["a"], BASE).pvalue
    assert 0.0005 < p < 0.05
    for alpha, word in ((0.05, "better"), (0.0005, "inconclusive")):
        v = judge({"baseline": {"val_acc": list(BASE)}, "a": gain}, baseline="baseline",
                  winner="a", winner_search_value=0.7, metric="val_acc", seeds=SEEDS,
                  alpha=alpha)  # fmt: skip
        assert next(c for c in v.comparisons if c.metric == "val_acc").verdict == word
