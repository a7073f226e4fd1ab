"""The search picks its best trial by validation accuracy only, never by a test-split metric.

``train`` is replaced by a stand-in whose metrics disagree on purpose: validation accuracy
rises with epsilon, every test metric (and the training accuracy) prefers another trial. The
search runs in-process through the public ``dgkd.search`` names; the verdict is read back from
the exported ``trials.csv`` and ``best.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from contracts import FINAL_METRICS

import dgkd.train
from dgkd.config import TrainConfig
from dgkd.search import best_params, make_options, run_search
from dgkd.study import load_study

STUDY = """\
description = "selection reads validation only"
sampler = "grid"
pruner = "none"
trials = 3
[base]
epochs = 2
[space.epsilon]
type = "float"
low = 0.0
high = 2.0
step = 1.0
"""


def _metrics(eps: float) -> dict[str, float]:
    """Validation prefers epsilon 2, the test split epsilon 0, training epsilon 1."""
    out = dict.fromkeys(FINAL_METRICS, 0.5)
    out.update(
        val_acc=0.5 + 0.1 * eps,
        test_acc=0.9 - 0.1 * eps,
        test_agreement=0.9 - 0.1 * eps,
        test_ece=0.01 + 0.1 * eps,
        test_kl_to_teacher=0.1 + eps,
        train_acc=0.99 - abs(eps - 1.0) * 0.1,
        teacher_test_acc=0.95,
        epochs=2.0,
    )
    return out


def _fake_population(
    cfgs: list[TrainConfig], *, report=None, progress: bool = False, checkpoint=None
) -> list[SimpleNamespace]:
    """What a search trial trains (its seeds as one population), with the metrics above."""
    out = []
    for i, cfg in enumerate(cfgs):
        final = _metrics(cfg.epsilon)
        for epoch in (1, 2):
            if report is not None:
                row = {"epoch": float(epoch), "val_acc": final["val_acc"], "train_loss": 1.0}
                report(i, epoch, row)
        model = torch.nn.Linear(2, 2)  # each seed's student is kept
        out.append(SimpleNamespace(metrics=final, history=[], config=cfg, error=None, model=model))
    return out


def test_best_trial_is_chosen_by_validation_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dgkd.train, "train_population", _fake_population)
    path = tmp_path / "selection.toml"
    path.write_text(STUDY)
    study = load_study(path)
    opts = make_options(study, out=tmp_path / "runs", workers=1, quiet=True)
    run_search(study, opts, log=lambda line: None)

    frame = pd.read_csv(opts.out_dir / "trials.csv")
    assert sorted(frame["params_epsilon"]) == [0.0, 1.0, 2.0]
    assert set(frame["state"]) == {"COMPLETE"}
    # The trial's value is its validation accuracy, not a test number.
    assert (frame["value"] == frame["val_acc"]).all()
    for _, row in frame.iterrows():
        assert row["test_acc"] == pytest.approx(_metrics(row["params_epsilon"])["test_acc"])

    best = json.loads((opts.out_dir / "best.json").read_text())
    assert best["params"] == {"epsilon": 2.0}
    assert math.isclose(best["value"], 0.7)
    assert best["config"]["epsilon"] == 2.0
    assert best_params(study, out_dir=opts.out_dir) == {"epsilon": 2.0}
    # What a test-split choice would have been, to show the two differ here.
    by_test = frame.loc[frame["test_acc"].idxmax(), "params_epsilon"]
    by_train = frame.loc[frame["train_acc"].idxmax(), "params_epsilon"]
    assert (by_test, by_train) == (0.0, 1.0)
