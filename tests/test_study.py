"""Tests for dgkd.study: the packaged studies, config assembly and every validation error."""

from __future__ import annotations

from pathlib import Path

import pytest

from dgkd.config import ConfigError, TrainConfig
from dgkd.study import SpecError, Study, available_studies, load_study

SHIPPED = (
    "eps_sweep",
    "eps_curve",
    "full",
    "dkd_baseline",
    "temperature",
    "smoke",
    "cifar100_r32x4_r8x4",
)


def write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_studies_load_and_make_valid_configs() -> None:
    assert set(SHIPPED) <= set(available_studies())
    for name in SHIPPED:
        study = load_study(name)
        assert study.name == name and study.description
        assert study.metric == "val_acc" and study.direction == "maximize"
        for params in study.enqueue:
            assert isinstance(study.config(params), TrainConfig)


def test_eps_sweep_is_the_dkd_baseline_plus_epsilon() -> None:
    study = load_study("eps_sweep")
    assert [p.name for p in study.space.searched()] == ["epsilon"]
    eps = study.space["epsilon"]
    assert eps.low == 0.0 < eps.high
    assert study.enqueue == ({"epsilon": 0.0},)
    assert (study.sampler, study.pruner, study.trials) == ("tpe", "median", 200)
    cfg = study.config({"epsilon": 3.0})
    assert (cfg.alpha, cfg.beta, cfg.temperature, cfg.epsilon) == (1.0, 1.0, 4.0, 3.0)
    assert cfg.method == "dgkd"


def test_eps_curve_is_eps_sweep_unpruned() -> None:
    sweep, curve = load_study("eps_sweep"), load_study("eps_curve")
    assert curve.pruner == "none" and sweep.pruner == "median"
    assert curve.space == sweep.space and curve.enqueue == sweep.enqueue
    assert curve.config({"epsilon": 1.0}) == sweep.config({"epsilon": 1.0})


def test_full_and_dkd_baseline_share_ranges_and_budget() -> None:
    full, dkd = load_study("full"), load_study("dkd_baseline")
    assert full.trials == dkd.trials
    for name in ("alpha", "beta", "temperature"):
        assert full.space[name] == dkd.space[name]
    assert dkd.config(dict(dkd.enqueue[0])).method == "dkd"
    assert dkd.config(dict(dkd.enqueue[0])).epsilon == 0.0


def test_smoke_is_tiny() -> None:
    cfg = load_study("smoke").config({"epsilon": 1.0})
    assert cfg.epochs <= 2 and cfg.teacher_epochs <= 2
    assert load_study("smoke").trials <= 10


def test_cifar100_recipe_is_dkds() -> None:
    study = load_study("cifar100_r32x4_r8x4")
    cfg = study.config({"epsilon": 1.0})
    assert (cfg.dataset, cfg.teacher, cfg.student) == ("cifar100", "resnet32x4", "resnet8x4")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
    assert (cfg.schedule, cfg.milestones, cfg.gamma) == ("multistep", (150, 180, 210), 0.1)
    assert (cfg.epochs, cfg.teacher_epochs, cfg.batch_size, cfg.warmup) == (240, 240, 64, 20)
    assert (cfg.alpha, cfg.beta, cfg.temperature) == (1.0, 8.0, 4.0)
    assert "GPU" in study.description and "data_root" in study.description


def test_config_order_base_overrides_fixed_params() -> None:
    study = load_study("eps_sweep")
    cfg = study.config({"epsilon": 2.5}, {"epochs": 3, "seed": 7})
    assert (cfg.epochs, cfg.seed, cfg.epsilon, cfg.beta) == (3, 7, 2.5, 1.0)
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        study.config({"epsilon": 1.0}, {"epochs": 0})


def test_check_overrides_refuses_space_parameters() -> None:
    study = load_study("eps_sweep")
    with pytest.raises(ConfigError, match="beta is set by the study's search space"):
        study.check_overrides({"beta": 2.0})
    assert study.check_overrides({"epochs": 5}).epochs == 5


