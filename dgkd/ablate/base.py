"""The base configuration every variant starts from: defaults, a study, or a study's best trial.

``--set`` overrides are applied last, so they win over the study's base and the best trial's
parameters. The base's content hash names it on disk: cells of another base are never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgkd.ablate.errors import AblateError
from dgkd.ablate.options import OUT_DIR
from dgkd.config import NEUTRAL_FIELDS, TrainConfig
from dgkd.errors import one_line

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["BaseConfig", "config_hash", "resolve_base"]


def config_hash(cfg: TrainConfig) -> str:
    """Content hash of every config field that can change results (16 hex digits)."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in NEUTRAL_FIELDS}
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaseConfig:
    """The resolved configuration every variant starts from, and where it came from."""

    config: TrainConfig
    source: str  # "default", "study" or "from-study"
    study: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # best trial's params (from-study)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set changes, applied last
    storage: str | None = None  # where the best trial was read (from-study)

    @property
    def default_name(self) -> str:
        """The ablation's name when none is given: ``default``, the study, or ``<study>-best``."""
        if self.source == "default":
            return "default"
        return f"{self.study}-best" if self.source == "from-study" else str(self.study)

    @property
    def hash(self) -> str:
        """:func:`config_hash` of the resolved config."""
        return config_hash(self.config)


def resolve_base(
    *,
    study: str | None = None,
    from_study: str | None = None,
    storage: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] = OUT_DIR,
) -> BaseConfig:
    """The base config: the defaults, a study's base or its best trial; then ``overrides``.

    The best trial is read from ``storage`` or, by default, the study's journal
    ``<out_dir>/<study>/journal.log``.

    Raises:
        AblateError: both studies given, an unknown study, no finished trial, or a base whose
            method is not dgkd (the reference row of a DGKD ablation).
        ConfigError: an override names no config field or has a bad value.
    """
    overrides = dict(overrides or {})
    if "seed" in overrides:
        raise AblateError(
            "--set seed has no effect in an ablation: every variant runs on seeds 0..N-1; "
            "use --seeds N instead"
        )
    if study and from_study:
        raise AblateError("give --study or --from-study, not both")
    if storage and not from_study:
        raise AblateError("--storage is only read with --from-study; drop it or add --from-study")
    name = study or from_study
    # Every epoch evaluated unless --set says otherwise (a study's base may thin it out for
    # speed): the NC1 claim reads the whole curve.
    changes = {"eval_every": 1, **overrides}
    if name is None:
        base = BaseConfig(TrainConfig().replace(**changes), "default", overrides=overrides)
    else:
        spec = _load_study(name)
        if study:
            cfg = spec.config({}).replace(**changes)
            base = BaseConfig(cfg, "study", spec.name, overrides=overrides)
        else:
            params, where = _best_params(spec, storage=storage, out_dir=Path(out_dir))
            cfg = spec.config(params).replace(**changes)
            base = BaseConfig(cfg, "from-study", spec.name, params, overrides, where)
    if base.config.method != "dgkd":
        where = "--set method" if "method" in overrides else f"study {base.study}"
        raise AblateError(
            f"the base config has method {base.config.method!r} (from {where}), but the "
            "reference row of an ablation is dgkd; use a dgkd base (the kd and ce variants "
            "cover the other methods)"
        )
    return base


def _load_study(name: str) -> Study:
    from dgkd.study import SpecError, load_study

    try:
        return load_study(name)
    except (SpecError, OSError) as exc:
        raise AblateError(one_line(exc)) from None


def _best_params(spec: Study, *, storage: str | None, out_dir: Path) -> tuple[dict[str, Any], str]:
    """The study's best finished trial's parameters, and where they were read."""
    from dgkd.search import best_params

    study_dir = out_dir / spec.name
    where = storage or str(study_dir / "journal.log")
    params = best_params(spec, out_dir=study_dir, storage=storage)
    if params is None:
        out = "" if out_dir == Path(OUT_DIR) else f" --out {out_dir}"
        out += f" --storage {storage}" if storage else ""
        raise AblateError(
            f"study {spec.name!r} has no finished trials in {where}; run "
            f"'dgkd-search --study {spec.name}{out}' first, or use --study {spec.name} for its base"
        )
    return dict(params), where
