"""A training run's files: ``dgkd-train --out DIR`` and a search's per-trial files use these.

``config.json`` (every field), ``metrics.json`` (final metrics, NaN as null), ``history.csv``
(one row per epoch) and ``student.pt`` (the student's ``state_dict``, loadable into
``dgkd.models.build_model``), each written atomically. While the run trains, its state is in
``checkpoints/`` (:func:`train_into`), so that rerunning an interrupted ``dgkd-train --out DIR``
resumes it. :func:`load_config` reads a ``config.json`` back, or the ``config`` of a search's
``best.json``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
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
    "history_csv",
    "load_config",
    "save_run",
    "save_student",
    "train_into",
]

CHECKPOINTS_DIR = "checkpoints"  # under --out: the state of a run not yet finished


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


def save_run(out_dir: str | Path, result: TrainResult) -> Path:
    """config.json, metrics.json, history.csv and student.pt of ``result`` in ``out_dir``."""
    folder = Path(out_dir).expanduser()
    atomic_write_json(folder / "config.json", result.config.to_dict())
    atomic_write_json(folder / "metrics.json", json_metrics(result.metrics))
    atomic_write_text(folder / "history.csv", history_csv(result.history))
    if result.model is not None:
        save_student(folder / "student.pt", result.model)
    return folder


def train_into(
    out_dir: str | Path | None, cfg: TrainConfig, *, progress: bool = False
) -> TrainResult:
    """``train(cfg)``, and with ``out_dir`` its files there (:func:`save_run`).

    The run keeps its state in ``<out_dir>/checkpoints/`` (every ``cfg.checkpoint_every``
    epochs, and on Ctrl-C or SIGTERM) and first resumes a state saved there by the same config,
    so an interrupted ``dgkd-train --out DIR`` rerun with the same options continues where it
    stopped and ends with the metrics of an uninterrupted run. The state goes once the files
    are written.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; its message says where the state is.
    """
    from dgkd.checkpoint import Checkpoint, clear, sigterm_interrupts
    from dgkd.train import train

    if out_dir is None:
        return train(cfg, progress=progress)
    folder = Path(out_dir).expanduser()
    checkpoint = Checkpoint(folder / CHECKPOINTS_DIR)
    try:
        with sigterm_interrupts():
            result = train(cfg, progress=progress, checkpoint=checkpoint)
    except KeyboardInterrupt:
        if checkpoint.saved_epoch is None:
            raise
        raise KeyboardInterrupt(
            f"the state after epoch {checkpoint.saved_epoch} is in {checkpoint.directory}; "
            "rerun the same command to resume"
        ) from None
    save_run(folder, result)
    clear(checkpoint.directory)
    return result


def load_config(path: str | Path) -> TrainConfig:
    """The configuration in a ``config.json``, or the ``config`` of a search's ``best.json``.

    Raises:
        ConfigError: the file is missing, not JSON, holds no configuration or an invalid one.
    """
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--config {path}: not JSON ({one_line(exc)})") from None
    if isinstance(data, dict) and "config" in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: holds no configuration (a search with no result?)")
    try:
        return TrainConfig().replace(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--config {path}: {one_line(exc)}") from None
