"""The base config: defaults with --set, a study's base, and the refusals."""

from __future__ import annotations

import pytest

from dgkd.ablate import AblateError, resolve_base
from dgkd.config import TrainConfig


def test_base_overrides_and_method_check():
    base = resolve_base(overrides={"epochs": 3})
    assert base.config == TrainConfig(epochs=3) and base.default_name == "default"
    with pytest.raises(AblateError, match="reference row of an ablation is dgkd"):
        resolve_base(overrides={"method": "kd"})
    with pytest.raises(AblateError, match="--storage is only read with --from-study"):
        resolve_base(storage="sqlite:///x.db")


def test_study_base_without_search():
    base = resolve_base(study="smoke", overrides={"lr": 0.02})
    assert base.source == "study" and base.default_name == "smoke"
    assert (base.config.epochs, base.config.teacher_epochs, base.config.lr) == (2, 2, 0.02)
    with pytest.raises(AblateError, match="unknown study 'nope'"):
        resolve_base(study="nope")


def test_an_ablation_evaluates_every_epoch_unless_told_otherwise():
    """A study's base may thin out the per-epoch evaluation; the ablation's NC1 claim reads the
    whole curve, so it evaluates every epoch unless --set eval_every says otherwise."""
    from dgkd.study import load_study

    assert load_study("eps_sweep").config({}).eval_every == 5
    base = resolve_base(study="eps_sweep")
    assert base.config.eval_every == 1 and dict(base.overrides) == {}
    assert resolve_base(study="eps_sweep", overrides={"eval_every": 2}).config.eval_every == 2


def test_config_hash_ignores_only_fields_that_cannot_change_results():
    from dgkd.ablate.base import config_hash

    cfg = TrainConfig(epochs=3)
    assert config_hash(cfg) == config_hash(cfg.replace(checkpoint_every=0))
    assert config_hash(cfg) != config_hash(cfg.replace(seed=1))
    assert config_hash(cfg) != config_hash(cfg.replace(epsilon=1.0))
