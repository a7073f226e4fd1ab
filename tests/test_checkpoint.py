"""Checkpoints inside a run: a run interrupted or killed resumes from its saved state and ends bit
for bit as an uninterrupted run. ``train``; a population with a diverged and a pruned member,
with and without replaying its reports; an image population (augmentation, BatchNorm, SGD
momentum); a process killed with SIGKILL (periodic state only); ``dgkd-train --out`` stopped
by SIGTERM and rerun; and what does not resume (another config, an unreadable file)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import TINY_POOL_ARGS, image_splits

from dgkd import checkpoint as ckpt
from dgkd.checkpoint import STATE_GLOB, Checkpoint, StoppedError
from dgkd.cli import train_main
from dgkd.config import TrainConfig
from dgkd.loop import DivergedError, fit_population
from dgkd.models import build_model
from dgkd.state import PopulationState
from dgkd.train import TrainResult, population_groups, train, train_population


def _metrics(result: TrainResult) -> dict[str, float]:
    """Final metrics less the wall-clock duration."""
    return {k: v for k, v in result.metrics.items() if k != "duration_s"}


def _same_model(a: torch.nn.Module | None, b: torch.nn.Module | None) -> bool:
    assert a is not None and b is not None
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same(a: TrainResult, b: TrainResult) -> bool:
    """The same run: final metrics, every epoch's row and the student, bit for bit."""
    return _metrics(a) == _metrics(b) and a.history == b.history and _same_model(a.model, b.model)


def _states(folder: Path) -> list[Path]:
    return sorted(folder.glob(STATE_GLOB))


def test_an_interrupted_run_resumes_where_it_stopped(tiny: TrainConfig, tmp_path: Path) -> None:
    cfg = tiny.replace(epochs=5, checkpoint_every=2)
    reference = train(cfg)

    def interrupt(epoch: int, row: dict[str, float]) -> None:
        if epoch == 3:  # after epoch 3's state is taken: the interruption saves it
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=interrupt, checkpoint=tmp_path)
    assert len(_states(tmp_path)) == 1
    trained: list[int] = []
    resumed = Checkpoint(tmp_path, replay=False)
    result = train(cfg, report=lambda epoch, row: trained.append(epoch), checkpoint=resumed)
    assert trained == [4, 5]  # epochs 1-3 came from the checkpoint
    assert _same(result, reference)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]


def test_a_resumed_run_replays_its_reports(tiny: TrainConfig, tmp_path: Path) -> None:
    """With replay (the default), the report sees every epoch once more, in order."""
    cfg = tiny.replace(epochs=4, checkpoint_every=2)

    def interrupt(epoch: int, row: dict[str, float]) -> None:
        if epoch == 3:  # no save due at 3: the interruption writes it
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=interrupt, checkpoint=tmp_path)
    rows: list[tuple[int, dict[str, float]]] = []
    result = train(cfg, report=lambda epoch, row: rows.append((epoch, row)), checkpoint=tmp_path)
    assert [epoch for epoch, _ in rows] == [1, 2, 3, 4]
    assert [row for _, row in rows] == result.history
    assert _same(result, train(cfg))


def _population(tiny: TrainConfig) -> list[TrainConfig]:
    """Members of every loss family, one that diverges at epoch 1 (its teacher is the others')."""
    base = tiny.replace(epochs=5, checkpoint_every=2, teacher_lr=0.01)
    return [
        base.replace(seed=0, lr=1e30),
        base.replace(seed=1, method="ce"),
        base.replace(seed=2, method="kd", warmup=0),
        base.replace(seed=3, beta=2.0, lr=0.003),
    ]


def _prune(member: int, epoch: int, row: dict[str, float]) -> None:
    if member == 2 and epoch == 2:
        raise ValueError("pruned at epoch 2")


