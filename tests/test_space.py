"""Tests for dgkd.space: packaged spaces, validation messages, Optuna distributions and grids."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from dgkd.config import TrainConfig
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


def test_eps_space_searches_epsilon_from_zero_with_the_default_setups_loss_fixed() -> None:
    space = load_space("eps")
    (eps,) = space.searched()
    assert eps.name == "epsilon" and eps.low == 0.0 and eps.high >= 6.0
    defaults = TrainConfig()
    assert space.fixed_values() == {
        "alpha": defaults.alpha, "beta": defaults.beta, "temperature": defaults.temperature
    }  # fmt: skip


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


# --- boundaries --------------------------------------------------------------------------------


def _table(**spec) -> dict:
    return {"x": spec}


def _load(name: str, spec: dict):
    """One parameter ``name`` with ``spec``, validated as a space (source "s")."""
    return space_from_table("s", {name: spec}, "s")[name]


def _error(name: str, spec: dict) -> str:
    with pytest.raises(SpecError) as info:
        _load(name, spec)
    return str(info.value)


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        # low == high is a fixed value, not a range
        ("epsilon", {"type": "float", "low": 1.0, "high": 1.0}, "s: epsilon: low (1.0) must be "),
        (
            "epochs",
            {"type": "int", "low": 3, "high": 3},
            "s: epochs: low (3) must be below high (3)",
        ),
        ("epsilon", {"type": "float", "low": 2, "high": 1}, "low (2.0) must be below high (1.0)"),
        # int ranges take ints only (and no booleans)
        ("epochs", {"type": "int", "low": 1, "high": 4.0}, "s: epochs.high: must be a finite int"),
        ("epochs", {"type": "int", "low": True, "high": 4}, "s: epochs.low: must be a finite int"),
        ("epochs", {"type": "int", "low": 1, "high": 9, "step": 1.5}, "epochs.step: must be a "),
        ("epochs", {"type": "int", "low": 1, "high": 9, "step": True}, "positive int, got True"),
        ("epochs", {"type": "int", "low": 1, "high": 10, "step": 4}, "(9) is not a multiple of it"),
        ("epochs", {"type": "int", "low": 1}, "s: epochs.high: missing; a int parameter needs"),
        # floats: finite, not booleans
        ("alpha", {"type": "float", "low": 0.0, "high": math.inf}, "alpha.high: must be a finite"),
        ("alpha", {"type": "float", "low": math.nan, "high": 1.0}, "alpha.low: must be a finite"),
        (
            "alpha",
            {"type": "float", "low": False, "high": 1.0},
            "alpha.low: must be a finite float",
        ),
        # steps: positive, a divisor of the range, not larger than it
        ("alpha", {"type": "float", "low": 0.0, "high": 1.0, "step": 0.0}, "must be a positive"),
        ("alpha", {"type": "float", "low": 0.0, "high": 1.0, "step": -0.5}, "alpha.step: must be"),
        ("alpha", {"type": "float", "low": 0.0, "high": 1.0, "step": 2.0}, "is not a multiple"),
        ("alpha", {"type": "float", "low": 0.0, "high": 1.0, "step": 0.4}, "(1) is not a multiple"),
        # log scale: strictly positive low, no grid step (except int step 1)
        ("alpha", {"type": "float", "low": 0.0, "high": 1.0, "log": True}, "got 0.0"),
        ("alpha", {"type": "float", "low": -1.0, "high": 1.0, "log": True}, "alpha.low: must be >"),
        ("epochs", {"type": "int", "low": 0, "high": 4, "log": True}, "with log = true, got 0"),
        ("alpha", {"type": "float", "low": 1, "high": 2, "log": 1}, "alpha.log: must be true or "),
        ("alpha", {"type": "float", "low": 1, "high": 2, "log": True, "step": 0.5}, "cannot be"),
        ("epochs", {"type": "int", "low": 1, "high": 9, "log": True, "step": 2}, "combined with"),
        # types
        ("method", {"type": "float", "low": 0.0, "high": 1.0}, "method is a string field; use"),
        ("epochs", {"type": "int", "low": 1, "high": 4, "choices": [1]}, "choices: only for type"),
        ("method", {"type": "categorical", "choices": "dkd"}, "method.choices: must be a non-emp"),
        ("method", {"type": "categorical", "choices": [{"a": 1}]}, "numbers, strings or booleans"),
        ("method", {"type": "categorical", "choices": ["dkd"], "low": 1}, "takes only choices"),
        ("epochs", {"value": 2.5}, "s: epochs.value: epochs is an integer field, got 2.5"),
        ("alpha", {"type": "int", "value": 1.5}, "s: alpha.value: must be a int, got 1.5"),
        ("alpha", {"type": "float", "value": "1"}, "alpha.value: alpha is a float field"),
        ("amp", {"value": 1}, "s: amp.value: amp is a boolean field, got 1"),
        ("epochs", {"value": True}, "epochs.value: epochs is not a boolean field, got True"),
        ("method", {"value": True}, "s: method.value: method is a string field, got True"),
        ("alpha", {"value": True}, "s: alpha.value: alpha is a float field, got True"),
        ("milestones", {"value": True}, "milestones.value: milestones is not a boolean field"),
        ("alpha", {"type": "float"}, "s: alpha.low: missing; a float parameter needs low and high"),
    ],
)
def test_boundaries_are_refused_with_key_and_reason(name: str, spec: dict, expected: str) -> None:
    message = _error(name, spec)
    assert expected in message, message
    assert "\n" not in message


def test_boundaries_that_are_valid() -> None:
    # The smallest ranges: two ints, one step that spans the range, a tiny positive log low.
    two = _load("epochs", {"type": "int", "low": 1, "high": 2})
    assert (two.low, two.high, two.step, two.log) == (1, 2, None, False)
    assert two.grid() == [1, 2] and two.contains(1) and two.contains(2) and not two.contains(3)
    whole = _load("alpha", {"type": "float", "low": 0.5, "high": 1.5, "step": 1.0})
    assert whole.grid() == [0.5, 1.5] and whole.step == 1.0 and isinstance(whole.step, float)
    # A step that divides the range up to float rounding (0.3 / 0.1 = 2.9999999999999996).
    tenth = _load("alpha", {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1})
    assert tenth.grid() == [0.0, 0.1, 0.2, 0.3]
    assert tenth.contains(0.2) and tenth.contains(0.3) and not tenth.contains(0.3 + 1e-9)
    assert not tenth.contains(0.25) and not tenth.contains(0.4)
    tiny = _load("alpha", {"type": "float", "low": 1e-12, "high": 1.0, "log": True})
    assert tiny.log and tiny.low == 1e-12
    assert isinstance(tiny.distribution(), optuna.distributions.FloatDistribution)
    int_log = _load("epochs", {"type": "int", "low": 1, "high": 64, "log": True, "step": 1})
    assert int_log.log and int_log.step == 1 and isinstance(int_log.step, int)
    stepped = _load("epochs", {"type": "int", "low": 1, "high": 10, "step": 3})
    assert stepped.grid() == [1, 4, 7, 10]
    assert stepped.contains(7) and not stepped.contains(8) and not stepped.contains(13)
    dist = stepped.distribution()
    assert (dist.low, dist.high, dist.step, dist.log) == (1, 10, 3, False)
    assert two.distribution().step == 1
    # Floats given as integers become floats.
    assert _load("alpha", {"type": "float", "low": 0, "high": 2}).high == 2.0


def test_contains_edges() -> None:
    p = Param("epsilon", "float", low=0.0, high=10.0)
    assert p.contains(0) and p.contains(10.0) and p.contains(5)
    assert not p.contains(-1e-9) and not p.contains(10.000001)
    assert not p.contains(True) and not p.contains(None) and not p.contains([1.0])
    i = Param("epochs", "int", low=2, high=10)
    assert i.contains(2) and i.contains(10.0) and not i.contains(2.5) and not i.contains(11)
    s = Param("epsilon", "float", low=1.0, high=2.0, step=0.25)
    assert s.contains(1.25) and s.contains(1.25 + 1e-12) and not s.contains(1.3)
    fixed = Param("alpha", "float", value=2.0)
    assert fixed.contains(2.0) and fixed.contains(2) and not fixed.contains(2.5)


def test_fixed_values_infer_their_type() -> None:
    space = space_from_table(
        "s",
        {
            "epochs": {"value": 3},
            "alpha": {"value": 1.0},
            "method": {"value": "dkd"},
            "amp": {"value": True},
            "milestones": {"value": [5, 8]},
            "beta": {"type": "float", "value": 2},
            "epsilon": {"type": "float", "low": 0.0, "high": 1.0},
        },
        "s",
    )
    types = {p.name: p.type for p in space.params}
    assert types == {
        "epochs": "int",
        "alpha": "float",
        "method": "categorical",
        "amp": "categorical",
        "milestones": "categorical",
        "beta": "float",
        "epsilon": "float",
    }
    assert space["milestones"].value == (5, 8)
    assert [p.name for p in space.searched()] == ["epsilon"]
    assert space.fixed_values() == {
        "epochs": 3,
        "alpha": 1.0,
        "method": "dkd",
        "amp": True,
        "milestones": (5, 8),
        "beta": 2,
    }
    assert space["amp"].grid() == [True] and space["epochs"].fixed
    assert not space["epsilon"].fixed
    with pytest.raises(ValueError, match="parameter alpha is fixed; it has no distribution"):
        space["alpha"].distribution()
    with pytest.raises(KeyError):
        space["gamma"]
    assert space.distributions().keys() == {"epsilon"}


def test_categorical_choices_keep_their_values_and_order() -> None:
    p = _load("optimizer", {"type": "categorical", "choices": ["sgd", "adam"]})
    assert p.choices == ("sgd", "adam") and p.grid() == ["sgd", "adam"]
    dist = p.distribution()
    assert isinstance(dist, optuna.distributions.CategoricalDistribution)
    assert dist.choices == ("sgd", "adam")
    amp = _load("amp", {"type": "categorical", "choices": [True, False]})
    assert amp.choices == (True, False)
    # 1 and 1.0 are distinct choices (their repr differs), "1" too
    assert _load("alpha", {"type": "categorical", "choices": [1, 1.0]}).choices == (1, 1.0)


def test_grid_of_a_space_with_a_continuous_float_is_none() -> None:
    space = space_from_table(
        "s",
        {
            "epochs": {"type": "int", "low": 1, "high": 3},
            "epsilon": {"type": "float", "low": 0.0, "high": 1.0},
            "alpha": {"value": 1.0},
        },
        "s",
    )
    assert space.grid() is None
    gridded = space_from_table(
        "s",
        {
            "epochs": {"type": "int", "low": 1, "high": 3},
            "alpha": {"value": 1.0},
        },
        "s",
    )
    assert gridded.grid() == {"epochs": [1, 2, 3]}


def test_suggest_passes_bounds_step_and_log() -> None:
    space = space_from_table(
        "s",
        {
            "alpha": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
            "epsilon": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
            "epochs": {"type": "int", "low": 2, "high": 8, "step": 2},
            "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "beta": {"value": 8.0},
        },
        "s",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    got = space.suggest(trial)
    assert list(got) == ["alpha", "epsilon", "epochs", "batch_size", "optimizer"]
    assert trial.distributions == space.distributions()
    assert got["epsilon"] in (0.0, 0.5, 1.0) and got["epochs"] in (2, 4, 6, 8)
    assert 0.1 <= got["alpha"] <= 10.0 and 16 <= got["batch_size"] <= 256
    assert trial.distributions["alpha"].log and trial.distributions["batch_size"].log
    assert trial.distributions["epochs"].step == 2


def test_resolve_paths_and_names(tmp_path: Path) -> None:
    from dgkd.space import resolve_file

    (tmp_path / "mine.toml").write_text('[epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n')
    assert (
        resolve_file("mine.toml", "search_spaces", relative_to=tmp_path) == tmp_path / "mine.toml"
    )
    assert load_space("mine.toml", relative_to=tmp_path).name == "mine"
    with pytest.raises(SpecError, match=r"^search space file mine\.toml not found$"):
        resolve_file("mine.toml", "search_spaces")
    with pytest.raises(SpecError, match=r"^study file x/y\.toml not found$"):
        resolve_file("x/y.toml", "studies")
    with pytest.raises(SpecError, match=r"^unknown study 'eps\*'; choose one of: .*eps_sweep"):
        resolve_file("eps*", "studies")
    with pytest.raises(SpecError, match=r"^unknown search space '\.\.'; choose one of: dgkd, "):
        resolve_file("..", "search_spaces")
    assert resolve_file("eps", "search_spaces").name == "eps.toml"
    assert available("no_such_kind") == []
    assert available("studies") == sorted(available("studies"))


def test_unreadable_file_is_a_spec_error(tmp_path: Path) -> None:
    from dgkd.space import read_toml

    path = tmp_path / "bad.toml"
    path.write_bytes(b"\xff\xfe = 1\n")
    with pytest.raises(SpecError, match=r"bad\.toml: (cannot read|line 1)"):
        read_toml(path)
    with pytest.raises(SpecError, match=r"dir\.toml: cannot read"):
        (tmp_path / "dir.toml").mkdir()
        read_toml(tmp_path / "dir.toml")


def test_messages_list_what_is_allowed() -> None:
    assert _error("epsilon", {"type": "float", "low": 0.0, "high": 1.0, "bogus": 1}) == (
        "s: epsilon.bogus: unknown key; allowed: type, low, high, log, step, choices, value"
    )
    assert _error("epsilon", {"type": "real"}) == (
        "s: epsilon.type: must be one of float, int, categorical, got 'real'"
    )
    assert _error("method", {"type": "float", "low": 0.0, "high": 1.0}) == (
        's: method.type: method is a string field; use type = "categorical" or a fixed value'
    )
    assert _error("milestones", {"type": "float", "low": 0.0, "high": 1.0}) == (
        's: milestones.type: milestones is a list field; use type = "categorical" or a fixed value'
    )
    assert _error("epochs", {"type": "float", "low": 1.0, "high": 4.0}) == (
        's: epochs.type: epochs is an integer field; use type = "int"'
    )
    # A string field given type = "float" with a string value.
    assert _error("method", {"type": "float", "value": "dkd"}) == (
        "s: method.value: must be a float, got 'dkd'"
    )
    assert _error("milestones", {"value": "1,x"}) == (
        "s: milestones.value: milestones must be of type list of ints, got '1,x'"
    )
    # A float step with log is refused even when it is 1.
    log_step = {"type": "float", "low": 1.0, "high": 4.0, "log": True, "step": 1.0}
    assert _error("alpha", log_step) == "s: alpha.step: cannot be combined with log = true"


def test_the_field_name_is_found_in_sources_with_spaces() -> None:
    """An inline study space is named ``<file> [space]``: the field is still the parameter."""
    with pytest.raises(SpecError) as info:
        space_from_table("s", {"alpha": {"value": "x"}}, "my study.toml [space]")
    assert str(info.value) == "my study.toml [space]: alpha.value: alpha is a float field, got 'x'"


def test_a_param_built_without_bounds_is_refused_when_used() -> None:
    for low, high in ((0.0, None), (None, 1.0), (None, None)):
        p = Param("epsilon", "float", low=low, high=high, step=0.5)
        with pytest.raises(SpecError, match=r"^epsilon: a float or int parameter needs low and "):
            p.grid()
        with pytest.raises(SpecError, match="needs low and high"):
            p.contains(0.5)


def test_float_grid_rounds_away_representation_error() -> None:
    p = _load("alpha", {"type": "float", "low": 1000.1, "high": 1000.5, "step": 0.1})
    assert p.grid() == [1000.1, 1000.2, 1000.3, 1000.4, 1000.5]


def test_unknown_parameter_lookup_names_it() -> None:
    space = load_space("eps")
    with pytest.raises(KeyError, match="gamma"):
        space["gamma"]


def test_paths_are_told_from_names(tmp_path: Path) -> None:
    from dgkd.space import resolve_file

    # A slash or backslash makes a path (here missing), even without ".toml".
    with pytest.raises(SpecError, match=r"^search space file sub/eps not found$"):
        resolve_file("sub/eps", "search_spaces")
    with pytest.raises(SpecError, match=r"^search space file sub\\eps not found$"):
        resolve_file("sub\\eps", "search_spaces")
    # A kind with no packaged files lists none.
    with pytest.raises(SpecError) as info:
        resolve_file("x", "no_such_kind")
    assert str(info.value) == "unknown search space 'x'; choose one of: none, or a path to a .toml"


def test_toml_errors_keep_the_reason(tmp_path: Path) -> None:
    from dgkd.space import read_toml

    path = write(tmp_path, '[epsilon]\ntype = "float"\nlow = 0.0\nhigh = = 1\n')
    with pytest.raises(SpecError) as info:
        read_toml(path)
    assert str(info.value) == f"{path}: line 4: Invalid value (column 8)"
    path = write(tmp_path, "[epsilon]\nlow = [1,", "end.toml")
    with pytest.raises(SpecError) as info:
        read_toml(path)
    assert str(info.value).startswith(f"{path}: ") and "end of document" in str(info.value)