def test_user_study_file_with_relative_space_and_inline_space(tmp_path: Path) -> None:
    write(tmp_path, '[temperature]\ntype = "float"\nlow = 2.0\nhigh = 3.0\n', "t.toml")
    study = load_study(write(tmp_path, 'space = "t.toml"\ntrials = 3\n[base]\nepochs = 2\n'))
    assert isinstance(study, Study) and study.name == "mine" and study.trials == 3
    assert study.space["temperature"].high == 3.0
    inline = load_study(
        write(
            tmp_path,
            'sampler = "grid"\n[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
            "step = 0.5\n",
            "inline.toml",
        )
    )
    assert inline.space.grid() == {"epsilon": [0.0, 0.5, 1.0]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('space = "eps"\nbogus = 1\n', "bogus: unknown key"),
        ("trials = 3\n", 'space: missing; name a search space, e.g. space = "eps"'),
        ('space = "nope"\n', "unknown search space 'nope'"),
        ('space = "eps"\nsampler = "annealing"\n', "sampler: must be one of tpe, random"),
        ('space = "eps"\npruner = "asha"\n', "pruner: must be one of median, hyperband, none"),
        ('space = "eps"\ndirection = "up"\n', "direction: must be one of maximize, minimize"),
        ('space = "eps"\nmetric = "test_acc"\n', "measured on the test split"),
        ('space = "eps"\nmetric = "val_loss"\n', "metric: must be one of val_acc"),
        ('space = "eps"\nmetric = "train_nc1"\n', "train_nc1 is measured only at the end"),
        ('space = "eps"\ntrials = 0\n', "trials: must be >= 1, got 0"),
        ('space = "eps"\ntrials = "ten"\n', "trials: must be of type int"),
        ('space = "eps"\ntrials = true\n', "trials: must be of type int"),
        ('space = "eps"\nseed = 1.5\n', "seed: must be of type int"),
        ('space = "eps"\nsampler = "grid"\n', "grid needs a step for float parameter epsilon"),
        ('space = "eps"\n[base]\nbogus = 1\n', "base.bogus: unknown config field"),
        ('space = "eps"\n[base]\nepochs = "ten"\n', "base.epochs: epochs must be of type int"),
        ('space = "eps"\n[base]\nepochs = 2.5\n', "base.epochs: epochs must be of type int"),
        ('space = "eps"\n[base]\nlr = -1.0\n', "base: lr must be > 0"),
        ('space = "eps"\n[base]\nbeta = 2.0\n', "base.beta: also set by space"),
        ('space = "eps"\n[base]\namp = "yes"\n', "base.amp: amp must be of type bool"),
        ('space = "eps"\nenqueue = [{ epsilon = 99.0 }]\n', "outside the parameter's range"),
        ('space = "eps"\nenqueue = [{ alpha = 1.0 }]\n', "enqueue[0].alpha: not a searched"),
        ('space = "eps"\nenqueue = [3]\n', "enqueue[0]: must be a table"),
    ],
)
def test_invalid_studies_name_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_study(path)
    message = str(info.value)
    assert expected in message, message
    assert str(path) in message or "search space" in message, message


def test_bad_bounds_are_rejected_against_the_config(tmp_path: Path) -> None:
    write(tmp_path, '[temperature]\ntype = "float"\nlow = 0.0\nhigh = 4.0\n', "t.toml")
    with pytest.raises(SpecError, match=r"t\.toml: temperature\.bounds: temperature must be > 0"):
        load_study(write(tmp_path, 'space = "t.toml"\n'))
    write(tmp_path, '[epochs]\ntype = "int"\nlow = 0\nhigh = 4\n', "e.toml")
    with pytest.raises(SpecError, match="epochs must be >= 1"):
        load_study(write(tmp_path, 'space = "e.toml"\n'))


def test_malformed_study_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'space = "eps"\ntrials = \n')
    with pytest.raises(SpecError, match=r"mine\.toml: line 2: "):
        load_study(path)


def test_unknown_study_lists_the_shipped_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown study 'nope'; choose one of: .*eps_sweep"):
        load_study("nope")


