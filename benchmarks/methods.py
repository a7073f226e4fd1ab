"""Plugin methods per training step: a built-in's fused kernel against the same loss as a plugin.

A built-in method (``kd``, ``dkd``) computes a whole population's loss in one fused pass; a
method of one's own (``module:ATTR``, docs/methods.md) runs member by member. To show what that
costs, the same losses are written here as plugins (:data:`KD_PLUGIN`: Hinton's KD as
docs/methods.md writes it; :data:`DKD_PLUGIN`: DKD as the reference code writes it) and both
are timed per training step of a population, stepped as ``dgkd.loop.fit_population`` steps it.
Before timing, each plugin's losses and gradients are checked against its built-in's on the same
logits, so that the times compare the same computation.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.report import QUICK_POOLS, Comparison, Row, interleaved, require_cpu
from dgkd.config import TrainConfig
from dgkd.data import Splits
from dgkd.loop import check_population
from dgkd.losses import TeacherStats, teacher_stats
from dgkd.methods import Method, get
from dgkd.state import PopulationState
from dgkd.step import EpochData, population_loss
from dgkd.teacher import load_teacher
from dgkd.train import splits_for

__all__ = [
    "DKD_PLUGIN",
    "KD_PLUGIN",
    "PAIRS",
    "TITLE",
    "TOLERANCE",
    "PopulationStep",
    "dkd_plugin",
    "hinton",
    "loss_gaps",
    "run",
]

TITLE = "Plugin methods per training step: built-in fused kernels vs the member-by-member path"
# The largest difference that still counts as the same computation: in a member's loss,
# relative to the loss (at least 1; the default kd's losses start near 130, where one float32
# step is 1.5e-5), and in a gradient element: two formulations' rounding, far below a step's.
TOLERANCE = 1e-5


def hinton(
    student: Tensor, teacher: Tensor | None, labels: Tensor, settings: Mapping[str, Any]
) -> Tensor:
    """Hinton's KD for one student, written from its definition as docs/methods.md does."""
    assert teacher is not None, "kd needs the teacher's logits"
    t = settings["temperature"]
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    return settings["kd_weight"] * t * t * F.kl_div(log_p, q, reduction="batchmean")


def dkd_plugin(
    student: Tensor, teacher: Tensor | None, labels: Tensor, settings: Mapping[str, Any]
) -> Tensor:
    """DKD for one student as its reference code writes it, autograd for the gradient:
    ``alpha * TCKD + beta * NCKD``, each ``T^2`` times a batch-mean KL (binary split; the
    non-target classes, the target masked by -1000)."""
    assert teacher is not None, "dkd needs the teacher's logits"
    t, alpha, beta = settings["temperature"], settings["alpha"], settings["beta"]
    gt = F.one_hot(labels, student.shape[1]).to(student.dtype)
    p_s, p_t = F.softmax(student / t, dim=1), F.softmax(teacher / t, dim=1)
    bin_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    bin_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(bin_s.log(), bin_t, reduction="batchmean")
    log_ns = F.log_softmax(student / t - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ns, F.softmax(teacher / t - 1000.0 * gt, dim=1), reduction="batchmean")
    return t * t * (alpha * tckd + beta * nckd)


KD_PLUGIN = Method("kd_plugin", hinton, ("temperature", "kd_weight"))
DKD_PLUGIN = Method("dkd_plugin", dkd_plugin, ("alpha", "beta", "temperature"), min_classes=3)
# Each built-in and the config reference of the same loss as a plugin.
PAIRS = {"kd": f"{__name__}:KD_PLUGIN", "dkd": f"{__name__}:DKD_PLUGIN"}


class PopulationStep:
    """One training step of a population, as ``dgkd.loop`` trains an epoch: the members'
    batches from :class:`~dgkd.step.EpochData` (cached teacher logits, or the teacher's
    precomputed statistics for dkd/dgkd), the stacked forward, :func:`population_loss` per loss
    family, one backward and the population optimizer. Each call takes the epoch's next full
    batch, cycling (the short last batch, which the built-ins run member by member, is left
    out), at warmup factor 1 (past the warmup, as most of a run is)."""

    def __init__(self, cfgs: Sequence[TrainConfig], splits: Splits, logits_t: Tensor) -> None:
        check_population(cfgs)
        device = logits_t.device
        state = PopulationState.fresh(cfgs, splits, device)
        members, alive = state.members, state.alive
        train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
        stats: dict[float, TeacherStats] = {}
        for c in members:
            if get(c.method).fused == "dkd" and c.temperature not in stats:
                stats[c.temperature] = teacher_stats(logits_t, train_y, temperature=c.temperature)
        n, bs = len(train_y), cfgs[0].batch_size
        perms = torch.stack([torch.randperm(n, generator=state.orders[i]) for i in alive])
        self.members, self.state = members, state
        self.weights = [1.0] * len(members)
        self.data = EpochData(
            members, splits, perms.to(device), train_x, train_y, logits_t, stats, self.weights
        )
        self.augs = [state.augs[i] for i in alive]
        self.lrs = state.schedules.lrs(alive)
        self.ones = torch.ones(len(members), device=device)
        self.batches = itertools.cycle([slice(s, s + bs) for s in range(0, n - bs + 1, bs)])
        state.pop.train()

    def losses(self, logits: Tensor, batch: slice, x: Tensor) -> Tensor:
        """The members' (K,) training losses of (K, B, C) ``logits`` on ``batch``."""
        out = []
        for f, fam in enumerate(self.data.families):
            logits_t, stats = self.data.teacher(f, batch, x, None)
            loss, _ = population_loss(
                self.members[fam],
                logits[fam],
                logits_t,
                self.data.ys[fam, batch],
                self.weights[fam],
                stats=stats,
                settings=self.data.settings[f],
            )
            out.append(loss)
        return out[0] if len(out) == 1 else torch.cat(out)

    def __call__(self) -> None:
        batch = next(self.batches)
        x = self.data.inputs(batch, self.augs)
        logits, _ = self.state.pop(x)
        loss = self.losses(logits, batch, x)
        if not bool(torch.isfinite(loss).all()):  # the trainer's per-step check
            raise FloatingPointError("a member's loss became non-finite")
        loss.backward(self.ones)
        self.state.opt.step(self.lrs)


