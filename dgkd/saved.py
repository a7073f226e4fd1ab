"""A saved run back in Python: :func:`load_run` gives its student, its configuration and the data
splits it trained and was measured on, so that :meth:`SavedRun.evaluate` gives its metrics back.

It reads what ``dgkd-train --out DIR`` writes (``config.json`` and ``student.pt``; a rerun of
several seeds: ``DIR/seed_<s>/``) and a search's directory (``runs/<study>/``: the best trial's
students, named in ``best.json``)::

    import dgkd

    run = dgkd.load_run("runs/smoke")   # or a dgkd-train --out directory
    run.metrics["val_acc"]               # what the run recorded
    run.evaluate()["val_acc"]            # the same, measured again
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from dgkd.data import Splits

__all__ = ["SavedRun", "load_run"]


@dataclass
class SavedRun:
    """A saved run: its student (in eval mode, on the CPU), config, data splits and metrics.

    Attributes:
        config: The run's full configuration (its ``seed`` is the student's).
        model: The trained student, built with ``dgkd.models.build_model`` and its weights loaded.
        splits: The data splits exactly as the run used them (its ``val_fraction``,
            ``split_seed``, ``val_pool`` and ``test_pool``).
        metrics: The final metrics the run recorded (NaN where it recorded none).
        directory: Where it was read from.
    """

    config: TrainConfig
    model: nn.Module = field(repr=False)
    splits: Splits = field(repr=False)
    metrics: dict[str, float]
    directory: Path

    def evaluate(self, device: str = "cpu") -> dict[str, float]:
        """The run's final metrics measured again (:func:`dgkd.train.evaluate`), against its
        teacher (from the cache, or trained again: the same teacher for the same config)."""
        import torch

        from dgkd.teacher import load_teacher
        from dgkd.train import evaluate

        where = torch.device(device)
        bundle = load_teacher(self.config, self.splits, device=where)
        return evaluate(self.config, self.splits, self.model.to(where), bundle, device=where)


def load_run(directory: str | Path, *, seed: int | None = None) -> SavedRun:
    """The run saved in ``directory``: a ``dgkd-train --out`` directory, or a search's (its
    best trial's student of ``seed``, by default the first of its seeds).

    Args:
        directory: ``dgkd-train --out DIR``'s ``DIR``, or a search's ``runs/<study>/``.
        seed: Which seed's student, where the directory holds several (a search trial, or a
            rerun of several seeds); None: the first.

    Raises:
        ConfigError: no saved run there, or no student of that seed.
    """
    from dgkd.runfiles import RUN_KEYS, load_config, read_config_file

    folder = Path(directory).expanduser()
    if (folder / "best.json").is_file():
        best = read_config_file(folder / "best.json")
        students = best.get("students") or {}
        if not students:
            raise ConfigError(f"{folder}: the search kept no student (no complete trial?)")
        pick = str(seed if seed is not None else best.get("student_seed", next(iter(students))))
        if pick not in students:
            raise ConfigError(f"{folder}: no student of seed {pick}; seeds: {', '.join(students)}")
        cfg = load_config(folder / "best.json").replace(seed=int(pick))
        return _load(folder, cfg, folder / students[pick], _seed_metrics(best, int(pick)), {})
    seeds = sorted(folder.glob("seed_*/config.json"))
    if not (folder / "config.json").is_file() and seeds:
        chosen = folder / f"seed_{seed}" if seed is not None else seeds[0].parent
        return load_run(chosen)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json or best.json (not a saved run)")
    saved = read_config_file(folder / "config.json")
    cfg = load_config(folder / "config.json")
    if seed is not None and seed != cfg.seed:
        raise ConfigError(f"{folder}: a run of seed {cfg.seed}, not {seed}")
    metrics: dict[str, Any] = {}
    if (folder / "metrics.json").is_file():
        metrics = read_config_file(folder / "metrics.json")
    shape = {k: saved[k] for k in RUN_KEYS[:2] if saved.get(k)}
    return _load(folder, cfg, folder / "student.pt", metrics, shape)


def _seed_metrics(best: dict[str, Any], seed: int) -> dict[str, Any]:
    seeds, per_seed = best.get("seeds") or [], best.get("seed_metrics") or []
    return per_seed[seeds.index(seed)] if seed in seeds and len(per_seed) == len(seeds) else {}


def _load(
    folder: Path,
    cfg: TrainConfig,
    student: Path,
    metrics: dict[str, Any],
    shape: dict[str, Any],
) -> SavedRun:
    import torch

    from dgkd.models import build_model, has_width
    from dgkd.train import splits_for

    splits = splits_for(cfg)
    num_classes = int(shape.get("num_classes") or splits.num_classes)
    input_shape = tuple(shape.get("input_shape") or splits.input_shape)
    width = (cfg.student_width or None) if has_width(cfg.student) else None
    model = build_model(cfg.student, num_classes=num_classes, input_shape=input_shape, width=width)
    try:
        state = torch.load(student, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{folder}: no student ({student.name} is missing)") from None
    model.load_state_dict(state)
    model.eval()
    values = {k: math.nan if v is None else float(v) for k, v in metrics.items()}
    return SavedRun(cfg, model, splits, values, folder)
