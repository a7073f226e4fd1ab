"""A study's signature as another process sees it while the first one is still storing it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from dgkd.search.optuna.storage import check_storage, create_or_load, open_storage
from dgkd.search.records import SearchOptions
from dgkd.study import load_study


def test_a_search_started_while_another_stores_the_signature_never_sees_half_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = load_study("smoke")
    opts = SearchOptions(trials=1, out_dir=tmp_path, storage=str(tmp_path / "journal.log"))
    seen: list[str] = []
    store = optuna.Study.set_user_attr

    def store_then_check(self: optuna.Study, key: str, value: object) -> None:
        store(self, key, value)
        seen.append(key)
        check_storage(study, opts)  # the second search, between two of the first's writes

    monkeypatch.setattr(optuna.Study, "set_user_attr", store_then_check)
    create_or_load(study, opts, open_storage(opts))
    assert "dgkd_config" in seen and "dgkd_space" in seen  # the interleaving did happen
    monkeypatch.undo()
    check_storage(study, SearchOptions(trials=1, out_dir=tmp_path, storage=opts.storage))
