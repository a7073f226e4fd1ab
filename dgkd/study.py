"""Named studies: a base ``TrainConfig``, a search space, an objective and a budget.

A study is a TOML file, e.g. ``studies/eps_sweep.toml``::

    description = "epsilon from 0 (DKD) to 10 with DKD's alpha, beta and T"
    space = "eps"              # packaged name, a path, or an inline [space.<param>] table
    metric = "val_acc"         # a final metric of train(); never a test_* one
    direction = "maximize"
    sampler = "tpe"            # tpe | random | grid | cmaes | gp
    pruner = "median"          # median | hyperband | none
    trials = 200
    seed = 0
    enqueue = [{ epsilon = 0.0 }]   # run first (here: the DKD baseline)
    seeds = 4                  # every trial trains seeds 0..3 (paired across trials)

    [confirm]                  # retrain the top configs and the baseline on fresh seeds
    top = 3
    seeds = 10
    teachers = 3               # under each of 3 teacher seeds (the search uses the first)
    round = 5                  # 5 seeds a round, until every verdict is decisive

    [base]                     # TrainConfig overrides shared by every trial
    epochs = 40

Everything is validated when the file is loaded, so a search never starts on a typo.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgkd.config import LOSS_FIELDS, ConfigError, TrainConfig, check_method, coerce
from dgkd.metricspec import EPOCH_METRICS, SEARCHABLE
from dgkd.space import (
    Space,
    SpecError,
    available,
    load_space,
    read_toml,
    resolve_file,
    space_from_table,
)

__all__ = [
    "DIRECTIONS",
    "METRICS",
    "PRUNERS",
    "SAMPLERS",
    "Study",
    "SpecError",
    "available_studies",
    "load_study",
]

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize")
# Final metrics of train() a study may optimize, and those reported after every epoch (which a
# pruner can compare between trials): both from the metric table.
METRICS = SEARCHABLE
_KEYS = (
    "description",
    "space",
    "metric",
    "direction",
    "sampler",
    "pruner",
    "trials",
    "seed",
    "enqueue",
    "seeds",
    "batch",
    "confirm",
    "base",
)
_CONFIRM_KEYS = ("top", "seeds", "teachers", "round")


@dataclass(frozen=True)
class Study:
    """A validated study: what to train, what to vary, what to optimize, how long."""

    name: str
    source: str
    description: str
    space: Space
    base: dict[str, Any]  # TrainConfig overrides, validated
    metric: str = "val_acc"
    direction: str = "maximize"
    sampler: str = "tpe"
    pruner: str = "median"
    trials: int = 100
    seed: int = 0
    enqueue: tuple[dict[str, Any], ...] = ()  # params enqueued first (eps_sweep: {epsilon = 0})
    n_seeds: int = 1  # seeds per trial, trained as one population; the trial's value: their mean
    batch: int = 1  # trials asked of the sampler at once and trained as one population (Optuna)
    confirm_top: int = 0  # configs the confirm stage retrains on fresh seeds (0 = no stage)
    n_confirm_seeds: int = 10  # fresh seeds per config in the confirm stage
    # teacher seeds the confirm stage runs its seeds under (base teacher_seed onwards); the
    # search itself ranks configs under the first one only
    confirm_teachers: int = 1
    # fresh seeds added per round of the confirm stage, which stops once every verdict on the
    # objective is decisive (an O'Brien-Fleming sequential design); 0 = all seeds in one round
    confirm_round: int = 0

    def trial_seeds(
        self,
        overrides: dict[str, Any] | None = None,
        n_seeds: int | None = None,
        *,
        base: TrainConfig | None = None,
    ) -> list[int]:
        """The seeds every trial trains: the base config's seed and the next ``n_seeds - 1``.

        ``base``: :meth:`check_overrides` of ``overrides`` when the caller has it already.
        """
        if base is None:
            base = self.check_overrides(dict(overrides or {}))
        return list(range(base.seed, base.seed + (self.n_seeds if n_seeds is None else n_seeds)))

    def config(
        self, params: dict[str, Any], overrides: dict[str, Any] | None = None
    ) -> TrainConfig:
        """``TrainConfig()`` + base + overrides + the space's fixed values + ``params``.

        Raises:
            ConfigError: a value is invalid for its field.
        """
        changes = {**self.base, **(overrides or {}), **self.space.fixed_values(), **params}
        return TrainConfig().replace(**{k: coerce(k, v) for k, v in changes.items()})

    def check_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """Validate ``--set`` changes against this study; returns a representative config.

        Raises:
            ConfigError: an override names a space parameter (it would be silently replaced)
                or makes the configuration invalid.
        """
        taken = sorted(set(overrides) & {p.name for p in self.space.params})
        if taken:
            raise ConfigError(
                f"{taken[0]} is set by the study's search space ({self.space.source}); "
                "use another study or edit its space instead of --set"
            )
        reason = _ineffective(self.space, {**self.base, **overrides})
        if reason is not None:
            raise ConfigError(f"--set method={overrides.get('method')}: {reason}")
        return self.config(_representative(self.space), overrides)

    def replace(self, **changes: Any) -> Study:
        """A copy with ``changes`` applied (not re-validated)."""
        return dataclasses.replace(self, **changes)


def available_studies() -> list[str]:
    """Names of the packaged studies."""
    return available("studies")


def load_study(name_or_path: str | Path) -> Study:
    """Read and validate a study by packaged name or ``.toml`` path.

    Raises:
        SpecError: unknown name, malformed TOML, unknown key, wrong type or value, or a space
            whose bounds make an invalid configuration.
    """
    path = resolve_file(name_or_path, "studies")
    data = read_toml(path)
    src = str(path)

    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise SpecError(f"{src}: {unknown[0]}: unknown key; allowed: {', '.join(_KEYS)}")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = data.get(key, default)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            name = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise SpecError(f"{src}: {key}: must be of type {name}, got {value!r}")
        return value

    def choose(key: str, allowed: tuple[str, ...], default: str) -> str:
        value = get(key, str, default)
        if value not in allowed:
            raise SpecError(f"{src}: {key}: must be one of {', '.join(allowed)}, got {value!r}")
        return value

    description = get("description", str, "")
    if "test" in str(data.get("metric", "")):
        raise SpecError(
            f"{src}: metric: {data['metric']} is measured on the test split, which is reported "
            "but never optimized; use val_acc"
        )
    metric = choose("metric", METRICS, "val_acc")
    direction = choose("direction", DIRECTIONS, "maximize")
    sampler = choose("sampler", SAMPLERS, "tpe")
    pruner = choose("pruner", PRUNERS, "median")
    trials = get("trials", int, 100)
    if trials < 1:
        raise SpecError(f"{src}: trials: must be >= 1, got {trials}")
    seed = get("seed", int, 0)
    n_seeds = get("seeds", int, 1)
    if n_seeds < 1:
        raise SpecError(f"{src}: seeds: must be >= 1 (seeds per trial), got {n_seeds}")
    batch = get("batch", int, 1)
    if batch < 1:
        raise SpecError(f"{src}: batch: must be >= 1 (trials trained at once), got {batch}")
    confirm = get("confirm", dict, {})
    unknown = sorted(set(confirm) - set(_CONFIRM_KEYS))
    if unknown:
        raise SpecError(
            f"{src}: confirm.{unknown[0]}: unknown key; allowed: {', '.join(_CONFIRM_KEYS)}"
        )
    confirm_top = confirm.get("top", Study.confirm_top)
    n_confirm_seeds = confirm.get("seeds", Study.n_confirm_seeds)
    confirm_teachers = confirm.get("teachers", Study.confirm_teachers)
    confirm_round = confirm.get("round", Study.confirm_round)
    for key, value in (("top", confirm_top), ("seeds", n_confirm_seeds), ("round", confirm_round)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{src}: confirm.{key}: must be an integer >= 0, got {value!r}")
    if not isinstance(confirm_teachers, int) or isinstance(confirm_teachers, bool):
        raise SpecError(
            f"{src}: confirm.teachers: must be an integer >= 1, got {confirm_teachers!r}"
        )
    if confirm_teachers < 1:
        raise SpecError(f"{src}: confirm.teachers: must be an integer >= 1, got {confirm_teachers}")
    if confirm_top and n_confirm_seeds < 2:
        raise SpecError(f"{src}: confirm.seeds: must be >= 2 to compare paired seeds")
    if "space" not in data:
        raise SpecError(f'{src}: space: missing; name a search space, e.g. space = "eps"')
    raw_space = data["space"]
    if isinstance(raw_space, str):
        space = load_space(raw_space, relative_to=path.parent)
    elif isinstance(raw_space, dict):
        space = space_from_table(f"{path.stem}.space", raw_space, f"{src} [space]")
    else:
        raise SpecError(f"{src}: space: must be a space name, a path or a table")

    base = _base(get("base", dict, {}), space, src)
    reason = _ineffective(space, base)
    if reason is not None:
        raise SpecError(f"{src}: {reason}")
    if pruner != "none" and metric not in EPOCH_METRICS:
        raise SpecError(
            f"{src}: pruner: {metric} is measured only at the end of a trial, so it cannot "
            f'prune; use metric val_acc or pruner = "none"'
        )
    if sampler == "grid" and space.grid() is None:
        cont = next(p.name for p in space.searched() if p.grid() is None)
        raise SpecError(f"{src}: sampler: grid needs a step for float parameter {cont}")
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise SpecError(f"{src}: sampler: cmaes needs the cmaes package; pip install cmaes")
    if not space.searched():
        raise SpecError(f"{space.source}: every parameter is fixed; nothing to search")

    enqueue = _enqueue(get("enqueue", list, []), space, src)
    study = Study(
        name=path.stem,
        source=src,
        description=description,
        space=space,
        base=base,
        metric=metric,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        trials=trials,
        seed=seed,
        enqueue=enqueue,
        n_seeds=n_seeds,
        batch=batch,
        confirm_top=confirm_top,
        n_confirm_seeds=n_confirm_seeds,
        confirm_teachers=confirm_teachers,
        confirm_round=confirm_round,
    )
    _check_space_configs(study)
    return study


def _base(table: dict[str, Any], space: Space, src: str) -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            raise SpecError(f"{src}: base.{key}: unknown config field; see dgkd-train --help")
        if isinstance(value, dict):
            raise SpecError(f"{src}: base.{key}: must be a value, not a table")
        try:
            out[key] = coerce(key, value)
        except ConfigError as exc:
            raise SpecError(f"{src}: base.{key}: {exc}") from None
        if isinstance(value, bool) != (hints[key] is bool):
            raise SpecError(f"{src}: base.{key}: {key} must be of type {hints[key].__name__}")
        if hints[key] is int and isinstance(value, float):
            raise SpecError(f"{src}: base.{key}: {key} must be an integer, got {value!r}")
        if key in {p.name for p in space.params}:
            raise SpecError(f"{src}: base.{key}: also set by space {space.source}; remove one")
    try:
        TrainConfig().replace(**out)
    except ConfigError as exc:
        raise SpecError(f"{src}: base: {exc}") from None
    return out


def _ineffective(space: Space, base: dict[str, Any]) -> str | None:
    """Why a searched loss setting has no effect under every method the study can run, if so.

    E.g. epsilon searched while the method is dkd: every trial would train the same loss.
    """
    fixed = space.fixed_values()
    if "method" in fixed:
        methods: tuple[Any, ...] = (fixed["method"],)
    elif any(p.name == "method" for p in space.searched()):
        methods = space["method"].choices
    else:
        methods = (base.get("method", TrainConfig.method),)
    try:
        read = {f for m in methods for f in check_method(str(m)).fields}
    except ConfigError:
        return None  # validating the config names the bad method
    for p in space.searched():
        used_by = LOSS_FIELDS.get(p.name)
        if used_by is not None and p.name not in read:
            return (
                f"{p.name}: searched by space {space.source}, but method "
                f"{', '.join(map(str, methods))} ignores it (it applies to {', '.join(used_by)}); "
                "set base.method or search another space"
            )
    return None


def _enqueue(items: list[Any], space: Space, src: str) -> tuple[dict[str, Any], ...]:
    searched = {p.name: p for p in space.searched()}
    out = []
    for i, item in enumerate(items):
        where = f"{src}: enqueue[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{where}: must be a table of parameter values, e.g. {{ epsilon = 0 }}")
        for key, value in item.items():
            if key not in searched:
                raise SpecError(f"{where}.{key}: not a searched parameter of {space.source}")
            if not searched[key].contains(value):
                raise SpecError(f"{where}.{key}: {value!r} is outside the parameter's range")
        out.append(dict(item))
    return tuple(out)


def _representative(space: Space) -> dict[str, Any]:
    """One valid point of the space (each parameter's low end or first choice)."""
    return {p.name: p.choices[0] if p.type == "categorical" else p.low for p in space.searched()}


def _check_space_configs(study: Study) -> None:
    """Every bound and choice must make a valid config with the study's base (bad bounds)."""
    # Fixed values first: every other check applies them, so a bad one is named by its own key.
    for p in sorted(study.space.params, key=lambda p: not p.fixed):
        values = [p.value] if p.fixed else list(p.choices) or [p.low, p.high]
        point = _representative(study.space)
        for value in values:
            try:
                study.config({**point, p.name: value})
            except ConfigError as exc:
                key = "value" if p.fixed else ("choices" if p.choices else "bounds")
                raise SpecError(f"{study.space.source}: {p.name}.{key}: {exc}") from None
