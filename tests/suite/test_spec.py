"""Suite files: the shipped suites load, and every mistake is one line naming file and setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgkd.suite import SuiteError, available_suites, load_suite


def test_shipped_suites_load_with_four_setups_or_more():
    assert {"mnist1d_pairs", "cifar100_pairs"} <= set(available_suites())
    for name in ("mnist1d_pairs", "cifar100_pairs"):
        suite = load_suite(name)
        assert len(suite.setups) >= 4 and suite.description
        assert len({s.name for s in suite.setups}) == len(suite.setups)


def test_mnist1d_pairs_differ_in_gap_and_architecture():
    from dgkd.config import TrainConfig

    suite = load_suite("mnist1d_pairs")
    pairs = {
        (c.teacher, c.teacher_width, c.student, c.student_width)
        for c in (TrainConfig().replace(**s.overrides) for s in suite.setups)
    }
    assert len(pairs) == len(suite.setups)  # no two setups are the same pair
    assert len({p[2] for p in pairs}) >= 2  # more than one student architecture
    assert len({p[1] for p in pairs}) >= 2  # more than one teacher


def test_cifar100_pairs_carry_dkd_beta_per_pair():
    suite = load_suite("cifar100_pairs")
    beta = {s.name: s.overrides.get("beta", 8.0) for s in suite.setups}
    assert beta["resnet32x4-resnet8x4"] == 8.0 and beta["wrn_40_2-wrn_16_2"] == 6.0
    assert beta["resnet56-resnet20"] == 2.0
    assert all(s.study == "cifar100_r32x4_r8x4" for s in suite.setups)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[setup]]\nname = "a"\nstudy = "nope"\n', "setup 'a': unknown study 'nope'"),
        ('[[setup]]\nname = "a"\nset = { lr = 0.1, nope = 1 }\n', "unknown config field 'nope'"),
        ('[[setup]]\nname = "a"\nset = { epochs = "many" }\n', "epochs must be of type int"),
        ('[[setup]]\nname = "a"\nsett = { lr = 0.1 }\n', "sett: unknown key"),
        ('[[setup]]\nname = "a/b"\n', "plain directory name"),
        ('[[setup]]\nname = "a"\n[[setup]]\nname = "a"\n', "named twice"),
        ('description = "none"\n', "no setups"),
        ('[[setup]]\nname = "a"\nset = { seed = 3 }\n', "seed has no effect"),
        ("[[setup]\n", "line 1"),
    ],
)
def test_bad_suite_files_are_refused_in_one_line(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert message in text and "\n" not in text
    assert str(path) in text


def test_unknown_suite_lists_the_packaged_ones():
    with pytest.raises(SuiteError, match=r"unknown suite 'nope'; choose one of: .*mnist1d_pairs"):
        load_suite("nope")