@pytest.mark.parametrize("replay", [True, False], ids=["replay", "no-replay"])
def test_a_population_resumes_with_its_stopped_members(
    tiny: TrainConfig, tmp_path: Path, replay: bool
) -> None:
    cfgs = _population(tiny)
    reference = train_population(cfgs, report=_prune)

    def interrupt(member: int, epoch: int, row: dict[str, float]) -> None:
        _prune(member, epoch, row)
        if epoch == 4:  # the periodic save at 4 is written before the reports
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_population(cfgs, report=interrupt, checkpoint=tmp_path)
    results = train_population(cfgs, report=_prune, checkpoint=Checkpoint(tmp_path, replay=replay))
    for i in (1, 3):
        assert results[i].error is None and _same(results[i], reference[i]), i
    diverged, ref_diverged = results[0].error, reference[0].error
    assert isinstance(diverged, DivergedError) and isinstance(ref_diverged, DivergedError)
    assert (diverged.epoch, diverged.step) == (ref_diverged.epoch, ref_diverged.step)
    assert diverged.epoch == 1
    assert not math.isfinite(diverged.value) and results[0].history == reference[0].history == []
    pruned = results[2]
    assert pruned.history == reference[2].history and len(pruned.history) == 2
    assert pruned.model is None and pruned.metrics == {}
    if replay:  # the report ran again and stopped it again
        assert isinstance(pruned.error, ValueError) and str(pruned.error) == "pruned at epoch 2"
    else:  # restored from the file: its type and message
        assert isinstance(pruned.error, StoppedError)
        assert str(pruned.error) == "ValueError: pruned at epoch 2"


def test_an_image_population_resumes_bitwise(tmp_path: Path) -> None:
    """Augmentation generators, BatchNorm running statistics, SGD momentum buffers."""
    splits = image_splits(train=20)
    base = TrainConfig(dataset="cifar10", teacher="resnet8", student="resnet8", epochs=3,
                       batch_size=8, optimizer="sgd", lr=0.05, warmup=1, device="cpu",
                       checkpoint_every=1)  # fmt: skip
    cfgs = [base.replace(seed=1), base.replace(seed=2, method="kd")]
    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10, input_shape=(3, 32, 32)).eval()
    kw: dict[str, Any] = {"teacher": teacher, "teacher_train_logits": None}
    kw["device"] = torch.device("cpu")
    reference = fit_population(cfgs, splits, **kw)

    def interrupt(member: int, epoch: int, row: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_population(cfgs, splits, **kw, report=interrupt, checkpoint=Checkpoint(tmp_path))
    trained: list[int] = []
    runs = fit_population(
        cfgs,
        splits,
        **kw,
        report=lambda member, epoch, row: trained.append(epoch),
        checkpoint=Checkpoint(tmp_path, replay=False),
    )
    assert trained == [3, 3]
    for run, ref in zip(runs, reference, strict=True):
        assert run.history == ref.history and _same_model(run.model, ref.model)


_KILLED = """
import os, signal, sys
from dgkd.config import TrainConfig
from dgkd.train import train

def kill(epoch, row):
    if epoch == 3:
        os.kill(os.getpid(), signal.SIGKILL)

cfg = TrainConfig(epochs=5, teacher_epochs=2, checkpoint_every=2, val_pool=200, test_pool=400)
train(cfg, report=kill, checkpoint=sys.argv[1])
"""


def test_a_killed_process_resumes_from_its_last_periodic_save(
    tiny: TrainConfig, tmp_path: Path
) -> None:
    cfg = tiny.replace(epochs=5, checkpoint_every=2)
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(tmp_path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    trained: list[int] = []
    resumed = Checkpoint(tmp_path, replay=False)
    result = train(cfg, report=lambda epoch, row: trained.append(epoch), checkpoint=resumed)
    assert trained == [3, 4, 5]  # the state of epoch 2; epoch 3 was lost with the process
    assert _same(result, train(cfg))


def test_other_configs_and_unreadable_files_start_over(tiny: TrainConfig, tmp_path: Path) -> None:
    cfg = tiny.replace(epochs=3, checkpoint_every=1)

    def interrupt(epoch: int, row: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=interrupt, checkpoint=tmp_path)
    (state,) = _states(tmp_path)
    trained: list[int] = []

    def log(epoch: int, row: dict[str, float]) -> None:
        trained.append(epoch)

    # checkpoint_every says when to save, not what is computed: it may change on resume, and
    # members that differ in it share a population.
    again = cfg.replace(checkpoint_every=5)
    assert population_groups([cfg, again]) == [[0, 1]]
    train(again, report=log, checkpoint=Checkpoint(tmp_path, replay=False))
    assert trained == [3]
    trained.clear()
    train(cfg.replace(seed=7), report=log, checkpoint=Checkpoint(tmp_path, replay=False))
    assert trained == [1, 2, 3]  # another config: its own file
    state.write_bytes(b"not a checkpoint")
    trained.clear()
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        result = train(cfg, report=log, checkpoint=Checkpoint(tmp_path, replay=False))
    assert trained == [1, 2, 3] and _same(result, train(cfg))


def test_checkpoint_every_zero_saves_nothing(tiny: TrainConfig, tmp_path: Path) -> None:
    cfg = tiny.replace(epochs=3, checkpoint_every=0)

    def interrupt(epoch: int, row: dict[str, float]) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=interrupt, checkpoint=tmp_path / "state")
    assert not (tmp_path / "state").exists()


def _json_metrics(out: str) -> dict[str, float]:
    metrics = json.loads(out.strip().splitlines()[-1])["metrics"]
    metrics.pop("duration_s")
    return metrics


def test_dgkd_train_resumes_when_rerun_after_sigterm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--json", "--set", "epochs=5", "--set", "teacher_epochs=2", *TINY_POOL_ARGS]
    assert train_main(argv) == 0  # no --out: no checkpoint
    plain = _json_metrics(capsys.readouterr().out)
    out = tmp_path / "run"
    assert train_main([*argv, "--set", "checkpoint_every=0", "--out", str(tmp_path / "off")]) == 0
    assert _json_metrics(capsys.readouterr().out) == plain
    assert not (tmp_path / "off" / "checkpoints").exists()

    real = ckpt.Keeper.epoch_end

    def sigterm_at_3(self: ckpt.Keeper, state: PopulationState) -> None:
        real(self, state)
        if state.epoch == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ckpt.Keeper, "epoch_end", sigterm_at_3)
    run = [*argv, "--set", "checkpoint_every=2", "--out", str(out)]
    before = signal.getsignal(signal.SIGTERM)  # the default, or a library's (Ray installs one)
    assert train_main(run) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"dgkd-train: interrupted; the state after epoch 3 is in {out / 'checkpoints'}; rerun "
        "the same command to resume"
    )
    assert len(_states(out / "checkpoints")) == 1 and not (out / "metrics.json").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
    monkeypatch.setattr(ckpt.Keeper, "epoch_end", real)
    assert train_main(run) == 0
    printed = capsys.readouterr()
    assert _json_metrics(printed.out) == plain
    assert printed.err.strip() == f"dgkd-train: resumed from epoch 3 of 5 ({out / 'checkpoints'})"
    saved = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in saved.items() if k != "duration_s"} == plain
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "history.csv",
        "metrics.json",
        "student.pt",
    ]  # the checkpoint went once the files were written
    resumed = f"resumed from epoch 3 of 5 ({out / 'checkpoints'})"
    assert json.loads((out / "config.json").read_text())["resume"] == resumed


