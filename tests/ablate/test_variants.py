"""The variant registry: each variant changes exactly what it says; ``full`` comes first."""

from __future__ import annotations

import pytest

from dgkd.ablate import VARIANTS, AblateError, parse_variants
from dgkd.config import TrainConfig

from .helpers import EXPECTED, diff


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_variant_changes_exactly_what_it_says(name):
    base = TrainConfig(temperature=2.5, alpha=1.5, beta=4.0, epsilon=3.0, lr=0.02)
    changed = VARIANTS[name].apply(base)
    assert diff(base, changed) == EXPECTED[name]
    doc = VARIANTS[name].doc
    assert doc and "\n" not in doc and len(doc) < 60  # one line that fits a table
    if name == "kd":  # Hinton KD at the same temperature
        assert changed.temperature == 2.5


def test_registry_is_complete_and_full_comes_first():
    assert list(VARIANTS) == list(EXPECTED)
    assert parse_variants("all") == tuple(EXPECTED)
    assert parse_variants("kd,no_grad_term,kd") == ("full", "kd", "no_grad_term")
    assert parse_variants(["minimize_mse", "full"]) == ("full", "minimize_mse")
    with pytest.raises(AblateError, match=r"unknown variant 'eps0'.*no_grad_term.*nckd_only"):
        parse_variants("no_grad_term,eps0")
