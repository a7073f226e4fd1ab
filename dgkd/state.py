"""A population's training state: everything its next epoch depends on, in one object.

:func:`dgkd.loop.fit_population` trains it epoch by epoch and :class:`dgkd.checkpoint.Keeper`
saves and restores it whole, so the two cannot disagree about what a run's state is: the
stacked members, their optimizer and learning-rate schedules, each member's generators (data
order, augmentation), the last epoch trained, and each member's history and what stopped it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dgkd.config import TrainConfig
from dgkd.data import Splits
from dgkd.models import Population, build_population, has_width
from dgkd.optim import MemberSchedules, PopulationOptimizer
from dgkd.step import family

__all__ = ["MemberRun", "PopulationState", "evaluates"]


def evaluates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the run of ``cfg`` evaluates after ``epoch`` (``eval_every``, and the last)."""
    return epoch % cfg.eval_every == 0 or epoch >= cfg.epochs


@dataclass
class MemberRun:
    """One member's outcome: its trained model, its per-epoch history, and what stopped it
    early (the exception its report raised, or a :class:`~dgkd.step.DivergedError`); then no
    model."""

    model: nn.Module | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    error: Exception | None = None


@dataclass
class PopulationState:
    """The members still training (``alive``: indices into ``cfgs``, in the population's
    order) and everything they carry from one epoch to the next; ``runs`` has one entry per
    config, stopped members included."""

    cfgs: Sequence[TrainConfig]
    alive: list[int]
    pop: Population
    opt: PopulationOptimizer
    schedules: MemberSchedules
    orders: dict[int, torch.Generator]  # data order, per config index
    augs: dict[int, torch.Generator]  # augmentation, per config index
    runs: list[MemberRun]
    epoch: int = 0  # the last epoch trained

    @classmethod
    def fresh(
        cls, cfgs: Sequence[TrainConfig], splits: Splits, device: torch.device
    ) -> PopulationState:
        """Untrained members, each initialized and shuffled by its own seed; members of one
        loss family sit next to each other, so that each family's loss runs on one slice."""
        first = cfgs[0]
        alive = sorted(range(len(cfgs)), key=lambda i: family(cfgs[i].method))
        width = (first.student_width or None) if has_width(first.student) else None
        pop = build_population(
            first.student,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            width=width,
            seeds=[cfgs[i].seed for i in alive],
        ).to(device)
        return cls(
            cfgs=cfgs,
            alive=alive,
            pop=pop,
            opt=PopulationOptimizer([cfgs[i] for i in alive], list(pop.parameters()), device),
            schedules=MemberSchedules(cfgs, first.epochs),
            orders={i: torch.Generator().manual_seed(cfgs[i].seed) for i in alive},
            augs={i: torch.Generator(device=device).manual_seed(cfgs[i].seed + 1) for i in alive},
            runs=[MemberRun() for _ in cfgs],
        )

    @property
    def members(self) -> list[TrainConfig]:
        """The configs of the members still training, in the population's order."""
        return [self.cfgs[i] for i in self.alive]

    @property
    def done(self) -> bool:
        """Every epoch trained, or every member stopped."""
        return self.epoch >= self.cfgs[0].epochs or all(
            self.runs[i].error is not None for i in self.alive
        )

    def select(self, keep: Sequence[int]) -> None:
        """Keep the members at positions ``keep`` of ``alive`` (weights, optimizer state)."""
        if len(keep) == len(self.alive):
            return
        self.alive = [self.alive[k] for k in keep]
        self.pop = self.pop.select(keep)
        self.opt = self.opt.select(keep, self.members, list(self.pop.parameters()))

    def drop_stopped(self) -> None:
        """Leave out the members that stopped, unless none goes on (the run then ends)."""
        keep = [k for k, i in enumerate(self.alive) if self.runs[i].error is None]
        if keep:
            self.select(keep)

    def finish(self) -> list[MemberRun]:
        """Every config's run, each member that trained to the end with its model."""
        for k, i in enumerate(self.alive):
            if self.runs[i].error is None:
                self.runs[i].model = self.pop.member(k)
        return self.runs