def loss_gaps(builtin: PopulationStep, plugin: PopulationStep) -> tuple[float, float]:
    """The largest differences in the members' losses (relative, to at least 1) and in their
    gradients with respect to the logits, the plugin's against the built-in's, on the same
    logits of the first batch."""
    batch = slice(0, builtin.members[0].batch_size)
    x = builtin.data.inputs(batch, builtin.augs)
    with torch.no_grad():
        logits, _ = builtin.state.pop(x)
    out = []
    for step in (builtin, plugin):
        z = logits.clone().requires_grad_()
        loss = step.losses(z, batch, x)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        out.append((loss.detach(), grad))
    (loss_b, grad_b), (loss_p, grad_p) = out
    gap = ((loss_p - loss_b).abs() / loss_b.abs().clamp(min=1.0)).max().item()
    return gap, (grad_p - grad_b).abs().max().item()


def run(device: torch.device, *, quick: bool) -> Comparison:
    """Step time of ``kd`` and ``dkd`` against the same losses as plugins, in populations of
    8 default students and of 1 (the per-member cost).

    Raises:
        ValueError: ``device`` is not the CPU.
        RuntimeError: a plugin's losses differ from its built-in's by more than
            :data:`TOLERANCE`.
    """
    require_cpu(device, "methods")
    comp = Comparison(TITLE)
    # The step reads the training set only: small validation and test pools in both modes.
    base = TrainConfig(device=device.type).replace(**QUICK_POOLS)
    sizes, repeats, inner = (1, 8), 15, 50
    if quick:
        base = base.replace(teacher_epochs=2)
        sizes, repeats, inner = (1, 2), 2, 2
    splits = splits_for(base)
    logits_t = load_teacher(base, splits, device=device).train_logits.to(device)
    steps: dict[str, PopulationStep] = {}
    for k in sizes:
        for name, ref in PAIRS.items():
            for label, method in ((name, name), (f"{name} plugin", ref)):
                cfgs = [base.replace(method=method, seed=s) for s in range(k)]
                steps[f"{label}, K={k}"] = PopulationStep(cfgs, splits, logits_t)
    for name in PAIRS:
        k = sizes[-1]
        gap, grad_gap = loss_gaps(steps[f"{name}, K={k}"], steps[f"{name} plugin, K={k}"])
        if not max(gap, grad_gap) <= TOLERANCE:
            raise RuntimeError(
                f"{name}: the plugin's losses differ from the built-in's by {gap:.2e} relative "
                f"(gradients {grad_gap:.2e}), over {TOLERANCE:g}: not the same computation"
            )
        comp.notes.append(
            f"{name} plugin vs built-in on the same logits (K={k}, first batch): largest "
            f"relative difference {gap:.1e} in a member's loss, {grad_gap:.1e} in a gradient "
            f"element (checked <= {TOLERANCE:g})"
        )
    times = interleaved(dict(steps), repeats=repeats, inner=inner)
    med: dict[str, float] = {}
    for label, values in times.items():
        row = Row(f"{label}: one step of the population", values)
        comp.rows.append(row)
        med[label] = row.median
    big = sizes[-1]
    for name in PAIRS:
        for k in reversed(sizes):
            target = ">= 1" if k > 1 else "report"
            comp.ratio(
                f"{name} plugin / built-in, population of {k}",
                med[f"{name} plugin, K={k}"] / med[f"{name}, K={k}"],
                target,
            )
        comp.ratio(
            f"{name} built-in per member, population of {big} / population of 1",
            med[f"{name}, K={big}"] / big / med[f"{name}, K=1"],
            "report",
        )
    comp.table = [["method", "us / member, K=1", f"us / member, K={big}"]]
    for name in PAIRS:
        for label in (name, f"{name} plugin"):
            one, many = med[f"{label}, K=1"] * 1e6, med[f"{label}, K={big}"] * 1e6 / big
            comp.table.append([label, f"{one:.0f}", f"{many:.0f}"])
    comp.notes += [
        f"default student (cnn1d width {base.student_width}, batch {base.batch_size}, "
        f"{base.optimizer}), MNIST-1D with the teacher's cached logits; the built-ins' teacher "
        "side of dkd precomputed once per run, the plugins' logits gathered per epoch, as the "
        "trainer does",
        f"median of {repeats} interleaved repeats of {inner} steps; the plugins run their loss "
        "once per member per step (a Python loop), the built-ins once per population",
    ]
    return comp
