"""Teachers as a factor of an ablation: cells per (variant, teacher seed, seed), populations
per teacher, and statistics that treat the teacher as random, checked against runs.csv."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fakes import TINY_POOL_ARGS, TINY_POOLS
from scipy import stats as sps

from dgkd.cli import ablate_main
from dgkd.config import TrainConfig
from dgkd.teacher import teacher_key

from .helpers import rows


def test_three_teachers_three_seeds_from_the_command_line(capsys, tmp_path) -> None:
    argv = ["--variants", "no_grad_term", "--teachers", "3", "--seeds", "3", "--set", "epochs=3",
            "--set", "teacher_epochs=2", "--workers", "1", "--out", str(tmp_path),
            *TINY_POOL_ARGS]  # fmt: skip
    assert ablate_main(argv) == 0
    err = capsys.readouterr().err
    assert "2 variants x 3 teacher(s) x 3 seeds: 18 runs to train" in err
    d = tmp_path / "ablate" / "default"
    runs = rows(d / "runs.csv")
    assert len(runs) == 18 and list(runs[0])[:3] == ["variant", "teacher_seed", "seed"]
    assert sorted({(r["teacher_seed"], r["seed"]) for r in runs}) == [
        (str(t), str(s)) for t in range(3) for s in range(3)
    ]
    # one teacher per teacher seed, each the cache's teacher for that seed
    base = TrainConfig(epochs=3, teacher_epochs=2, **TINY_POOLS)
    keys = {r["teacher_seed"]: r["teacher_key"] for r in runs}
    assert keys == {str(t): teacher_key(base.replace(teacher_seed=t)) for t in range(3)}
    assert len(set(keys.values())) == 3
    # a teacher changes the students: the same seed and variant under two teachers differ
    by = {(r["variant"], int(r["teacher_seed"]), int(r["seed"])): r for r in runs}
    assert any(
        by[("full", 0, s)]["test_kl_to_teacher"] != by[("full", 1, s)]["test_kl_to_teacher"]
        for s in range(3)
    )

    # the statistics, recomputed here from runs.csv
    row = next(r for r in rows(d / "summary.csv") if r["variant"] == "no_grad_term")
    diffs = np.array(
        [[float(by[("no_grad_term", t, s)]["test_acc"]) - float(by[("full", t, s)]["test_acc"])
          for s in range(3)] for t in range(3)]
    )  # fmt: skip
    means = diffs.mean(1)
    assert float(row["test_acc_delta"]) == pytest.approx(means.mean())
    if np.ptp(means) > 0:
        p = sps.ttest_1samp(means, 0.0).pvalue
        assert float(row["test_acc_p"]) == pytest.approx(p, rel=1e-9)
        assert float(row["test_acc_p_holm"]) == pytest.approx(p, rel=1e-9)  # one comparison
    msw = ((diffs - means[:, None]) ** 2).sum() / (9 - 3)
    msb = 3 * ((means - means.mean()) ** 2).sum() / 2
    assert float(row["sd_seed"]) == pytest.approx(math.sqrt(msw), abs=1e-12)
    assert float(row["sd_teacher"]) == pytest.approx(math.sqrt(max(0, (msb - msw) / 3)), abs=1e-12)
    assert row["sd_teacher"] == row["test_acc_sd_teacher"] and row["n_teachers"] == "3"
    assert row["n_pairs"] == "9" and float(row["test_acc_delta_ci_low"]) <= means.mean()

    md = (d / "summary.md").read_text()
    assert "2 variants x 3 teachers (teacher seeds 0-2) x 3 seeds (0-2) = 18 runs" in md
    assert "two-level" in md and "teacher-level mean" in md and "| sd_teacher | sd_seed |" in md
    info = json.loads((d / "config.json").read_text())
    assert info["teacher_seeds"] == [0, 1, 2] and info["teachers"] == 3
    assert set(info["teacher_keys"].values()) == set(keys.values())

    # a rerun reuses every cell; another teacher count adds only the new teacher's cells
    assert ablate_main(argv) == 0
    assert "18 runs trained" not in capsys.readouterr().err
    more = [*argv[:3], "4", *argv[4:]]
    assert ablate_main(more) == 0
    assert "6 runs trained, 18 reused" in capsys.readouterr().err
    assert len(rows(d / "runs.csv")) == 24


def test_a_teacher_checkpoint_is_one_teacher_by_default(tmp_path) -> None:
    from dgkd.ablate import AblateError, AblationOptions, preflight, resolve_base

    base = resolve_base(overrides={"teacher_checkpoint": str(tmp_path / "t.pt"), "epochs": 2})
    assert preflight(base, AblationOptions(out_dir=tmp_path)).teacher_seeds == (0,)
    assert len(preflight(resolve_base(), AblationOptions(out_dir=tmp_path)).teacher_seeds) == 3
    with pytest.raises(AblateError, match="teacher_checkpoint names one teacher"):
        preflight(base, AblationOptions(out_dir=tmp_path, teachers=2))