# --- boundaries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('space = "eps"\ntrials = -1\n', "mine.toml: trials: must be >= 1, got -1"),
        ('space = "eps"\ndescription = 3\n', "mine.toml: description: must be of type str, got 3"),
        ('space = "eps"\nenqueue = { epsilon = 1.0 }\n', "enqueue: must be of type list"),
        ('space = "eps"\nbase = 1\n', "mine.toml: base: must be of type dict, got 1"),
        ("space = 3\n", "mine.toml: space: must be a space name, a path or a table"),
        ('space = "eps"\n[base]\nepochs = true\n', "base.epochs: epochs must be of type int"),
        ('space = "eps"\n[base]\namp = 1\n', "mine.toml: base.amp: amp must be of type bool"),
        ('space = "eps"\n[base.epochs]\nx = 1\n', "base.epochs: must be a value, not a table"),
        ('space = "eps"\nmetric = "test_ece"\n', "metric: test_ece is measured on the test split"),
        ('space = "eps"\nmetric = 3\n', "mine.toml: metric: must be of type str, got 3"),
        ('space = "eps"\nmetric = "grad_cos"\n', "pruner: grad_cos is measured only at the end"),
        ("[space.alpha]\nvalue = 1.0\n", "every parameter is fixed; nothing to search"),
        (
            '[space.method]\ntype = "categorical"\nchoices = ["dkd", "nope"]\n',
            "mine.toml [space]: method.choices: method must be one of ce, kd, dkd, dgkd",
        ),
        (
            '[space.val_fraction]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n',
            "[space]: val_fraction.bounds: val_fraction must be in [0, 1), got 1.0",
        ),
        (
            '[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
            '[space.optimizer]\nvalue = "nope"\n',
            "[space]: optimizer.value: optimizer must be one of sgd, adam, adamw",
        ),
        (
            "enqueue = [{ epsilon = 0.25 }]\n"
            '[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\nstep = 0.5\n',
            "enqueue[0].epsilon: 0.25 is outside the parameter's range",
        ),
    ],
)
def test_study_boundaries_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_study(path)
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message


def test_study_boundaries_that_are_valid(tmp_path: Path) -> None:
    study = load_study(
        write(
            tmp_path,
            'space = "eps"\ntrials = 1\nseed = -3\nmetric = "train_loss"\ndirection = "minimize"\n'
            'sampler = "random"\npruner = "hyperband"\nenqueue = [{ epsilon = 10.0 }, {}]\n'
            "[base]\nlr = 1\nepochs = 2\namp = true\n",
        )
    )
    assert (study.trials, study.seed, study.metric, study.direction) == (
        1,
        -3,
        "train_loss",
        "minimize",
    )
    assert (study.sampler, study.pruner, study.description) == ("random", "hyperband", "")
    assert study.enqueue == ({"epsilon": 10.0}, {})
    assert study.base == {"lr": 1.0, "epochs": 2, "amp": True}
    assert type(study.base["lr"]) is float
    # A final-only metric is fine without a pruner; a stepped float makes a grid.
    final = load_study(write(tmp_path, 'space = "eps"\nmetric = "train_nc1"\npruner = "none"\n'))
    assert final.metric == "train_nc1" and final.pruner == "none"
    grid = load_study(
        write(
            tmp_path,
            'sampler = "grid"\n[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\nstep = 0.5\n'
            '[space.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n',
        )
    )
    assert grid.space.grid() == {"epsilon": [0.0, 0.5, 1.0], "optimizer": ["sgd", "adam"]}
    # The defaults of everything optional.
    bare = load_study(write(tmp_path, 'space = "eps"\n'))
    assert (bare.metric, bare.direction, bare.sampler, bare.pruner) == (
        "val_acc",
        "maximize",
        "tpe",
        "median",
    )
    assert (bare.trials, bare.seed, bare.enqueue, bare.base) == (100, 0, (), {})


def test_config_precedence_and_representative_point(tmp_path: Path) -> None:
    study = load_study(
        write(
            tmp_path,
            "[base]\nepochs = 3\nseed = 1\n[space.alpha]\nvalue = 2.0\n"
            '[space.beta]\ntype = "float"\nlow = 0.5\nhigh = 4.0\n'
            '[space.optimizer]\ntype = "categorical"\nchoices = ["sgd", "adam"]\n',
        )
    )
    cfg = study.config({"beta": 3.0, "optimizer": "adam"}, {"seed": 9, "epochs": 4})
    assert (cfg.epochs, cfg.seed, cfg.alpha, cfg.beta, cfg.optimizer) == (4, 9, 2.0, 3.0, "adam")
    assert study.config({"beta": 1.0}).epochs == 3  # base without overrides
    # The representative point of --set checks: each parameter's low end or first choice.
    rep = study.check_overrides({"lr": 0.5})
    assert (rep.beta, rep.optimizer, rep.alpha, rep.lr, rep.epochs) == (0.5, "sgd", 2.0, 0.5, 3)
    with pytest.raises(ConfigError, match=r"^alpha is set by the study's search space"):
        study.check_overrides({"alpha": 1.0, "lr": 0.5})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        study.check_overrides({"lr": 0.0})
    assert study.replace(trials=7).trials == 7 and study.trials == 100


