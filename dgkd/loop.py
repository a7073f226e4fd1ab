"""The one training loop, shared by the teacher and every student, one model or a population.

:func:`fit_population` trains K students of one architecture at once (a
:class:`~dgkd.models.Population`): each member keeps its own seed (initialization, data order,
augmentation), loss settings, learning rate and weight decay, and computes exactly what it would
alone, so member i is the same experiment as ``fit(cfgs[i])``. :func:`fit` is the population of
one. The loop advances one :class:`~dgkd.state.PopulationState` (what the checkpoint saves and
restores) epoch by epoch: the epoch's steps, its evaluation (every ``eval_every`` epochs), its
reports. ``predict`` runs a model or a population in eval mode; ``population_loss`` and
``distill_loss`` are the step's loss for each method. Nothing here reads files or knows about
teachers' caches, searches or metrics beyond the end-of-epoch evaluation
(:mod:`dgkd.epoch_metrics`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgkd.checkpoint import Checkpoint, Keeper
from dgkd.config import ConfigError, TrainConfig, field_names
from dgkd.data import Splits
from dgkd.epoch_metrics import EPOCH_METRICS, epoch_metrics
from dgkd.losses import TeacherStats, teacher_stats
from dgkd.methods import get as get_method
from dgkd.models import Population
from dgkd.optim import build_optimizer, build_scheduler
from dgkd.progress import Bar
from dgkd.state import MemberRun, PopulationState, evaluates
from dgkd.step import DivergedError, EpochData, distill_loss, population_loss

__all__ = [
    "MEMBER_FIELDS",
    "DivergedError",
    "MemberRun",
    "PopulationReport",
    "Report",
    "build_optimizer",
    "build_scheduler",
    "check_population",
    "distill_loss",
    "fit",
    "fit_population",
    "population_loss",
    "predict",
    "resolve_device",
]

Report = Callable[[int, dict[str, float]], None]
# report(member, epoch, row): member is the index into the configs given; raising stops it.
PopulationReport = Callable[[int, int, dict[str, float]], None]

# The fields in which the members of one population may differ; all others are shared.
MEMBER_FIELDS = (
    "seed",
    "method",
    "alpha",
    "beta",
    "epsilon",
    "temperature",
    "grad_term",
    "grad_sign",
    "ce_weight",
    "kd_weight",
    "warmup",
    "lr",
    "weight_decay",
    "checkpoint_every",  # when to save, not what is computed
)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available; use device=auto")
    return torch.device(name)


@torch.no_grad()
def predict(
    model: nn.Module,
    splits: Splits,
    x: Tensor,
    *,
    device: torch.device,
    batch_size: int,
    amp: bool = False,
) -> tuple[Tensor, Tensor]:
    """Eval-mode logits and features of ``x`` (float32, on ``device``): (N, C) and (N, F), or
    (K, N, C) and (K, N, F) for a population (every member sees all of ``x``)."""
    model.eval()
    logits, feats = [], []
    for start in range(0, len(x), batch_size):
        inputs = splits.inputs(x[start : start + batch_size].to(device))
        if isinstance(model, Population):
            inputs = inputs.expand(model.size, *inputs.shape)
        with _autocast(device, amp):
            lo, fe = model(inputs)
        logits.append(lo.float())
        feats.append(fe.float())
    return torch.cat(logits, -2), torch.cat(feats, -2)


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def check_population(cfgs: Sequence[TrainConfig]) -> None:
    """Raise ``ValueError`` unless ``cfgs`` can train as one population: they may differ only
    in :data:`MEMBER_FIELDS` (and must share a teacher, which the caller checks)."""
    if not cfgs:
        raise ValueError("a population needs at least one config")
    for name in field_names():
        if name not in MEMBER_FIELDS and len({getattr(c, name) for c in cfgs}) > 1:
            raise ValueError(f"the members of one population must share {name}")


def fit(
    cfg: TrainConfig,
    splits: Splits,
    *,
    teacher: nn.Module | None,
    teacher_train_logits: Tensor | None,
    device: torch.device,
    report: Report | None = None,
    progress: bool = False,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a fresh model for ``cfg.epochs`` and return it with its per-epoch history.

    :func:`fit_population` for one member; its ``report`` raising, or a non-finite loss
    (:class:`DivergedError`), propagates.
    """
    on_epoch = None if report is None else (lambda _member, epoch, row: report(epoch, row))
    (run,) = fit_population(
        [cfg],
        splits,
        teacher=teacher,
        teacher_train_logits=teacher_train_logits,
        device=device,
        report=on_epoch,
        progress=progress,
    )
    if run.error is not None:
        raise run.error
    assert run.model is not None
    return run.model, run.history


