"""What one training step of a population computes on: its data and its loss.

:class:`EpochData` holds one epoch's data, each member's examples in its own order, and the
teacher's side of every batch (cached logits, precomputed statistics, or a forward pass).
:func:`population_loss` is each member's loss for its method (:mod:`dgkd.methods`);
:func:`distill_loss` the same for one run's B x C logits. A population's members are ordered by
loss family (:func:`family`: the built-ins' kernels ce, kd, dkd/dgkd, then each other method),
so that each family is one contiguous slice of the stacked tensors and needs one loss call.
:class:`DivergedError` is what a member's non-finite loss becomes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgkd.config import TrainConfig
from dgkd.data import Splits
from dgkd.losses import TeacherStats, cross_entropy, dgkd_loss, kd_loss
from dgkd.methods import Method
from dgkd.methods import get as get_method

__all__ = [
    "DivergedError",
    "EpochData",
    "distill_loss",
    "family",
    "loss_settings",
    "population_loss",
]

# The built-ins' population kernels, in the order their members come.
_KERNELS = ("ce", "kd", "dkd")


def family(method: str) -> tuple[int, str]:
    """The sort key of ``method``'s loss family: one family per built-in kernel (dkd and dgkd
    share one), then one per other method, which runs member by member."""
    fused = get_method(method).fused
    return (_KERNELS.index(fused), "") if fused else (len(_KERNELS), method)


class DivergedError(RuntimeError):
    """The training loss became non-finite; carries where, so a search can record it."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}; lower lr or epsilon, "
            "or use grad_term='normalized'"
        )

    def __reduce__(self) -> tuple[type[DivergedError], tuple[int, int, float]]:
        """Pickled and copied whole (Ray and worker processes pass exceptions on)."""
        return type(self), (self.epoch, self.step, self.value)


def _per_member(values: Sequence[float], device: torch.device) -> float | Tensor:
    """One number when all members agree (the single run's path), else a float64 (K,) tensor:
    the loss functions then give each member bitwise what its number alone gives."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _scale(value: float | Tensor, terms: Tensor) -> Tensor:
    return value.to(terms.dtype) * terms if isinstance(value, Tensor) else value * terms


def loss_settings(
    cfgs: Sequence[TrainConfig], weights: Sequence[float], device: torch.device
) -> dict[str, Any]:
    """The numbers of :func:`population_loss` for members of one loss family at warmup factors
    ``weights``: one number where all members agree, else a float64 (K,) tensor. They change
    once per epoch, so a loop computes them once per epoch."""
    pairs = list(zip(cfgs, weights, strict=True))
    pm = functools.partial(_per_member, device=device)
    settings: dict[str, Any] = {"ce_weight": pm([c.ce_weight for c in cfgs])}
    fused = get_method(cfgs[0].method).fused
    if fused == "dkd":
        terms = [c.grad_term for c in cfgs]
        # The warmup factor scales the three weights (the term is linear in them).
        settings.update(
            alpha=pm([w * c.alpha for c, w in pairs]),
            beta=pm([w * c.beta for c, w in pairs]),
            epsilon=pm([w * c.epsilon if c.method == "dgkd" else 0.0 for c, w in pairs]),
            temperature=pm([c.temperature for c in cfgs]),
            grad_term=terms[0] if len(set(terms)) == 1 else terms,
            grad_sign=pm([c.grad_sign for c in cfgs]),
        )
    elif fused == "kd":
        settings.update(
            temperature=pm([c.temperature for c in cfgs]),
            kd_weight=pm([w * c.kd_weight for c, w in pairs]),
        )
    return settings


def population_loss(
    cfgs: Sequence[TrainConfig],
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    weights: Sequence[float],
    *,
    stats: TeacherStats | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Each member's training loss ``ce_weight * CE + weight * distillation`` and its terms.

    ``cfgs`` are K members of one loss family (ce, kd, or dkd/dgkd), ``logits_s`` their
    (K, B, C) logits, ``weights`` their warmup factors ``min(epoch / warmup, 1)``; ``stats``
    optionally carries the batch's precomputed teacher side for dkd/dgkd, and ``settings``
    :func:`loss_settings` of these members and weights. Returns (K,) losses and (K,) terms,
    each member's bitwise its own run's. Pure: no state, no side effects.
    """
    method = get_method(cfgs[0].method)
    if method.fused is None:
        return _member_by_member(method, cfgs, logits_s, logits_t, target, weights)
    if settings is None:
        settings = loss_settings(cfgs, weights, logits_s.device)
    if logits_s.shape[0] > 1 and logits_s.shape[1] % _VECTOR_SPAN:
        return _one_by_one(cfgs, logits_s, logits_t, target, weights, stats, settings)
    if method.fused == "dkd":
        # CE is fused into the same node: one forward and one closed-form backward.
        out = dgkd_loss(logits_s, logits_t, target, stats=stats, **settings)
        return out.pop("loss"), out
    ce = cross_entropy(logits_s, target)
    loss = _scale(settings["ce_weight"], ce)
    terms: dict[str, Tensor] = {"ce": ce.detach()}
    if method.fused == "kd":
        assert logits_t is not None, "kd needs the teacher's logits"
        kd = kd_loss(logits_s, logits_t, temperature=settings["temperature"])
        loss = loss + _scale(settings["kd_weight"], kd)
        terms["kd"] = kd.detach()
    return loss, terms


