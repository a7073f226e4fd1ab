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
    assert (cfg.alpha, cfg.beta, cfg.temperature, cfg.epsilon) == (1.0, 8.0, 4.0, 3.0)
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
    assert (cfg.epochs, cfg.seed, cfg.epsilon, cfg.beta) == (3, 7, 2.5, 8.0)
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