def fit_population(
    cfgs: Sequence[TrainConfig],
    splits: Splits,
    *,
    teacher: nn.Module | None,
    teacher_train_logits: Tensor | None,
    device: torch.device,
    report: PopulationReport | None = None,
    progress: bool = False,
    checkpoint: Checkpoint | None = None,
) -> list[MemberRun]:
    """Train K fresh students at once; ``runs[i]`` is exactly what ``fit(cfgs[i])`` gives.

    The teacher's logits come from ``teacher_train_logits`` (indexed by example) when the
    training inputs are not augmented, else from a teacher forward pass on each member's batch.
    ``report(i, epoch, row)`` is called after every epoch of member i, with ``val_acc`` on
    ``splits.epoch_val_split`` (a validation pool's prefix; NaN at the epochs ``eval_every``
    skips); if it raises (e.g. to prune), or member i's loss becomes non-finite, member i stops:
    its run keeps the exception and its history, and it leaves the stacked tensors at the end of
    that epoch.

    With ``checkpoint`` (and ``checkpoint_every`` > 0) the population saves its state there
    (:mod:`dgkd.checkpoint`), after resuming from a state saved by the same configs: the runs
    then end exactly as uninterrupted ones would.

    Raises:
        ValueError: the configs cannot share one population (:func:`check_population`).
        CheckpointError: a saved state of these configs does not fit this code.
    """
    check_population(cfgs)
    state = PopulationState.fresh(cfgs, splits, device)
    inputs = _Inputs.of(state, splits, teacher, teacher_train_logits, device)
    keeper = Keeper.open(checkpoint, cfgs)
    if keeper is not None and keeper.restore(state, report):
        state.drop_stopped()
    first = cfgs[0]
    label = f"training {first.student}" + (f" x{len(cfgs)}" if len(cfgs) > 1 else "")
    saving = keeper.on_interrupt() if keeper else nullcontext()
    with Bar(progress, label, first.epochs, completed=state.epoch) as bar, saving:
        while not state.done:
            state.epoch += 1
            rows = _train_epoch(state, inputs)
            # val_acc, val_ece, train_nc1: evaluation only, the training is unchanged
            if rows and evaluates(first, state.epoch):
                run = functools.partial(
                    predict,
                    state.pop,
                    splits,
                    device=device,
                    batch_size=first.eval_batch_size,
                    amp=first.amp,
                )
                evaluated = epoch_metrics(run, inputs.val, inputs.train, splits.num_classes)
                for row, extra in zip(rows, evaluated, strict=True):
                    row.update(extra)
            for i, row in zip(state.alive, rows, strict=False):
                if state.runs[i].error is None:
                    state.runs[i].history.append(row)
            if keeper is not None:  # before the reports, which Tune attaches the state to
                keeper.epoch_end(state)
            _report(state, rows, report)
            bar.advance(_progress_text(rows))
            state.drop_stopped()
    return state.finish()


@dataclass(frozen=True)
class _Inputs:
    """What every epoch of one population reads: the data on the device, the teacher, and
    (cached logits only) the teacher's per-temperature statistics, computed once per run."""

    splits: Splits
    device: torch.device
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]  # a validation pool's prefix (Splits.epoch_val_split)
    teacher: nn.Module | None
    teacher_logits: Tensor | None
    stats: dict[float, TeacherStats]

    @classmethod
    def of(
        cls,
        state: PopulationState,
        splits: Splits,
        teacher: nn.Module | None,
        teacher_logits: Tensor | None,
        device: torch.device,
    ) -> _Inputs:
        train = (splits.train_x.to(device), splits.train_y.to(device))
        stats: dict[float, TeacherStats] = {}
        if teacher_logits is not None:
            dkd = [c for c in state.members if get_method(c.method).fused == "dkd"]
            for t in {c.temperature for c in dkd}:
                stats[t] = teacher_stats(teacher_logits, train[1], temperature=t)
        val_x, val_y = (t.to(device) for t in splits.epoch_val_split)
        return cls(splits, device, train, (val_x, val_y), teacher, teacher_logits, stats)