def test_dgkd_train_says_whether_it_resumed_or_started_over_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    argv = ["--json", "--set", "epochs=4", "--set", "teacher_epochs=2", *TINY_POOL_ARGS,
            "--set", "checkpoint_every=1", "--out", str(out)]  # fmt: skip
    real = ckpt.Keeper.epoch_end

    def interrupt_at_2(self: ckpt.Keeper, state: PopulationState) -> None:
        real(self, state)
        if state.epoch == 2:
            raise KeyboardInterrupt

    def interrupted(*extra: str) -> None:
        monkeypatch.setattr(ckpt.Keeper, "epoch_end", interrupt_at_2)
        assert train_main([*argv, *extra]) == 130
        monkeypatch.setattr(ckpt.Keeper, "epoch_end", real)
        capsys.readouterr()

    def rerun(*extra: str) -> str:
        assert train_main([*argv, *extra]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert json.loads((out / "config.json").read_text())["resume"] == err[0][12:]
        return err[0]

    checkpoints = out / "checkpoints"
    interrupted()
    assert rerun() == f"dgkd-train: resumed from epoch 2 of 4 ({checkpoints})"
    interrupted()
    assert rerun("--set", "lr=0.01") == (
        f"dgkd-train: started over: the state saved in {checkpoints} did not fit (it was saved "
        "by other options)"
    )
    interrupted()
    (state,) = _states(checkpoints)
    saved = torch.load(state, weights_only=True)
    del saved["lrs"]  # a state of the same options that this code cannot use
    torch.save(saved, state)
    assert rerun() == (
        f"dgkd-train: started over: the state saved in {checkpoints} did not fit ('lrs')"
    )
    assert not checkpoints.exists()
    assert train_main(argv) == 0  # nothing saved: nothing said
    assert capsys.readouterr().err == ""
    assert json.loads((out / "config.json").read_text())["resume"] is None
