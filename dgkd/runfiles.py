"""A training run's files: ``dgkd-train --out DIR`` and a search's per-trial files use these.

``config.json`` (every field, then what the run found: ``num_classes`` and ``input_shape`` of its
data, and ``resume``, the line that says whether it resumed), ``metrics.json`` (final metrics,
NaN as null), ``history.csv`` (one row per epoch) and ``student.pt`` (the student's
``state_dict``, loadable into ``dgkd.models.build_model``; :func:`dgkd.load_run` does it), each
written atomically. Several seeds trained at once (a search trial rerun) write those files per
seed in ``seed_<s>/``, and their mean in ``summary.json``. While the run trains, its state is in
``checkpoints/`` (:func:`train_into`), so that rerunning an interrupted ``dgkd-train --out DIR``
resumes it. :func:`load_config` reads a ``config.json`` back, or the ``config`` of a search's
``best.json``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.config import ConfigError, TrainConfig
from dgkd.errors import one_line
from dgkd.io import atomic_write, atomic_write_json, atomic_write_text, json_metrics

if TYPE_CHECKING:
    from torch import nn

    from dgkd.train import TrainResult

__all__ = [
    "CHECKPOINTS_DIR",
    "RUN_KEYS",
    "SUMMARY_FILE",
    "history_csv",
    "load_config",
    "mean_metrics",
    "read_config_file",
    "save_run",
    "save_student",
    "train_into",
    "train_seeds_into",
]

CHECKPOINTS_DIR = "checkpoints"  # under --out: the state of a run not yet finished
SUMMARY_FILE = "summary.json"  # under --out, for several seeds: their mean
RUN_KEYS = ("num_classes", "input_shape", "resume")  # config.json's keys that are not fields


def history_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows (one per epoch) as CSV text: ``epoch`` first, then every key in first-seen order."""
    import pandas as pd

    columns = ["epoch"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    frame = pd.DataFrame(list(rows), columns=columns)
    if len(frame):
        frame["epoch"] = frame["epoch"].astype("int64")
    return str(frame.to_csv(index=False))


def save_student(path: str | Path, model: nn.Module) -> Path:
    """The model's ``state_dict`` (on the CPU) at ``path``, atomically."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each key every row has (as a search trial averages its seeds)."""
    keys = [k for k in rows[0] if all(k in r for r in rows[1:])]
    return {k: math.fsum(float(r[k]) for r in rows) / len(rows) for k in keys}


def save_run(out_dir: str | Path, result: TrainResult, *, resume: str | None = None) -> Path:
    """config.json, metrics.json, history.csv and student.pt of ``result`` in ``out_dir``;
    ``resume``: the line that said whether the run resumed (kept in config.json)."""
    folder = Path(out_dir).expanduser()
    config: dict[str, Any] = result.config.to_dict()
    config.update(
        num_classes=result.num_classes, input_shape=list(result.input_shape), resume=resume
    )
    atomic_write_json(folder / "config.json", config)
    atomic_write_json(folder / "metrics.json", json_metrics(result.metrics))
    atomic_write_text(folder / "history.csv", history_csv(result.history))
    if result.model is not None:
        save_student(folder / "student.pt", result.model)
    return folder


def train_into(
    out_dir: str | Path | None,
    cfg: TrainConfig,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """``train(cfg)``, and with ``out_dir`` its files there (:func:`save_run`).

    The run keeps its state in ``<out_dir>/checkpoints/`` (every ``cfg.checkpoint_every``
    epochs, and on Ctrl-C or SIGTERM) and first resumes a state saved there by the same config,
    so an interrupted ``dgkd-train --out DIR`` rerun with the same options continues where it
    stopped and ends with the metrics of an uninterrupted run. Whether it resumed (from which
    epoch), or started over and why, is one line to ``log`` before the first epoch, and the
    ``resume`` of config.json. The state goes once the files are written.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; its message says where the state is.
    """
    (result,) = train_seeds_into(out_dir, [cfg], progress=progress, log=log)
    return result


def train_seeds_into(
    out_dir: str | Path | None,
    cfgs: Sequence[TrainConfig],
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[TrainResult]:
    """:func:`train_into` for several configs (a trial's seeds) trained as one population:
    each one's files in ``<out_dir>/seed_<seed>/`` and their mean in ``summary.json``; one
    config writes its files in ``out_dir`` itself.

    Raises:
        DivergedError: a member's loss became non-finite (or a member's other error).
        KeyboardInterrupt: as :func:`train_into`.
    """
    from dgkd.checkpoint import Checkpoint, CheckpointError, clear, sigterm_interrupts
    from dgkd.train import train_population

    if out_dir is None:
        return _raise_errors(train_population(cfgs, progress=progress))
    folder = Path(out_dir).expanduser()
    said: list[str] = []

    def tell(line: str) -> None:
        said.append(line)
        if log is not None:
            log(line)

    def restored(ck: Checkpoint) -> None:
        if said:
            return
        if ck.resumed_epoch is not None:
            tell(f"resumed from epoch {ck.resumed_epoch} of {cfgs[0].epochs} ({ck.directory})")
        elif ck.ignored is not None:
            tell(f"started over: the state saved in {ck.directory} did not fit ({ck.ignored})")

    checkpoint = Checkpoint(folder / CHECKPOINTS_DIR, on_restore=restored)
    try:
        with sigterm_interrupts():
            try:
                results = train_population(cfgs, progress=progress, checkpoint=checkpoint)
            except CheckpointError as exc:
                clear(checkpoint.directory)
                tell(f"started over: the state saved in {checkpoint.directory} did not fit "
                     f"({exc.reason})")  # fmt: skip
                checkpoint = Checkpoint(folder / CHECKPOINTS_DIR, on_restore=restored)
                results = train_population(cfgs, progress=progress, checkpoint=checkpoint)
    except KeyboardInterrupt:
        if checkpoint.saved_epoch is None:
            raise
        raise KeyboardInterrupt(
            f"the state after epoch {checkpoint.saved_epoch} is in {checkpoint.directory}; "
            "rerun the same command to resume"
        ) from None
    _raise_errors(results)
    resume = said[0] if said else None
    if len(results) == 1:
        save_run(folder, results[0], resume=resume)
    else:
        for result in results:
            save_run(folder / f"seed_{result.config.seed}", result, resume=resume)
        summary = {
            "seeds": [r.config.seed for r in results],
            "metrics": json_metrics(mean_metrics([r.metrics for r in results])),
        }
        atomic_write_json(folder / SUMMARY_FILE, summary)
    clear(checkpoint.directory)
    return results


def _raise_errors(results: list[TrainResult]) -> list[TrainResult]:
    for result in results:
        if result.error is not None:
            raise result.error
    return results


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a ``config.json`` or a search's ``best.json``.

    Raises:
        ConfigError: the file is missing, not JSON, or not an object.
    """
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--config {path}: not JSON ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: holds no configuration (a search with no result?)")
    return data


def load_config(path: str | Path) -> TrainConfig:
    """The configuration in a ``config.json``, or the ``config`` of a search's ``best.json``.

    Raises:
        ConfigError: the file is missing, not JSON, holds no configuration or an invalid one.
    """
    data: Any = read_config_file(path)
    if "config" in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: holds no configuration (a search with no result?)")
    fields = {k: v for k, v in data.items() if k not in RUN_KEYS}
    try:
        return TrainConfig().replace(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--config {path}: {one_line(exc)}") from None
