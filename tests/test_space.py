"""Tests for dgkd.space: packaged spaces, validation messages, Optuna distributions and grids."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from dgkd.space import Param, SpecError, available, load_space, space_from_table


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_packaged_spaces_load() -> None:
    names = available("search_spaces")
    assert {"dgkd", "eps", "dkd", "temperature"} <= set(names)
    for name in names:
        space = load_space(name)
        assert space.searched(), name


def test_eps_space_searches_epsilon_from_zero_with_dkd_defaults_fixed() -> None:
    space = load_space("eps")
    (eps,) = space.searched()
    assert eps.name == "epsilon" and eps.low == 0.0 and eps.high >= 6.0
    assert space.fixed_values() == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}


def test_dgkd_and_dkd_spaces() -> None:
    assert {p.name for p in load_space("dgkd").searched()} == {
        "alpha",
        "beta",
        "epsilon",
        "temperature",
    }
    dkd = load_space("dkd")
    assert "epsilon" not in {p.name for p in dkd.searched()}
    assert dkd.fixed_values() == {"epsilon": 0.0}
    assert dkd["alpha"].log and dkd["alpha"].low > 0


def test_suggest_and_distributions_agree() -> None:
    space = load_space("dgkd")
    dists = space.distributions()
    assert isinstance(dists["alpha"], optuna.distributions.FloatDistribution)
    assert dists["alpha"].log
    trial = optuna.trial.FixedTrial({"alpha": 2.0, "beta": 4.0, "epsilon": 0.0, "temperature": 3})
    assert space.suggest(trial) == {"alpha": 2.0, "beta": 4.0, "epsilon": 0.0, "temperature": 3}


def test_int_and_categorical_params(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[epochs]
type = "int"
low = 2
high = 10
step = 2

[optimizer]
type = "categorical"
choices = ["adam", "sgd"]

[milestones]
type = "categorical"
choices = ["5,8", "6"]
""",
    )
    space = load_space(path)
    assert space.grid() == {
        "epochs": [2, 4, 6, 8, 10],
        "optimizer": ["adam", "sgd"],
        "milestones": ["5,8", "6"],
    }
    assert isinstance(space.distributions()["epochs"], optuna.distributions.IntDistribution)
    trial = optuna.trial.FixedTrial({"epochs": 4, "optimizer": "sgd", "milestones": "6"})
    assert space.suggest(trial) == {"epochs": 4, "optimizer": "sgd", "milestones": "6"}


def test_float_grid_needs_step(tmp_path: Path) -> None:
    stepped = load_space(write(tmp_path, '[epsilon]\ntype="float"\nlow=0.0\nhigh=1.0\nstep=0.25\n'))
    assert stepped.grid() == {"epsilon": [0.0, 0.25, 0.5, 0.75, 1.0]}
    assert load_space("eps").grid() is None


def test_contains() -> None:
    p = Param("epsilon", "float", low=0.0, high=10.0)
    assert p.contains(0.0) and p.contains(10) and not p.contains(-1) and not p.contains("x")
    q = Param("epochs", "int", low=2, high=10, step=2)
    assert q.contains(4) and not q.contains(5) and not q.contains(4.5)
    c = Param("optimizer", "categorical", choices=("adam", "sgd"))
    assert c.contains("sgd") and not c.contains("adamw")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[epsilon]\ntype="float"\nlow=0.0\nhigh=1.0\nbogus=1\n', "epsilon.bogus: unknown key"),
        ('[nonsense]\ntype="float"\nlow=0.0\nhigh=1.0\n', "nonsense: unknown config field"),
        ('[epsilon]\ntype="real"\nlow=0.0\nhigh=1.0\n', "epsilon.type: must be one of"),
        ("[epsilon]\nlow=0.0\nhigh=1.0\n", "epsilon: needs type"),
        ('[epsilon]\ntype="float"\nlow=2.0\nhigh=1.0\n', "low (2.0) must be below high (1.0)"),
        ('[epsilon]\ntype="float"\nlow=0.0\n', "epsilon.high: missing"),
        ('[epsilon]\ntype="float"\nlow="a"\nhigh=1.0\n', "epsilon.low: must be a finite float"),
        ('[alpha]\ntype="float"\nlow=0.0\nhigh=1.0\nlog=true\n', "must be > 0 with log = true"),
        ('[epsilon]\ntype="float"\nlow=0.0\nhigh=1.0\nstep=0.3\n', "is not a multiple of it"),
        (
            '[epochs]\ntype="float"\nlow=1.0\nhigh=4.0\n',
            'epochs is an integer field; use type = "int"',
        ),
        ('[epochs]\ntype="int"\nlow=1.5\nhigh=4\n', "epochs.low: must be a finite int"),
        ('[method]\ntype="categorical"\nchoices=[]\n', "method.choices: must be a non-empty"),
        ('[method]\ntype="categorical"\nchoices=["dkd","dkd"]\n', "must be distinct"),
        ('[method]\ntype="categorical"\nchoices=[1, 2]\n', "method is a string field"),
        ('[alpha]\nvalue="one"\n', "alpha is a float field"),
        ("[alpha]\nvalue=1.0\nlow=0.0\n", "a fixed parameter (value = ...) takes no low"),
        ("epsilon = 3\n", "epsilon: must be a table"),
        ("", "the space has no parameters"),
    ],
)
def test_invalid_spaces_name_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message


def test_malformed_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[epsilon]\ntype = "float"\nlow = 0.0\nhigh = = 1\n')
    with pytest.raises(SpecError, match=r"s\.toml: line 4: "):
        load_space(path)


def test_unknown_space_name_lists_the_packaged_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown search space 'nope'; choose one of: .*eps"):
        load_space("nope")
    with pytest.raises(SpecError, match="not found"):
        load_space("/nonexistent/space.toml")


def test_space_from_table_keeps_order_and_source() -> None:
    space = space_from_table(
        "inline", {"beta": {"value": 2.0}, "epsilon": {"type": "float", "low": 0, "high": 1}}, "x"
    )
    assert [p.name for p in space.params] == ["beta", "epsilon"]
    assert space.source == "x" and space["epsilon"].low == 0.0
    assert isinstance(space["epsilon"].low, float)