def test_non_finite_choices_are_refused(tmp_path: Path) -> None:
    """A choice of inf would make every trial that draws it fail; it is refused on load."""
    path = write(tmp_path, '[space.alpha]\ntype = "categorical"\nchoices = [inf, 1.0]\n')
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert str(info.value) == f"{path} [space]: alpha.choices: alpha must be finite, got inf"
    path = write(tmp_path, '[space.alpha]\ntype = "categorical"\nchoices = [1.0, -1.0]\n')
    with pytest.raises(SpecError, match=r"alpha\.choices: alpha must be >= 0, got -1\.0$"):
        load_study(path)


def test_exact_messages(tmp_path: Path) -> None:
    def message(text: str) -> str:
        path = write(tmp_path, text)
        with pytest.raises(SpecError) as info:
            load_study(path)
        return str(info.value).replace(str(path), "F")

    assert message('space = "eps"\nbogus = 1\n') == (
        "F: bogus: unknown key; allowed: description, space, metric, direction, sampler, "
        "pruner, trials, seed, enqueue, seeds, batch, confirm, base"
    )
    assert message('space = "eps"\nmetric = "test_acc"\n') == (
        "F: metric: test_acc is measured on the test split, which is reported but never "
        "optimized; use val_acc"
    )
    assert message('space = "eps"\n[base]\nepochs = 2.0\n') == (
        "F: base.epochs: epochs must be an integer, got 2.0"
    )


def test_inline_space_name_and_study_source(tmp_path: Path) -> None:
    path = write(tmp_path, '[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n')
    study = load_study(path)
    assert study.space.name == "mine.space" and study.space.source == f"{path} [space]"
    assert study.source == str(path) and study.name == "mine"
    assert load_study("eps_sweep").space.name == "eps"


def test_searched_settings_the_method_ignores_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, 'space = "eps"\n[base]\nmethod = "dkd"\n')
    with pytest.raises(SpecError) as info:
        load_study(path)
    space = load_study("eps_sweep").space.source
    assert str(info.value) == (
        f"{path}: epsilon: searched by space {space}, but method dkd ignores it (it applies to "
        "dgkd); set base.method or search another space"
    )
    # Temperature applies to kd, dkd and dgkd: searching it under kd is fine, under ce not.
    t_space = '[space.temperature]\ntype = "float"\nlow = 1.0\nhigh = 4.0\n'
    assert load_study(write(tmp_path, '[base]\nmethod = "kd"\n' + t_space)).base == {"method": "kd"}
    with pytest.raises(SpecError, match=r"method ce ignores it \(it applies to kd, dkd, dgkd\)"):
        load_study(write(tmp_path, '[base]\nmethod = "ce"\n' + t_space))
    # The method may come from the space: fixed, or searched (then any method using it will do).
    fixed = '[space.method]\nvalue = "ce"\n'
    with pytest.raises(SpecError, match="but method ce ignores it"):
        load_study(write(tmp_path, t_space + fixed))
    searched = '[space.method]\ntype = "categorical"\nchoices = ["ce", "kd"]\n'
    assert load_study(write(tmp_path, t_space + searched)).space["method"].choices == ("ce", "kd")
    searched = '[space.method]\ntype = "categorical"\nchoices = ["ce", "kd"]\n'
    eps_space = '[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 1.0\n'
    with pytest.raises(SpecError, match=r"but method ce, kd ignores it \(it applies to dgkd\)"):
        load_study(write(tmp_path, eps_space + searched))
    # Settings no method ignores (lr) can be searched under any method.
    lr_space = '[base]\nmethod = "ce"\n[space.lr]\ntype = "float"\nlow = 0.01\nhigh = 0.1\n'
    assert load_study(write(tmp_path, lr_space)).base == {"method": "ce"}


def test_overrides_may_not_make_the_space_ineffective() -> None:
    study = load_study("eps_sweep")
    with pytest.raises(ConfigError) as info:
        study.check_overrides({"method": "dkd"})
    assert str(info.value) == (
        f"--set method=dkd: epsilon: searched by space {study.space.source}, but method dkd "
        "ignores it (it applies to dgkd); set base.method or search another space"
    )
    assert study.check_overrides({"method": "dgkd"}).method == "dgkd"
    with pytest.raises(ConfigError) as info:
        study.check_overrides({"beta": 2.0})
    assert str(info.value) == (
        f"beta is set by the study's search space ({study.space.source}); use another study "
        "or edit its space instead of --set"
    )