def _train_epoch(state: PopulationState, inputs: _Inputs) -> list[dict[str, float]]:
    """Train the members still alive for epoch ``state.epoch``: one row per member (its mean
    loss and terms over the epoch's steps), none when every member diverged at once. A member
    whose loss becomes non-finite gets a :class:`DivergedError` and trains no further."""
    members, alive, runs, epoch = state.members, state.alive, state.runs, state.epoch
    first, (train_x, train_y) = members[0], inputs.train
    n, bs = len(train_y), first.batch_size
    weights = [min(epoch / c.warmup, 1.0) if c.warmup else 1.0 for c in members]
    perms = torch.stack([torch.randperm(n, generator=state.orders[i]) for i in alive])
    epoch_data = EpochData(
        members,
        inputs.splits,
        perms.to(inputs.device),
        train_x,
        train_y,
        inputs.teacher_logits,
        inputs.stats,
        weights,
    )
    families = epoch_data.families
    ones = torch.ones(len(alive), device=inputs.device)
    state.pop.train()
    lrs = state.schedules.lrs(alive)
    running: list[Tensor | None] = [None] * len(families)
    terms: list[dict[str, Tensor]] = []
    steps = 0
    # A last batch of one example would break BatchNorm; fold it away.
    for start in range(0, n - (1 if n % bs == 1 else 0), bs):
        batch = slice(start, start + bs)
        x = epoch_data.inputs(batch, [state.augs[i] for i in alive])
        with _autocast(inputs.device, first.amp):
            logits, _ = state.pop(x)
            sides = [epoch_data.teacher(f, batch, x, inputs.teacher) for f in range(len(families))]
        losses, terms = [], []
        for f, (fam, (logits_t, fam_stats)) in enumerate(zip(families, sides, strict=True)):
            loss, term = population_loss(
                members[fam],
                logits if len(families) == 1 else logits[fam],
                logits_t,
                epoch_data.ys[fam, batch],
                weights[fam],
                stats=fam_stats,
                settings=epoch_data.settings[f],
            )
            losses.append(loss)
            terms.append(term)
        loss_all = losses[0] if len(losses) == 1 else torch.cat(losses)
        finite = torch.isfinite(loss_all)
        if not bool(finite.all()):
            for k in (~finite).nonzero().flatten().tolist():
                if runs[alive[k]].error is None:
                    runs[alive[k]].error = DivergedError(epoch, steps + 1, loss_all[k].item())
            if all(runs[i].error is not None for i in alive):
                break
        loss_all.backward(ones)
        state.opt.step(lrs)
        for f, (loss, term) in enumerate(zip(losses, terms, strict=True)):
            values = torch.stack([loss.detach(), *term.values()], -1)  # one add per step
            total = running[f]
            running[f] = values if total is None else total + values
        steps += 1
    state.schedules.step()
    return _rows(epoch, running, terms, steps) if steps else []


def _report(
    state: PopulationState, rows: list[dict[str, float]], report: PopulationReport | None
) -> None:
    """Report each running member's epoch row; a report that raises stops its member (pruned),
    the others go on."""
    if report is None:
        return
    for i, row in zip(state.alive, rows, strict=False):
        if state.runs[i].error is None:
            try:
                report(i, state.epoch, dict(row))
            except Exception as exc:
                state.runs[i].error = exc


def _rows(
    epoch: int, running: list[Tensor | None], terms: list[dict[str, Tensor]], steps: int
) -> list[dict[str, float]]:
    """Each member's epoch row: the mean over the epoch's steps of its loss and terms."""
    rows: list[dict[str, float]] = []
    for total, term in zip(running, terms, strict=True):
        keys = ("train_loss", *term)
        assert total is not None
        for values in (total / steps).tolist():
            row = {"epoch": float(epoch)}
            row.update(zip(keys, values, strict=True))
            # NaN until evaluated (eval_every), and val_* without a validation split
            row.update(dict.fromkeys(EPOCH_METRICS, float("nan")))
            rows.append(row)
    return rows


def _progress_text(rows: list[dict[str, float]]) -> str | None:
    if not rows:
        return ""
    if any(math.isnan(r["val_acc"]) for r in rows):
        return None  # not evaluated this epoch (eval_every): the bar keeps the last figure
    if len(rows) == 1:
        return f"val_acc {rows[0]['val_acc']:.3f}"
    return f"mean val_acc {sum(r['val_acc'] for r in rows) / len(rows):.3f} of {len(rows)}"