# Element-wise kernels run a vectorized body and a scalar tail, and exp and log round
# differently in the two. A member's (B, 1) and (B, C) blocks are handled exactly as its own
# run's when B is a multiple of the widest body (2 x 16 floats): always, or never, in the tail.
_VECTOR_SPAN = 64


def _one_by_one(
    cfgs: Sequence[TrainConfig],
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    weights: Sequence[float],
    stats: TeacherStats | None,
    settings: dict[str, Any],
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`population_loss` member by member, for batches (such as an epoch's last one) of
    other sizes: the members' numbers as their own runs' (Python numbers, the same floats)."""
    losses, terms = [], []
    for k in range(logits_s.shape[0]):
        one = {
            key: (value[k] if isinstance(value, list) else float(value[k]))
            if isinstance(value, (list, Tensor))
            else value
            for key, value in settings.items()
        }
        member = slice(k, k + 1)
        loss, term = population_loss(
            cfgs[member],
            logits_s[member],
            None if logits_t is None else logits_t[member],
            target[member],
            weights[member],
            stats=None if stats is None else TeacherStats(stats.table[member]),
            settings=one,
        )
        losses.append(loss)
        terms.append(term)
    return torch.cat(losses), {key: torch.cat([t[key] for t in terms]) for key in terms[0]}


def _member_by_member(
    method: Method,
    cfgs: Sequence[TrainConfig],
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    weights: Sequence[float],
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`population_loss` of a method without a kernel: its ``loss`` on each member's
    (B, C) logits with that member's settings, as in its own run (the CE too)."""
    losses, ces, terms = [], [], []
    for k, (cfg, weight) in enumerate(zip(cfgs, weights, strict=True)):
        student = logits_s[k].float()  # float32 under amp too, as the built-ins compute
        ce = F.cross_entropy(student, target[k])
        ces.append(ce.detach())
        if method.loss is None:
            losses.append(cfg.ce_weight * ce)
            continue
        settings = {name: getattr(cfg, name) for name in method.reads}
        teacher = None if logits_t is None or not method.needs_teacher else logits_t[k].float()
        term = method.loss(student, teacher, target[k], settings)
        if not isinstance(term, Tensor) or term.ndim != 0:
            got = tuple(term.shape) if isinstance(term, Tensor) else type(term).__name__
            raise ValueError(f"method {cfg.method}: loss must return a 0-d tensor, got {got}")
        losses.append(cfg.ce_weight * ce + weight * term.float())
        terms.append(term.detach().float())
    out = {"ce": torch.stack(ces)}
    if terms:
        out["distill"] = torch.stack(terms)
    return torch.stack(losses), out


def distill_loss(
    cfg: TrainConfig,
    logits_s: Tensor,
    logits_t: Tensor | None,
    target: Tensor,
    weight: float,
    *,
    stats: TeacherStats | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One run's step loss on B x C logits: :func:`population_loss` for a population of one."""
    stats = None if stats is None else TeacherStats(stats.table.unsqueeze(0))
    loss, terms = population_loss(
        [cfg],
        logits_s.unsqueeze(0),
        None if logits_t is None else logits_t.unsqueeze(0),
        target.unsqueeze(0),
        [weight],
        stats=stats,
    )
    return loss[0], {key: value[0] for key, value in terms.items()}


# An epoch's examples are gathered once, in each member's order, up to this size (else per batch).
_EPOCH_BYTES = 256 * 2**20


class EpochData:
    """One epoch's data in each member's order, and the teacher's side of every batch."""

    def __init__(
        self,
        members: list[TrainConfig],
        splits: Splits,
        perms: Tensor,
        train_x: Tensor,
        train_y: Tensor,
        teacher_logits: Tensor | None,
        stats: dict[float, TeacherStats],
        weights: list[float],
    ) -> None:
        size, n = perms.shape
        self.splits, self.perms, self.train_x = splits, perms, train_x
        flat = perms.view(-1)
        self.ys = train_y.index_select(0, flat).view(size, n)
        row_bytes = train_x[:1].numel() * train_x.element_size()
        self.xs = None  # the epoch's examples, once, when they fit; each batch is then a slice
        if size == 1 or size * n * row_bytes <= _EPOCH_BYTES:
            self.xs = train_x.index_select(0, flat).view(size, n, *train_x.shape[1:])
        self.families: list[slice] = []
        for k, cfg in enumerate(members):
            if k == 0 or family(cfg.method) != family(members[k - 1].method):
                self.families.append(slice(k, k + 1))
            else:
                self.families[-1] = slice(self.families[-1].start, k + 1)
        self.logits_t: dict[int, Tensor] = {}
        self.stats: dict[int, TeacherStats] = {}
        self._methods = [get_method(members[fam.start].method) for fam in self.families]
        for f, fam in enumerate(self.families):
            method = self._methods[f]
            if not method.needs_teacher or teacher_logits is None:
                continue
            if method.fused != "dkd":  # the logits themselves
                self.logits_t[f] = teacher_logits.index_select(0, perms[fam].reshape(-1)).view(
                    fam.stop - fam.start, n, -1
                )
                continue
            temps = [c.temperature for c in members[fam]]
            if len(set(temps)) == 1:
                table = stats[temps[0]].table.index_select(0, perms[fam].reshape(-1))
            else:
                table = torch.cat(
                    [
                        stats[t].table.index_select(0, p)
                        for t, p in zip(temps, perms[fam], strict=True)
                    ]
                )
            self.stats[f] = TeacherStats(table.view(fam.stop - fam.start, n, -1))
        self.settings = [
            loss_settings(members[fam], weights[fam], perms.device) for fam in self.families
        ]

    def inputs(self, batch: slice, generators: list[torch.Generator]) -> Tensor:
        """The members' inputs for ``batch`` (K, B, ...), augmented per member when the data
        is, each with its own generator."""
        if self.xs is not None:
            x = self.xs[:, batch]
        else:
            index = self.perms[:, batch]
            x = self.train_x.index_select(0, index.reshape(-1))
            x = x.view(*index.shape, *self.train_x.shape[1:])
        if not self.splits.augment:
            return self.splits.inputs(x, train=True)
        return torch.stack(
            [
                self.splits.inputs(xk, train=True, generator=g)
                for xk, g in zip(x, generators, strict=True)
            ]
        )

    def teacher(
        self, f: int, batch: slice, x: Tensor, model: nn.Module | None
    ) -> tuple[Tensor | None, TeacherStats | None]:
        """Family ``f``'s teacher logits (K_f, B, C) or precomputed stats for ``batch``."""
        if f in self.stats:
            return None, self.stats[f].rows(batch)
        if f in self.logits_t:
            return self.logits_t[f][:, batch], None
        if not self._methods[f].needs_teacher or model is None:
            return None, None
        with torch.no_grad():  # augmented inputs: the teacher sees each member's batch
            fam = self.families[f]
            return torch.stack([model(xk)[0].float() for xk in x[fam]]), None