def test_cmaes_sampler_needs_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    path = write(tmp_path, 'space = "eps"\nsampler = "cmaes"\n')
    assert load_study(path).sampler == "cmaes"  # installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "cmaes" else real(n))
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert str(info.value) == f"{path}: sampler: cmaes needs the cmaes package; pip install cmaes"
    assert load_study(write(tmp_path, 'space = "eps"\nsampler = "tpe"\n')).sampler == "tpe"


# --- seeds per trial and the confirm stage -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("seeds = 0\n", "F: seeds: must be >= 1 (seeds per trial), got 0"),
        ('seeds = "4"\n', "F: seeds: must be of type int, got '4'"),
        ("seeds = true\n", "F: seeds: must be of type int, got True"),
        ("batch = 0\n", "F: batch: must be >= 1 (trials trained at once), got 0"),
        ("batch = 2.0\n", "F: batch: must be of type int, got 2.0"),
        ("confirm = 3\n", "F: confirm: must be of type dict, got 3"),
        ("[confirm]\ntop = 1\nbogus = 2\n", "F: confirm.bogus: unknown key; allowed: top, seeds"),
        ("[confirm]\na = 1\nb = 2\n", "F: confirm.a: unknown key; allowed: top, seeds"),
        ("[confirm]\ntop = -1\n", "F: confirm.top: must be an integer >= 0, got -1"),
        ("[confirm]\ntop = 1.5\n", "F: confirm.top: must be an integer >= 0, got 1.5"),
        ("[confirm]\ntop = true\n", "F: confirm.top: must be an integer >= 0, got True"),
        ("[confirm]\nseeds = -2\n", "F: confirm.seeds: must be an integer >= 0, got -2"),
        ('[confirm]\nseeds = "x"\n', "F: confirm.seeds: must be an integer >= 0, got 'x'"),
        ("[confirm]\ntop = 2\nseeds = 1\n", "F: confirm.seeds: must be >= 2 to compare paired"),
        ("[confirm]\ntop = 2\nseeds = 0\n", "F: confirm.seeds: must be >= 2 to compare paired"),
        ("[confirm]\nteachers = 0\n", "F: confirm.teachers: must be an integer >= 1, got 0"),
        ('[confirm]\nteachers = "3"\n', "F: confirm.teachers: must be an integer >= 1, got '3'"),
        ("[confirm]\nteachers = true\n", "F: confirm.teachers: must be an integer >= 1, got True"),
    ],
)
def test_seeds_and_confirm_are_validated(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, 'space = "eps"\n' + text)
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert str(info.value).replace(str(path), "F").startswith(expected), str(info.value)


def test_seeds_and_confirm_boundaries_that_are_valid(tmp_path: Path) -> None:
    bare = load_study(write(tmp_path, 'space = "eps"\n'))
    assert (bare.n_seeds, bare.batch, bare.confirm_top, bare.n_confirm_seeds) == (1, 1, 0, 10)
    assert load_study(write(tmp_path, 'space = "eps"\nbatch = 3\n')).batch == 3
    study = load_study(write(tmp_path, 'space = "eps"\nseeds = 3\n[confirm]\ntop = 2\nseeds = 2\n'))
    assert (study.n_seeds, study.confirm_top, study.n_confirm_seeds) == (3, 2, 2)
    # No confirm stage (top 0): its seeds are not checked against 2.
    off = load_study(write(tmp_path, 'space = "eps"\n[confirm]\ntop = 0\nseeds = 0\n'))
    assert (off.confirm_top, off.n_confirm_seeds) == (0, 0)
    only_top = load_study(write(tmp_path, 'space = "eps"\n[confirm]\ntop = 1\n'))
    assert (only_top.confirm_top, only_top.n_confirm_seeds) == (1, 10)
    assert (bare.confirm_teachers, only_top.confirm_teachers) == (1, 1)
    three = load_study(write(tmp_path, 'space = "eps"\n[confirm]\ntop = 1\nteachers = 3\n'))
    assert three.confirm_teachers == 3


def test_trial_seeds_start_at_the_configs_seed(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, 'space = "eps"\nseeds = 3\n[base]\nseed = 5\n'))
    assert study.trial_seeds() == [5, 6, 7]
    assert study.trial_seeds({"seed": 10}) == [10, 11, 12]
    assert study.trial_seeds(n_seeds=2) == [5, 6]
    assert study.trial_seeds({"seed": 0}, n_seeds=1) == [0]
    assert load_study("eps_sweep").replace(n_seeds=1).trial_seeds() == [0]
    with pytest.raises(ConfigError, match="beta is set by the study's search space"):
        study.trial_seeds({"beta": 1.0})
