"""The gradient term: closed-form ``dgkd_loss`` against the double-backward formulation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import torch
from torch import Tensor

from benchmarks.naive import autograd_dgkd_loss
from benchmarks.report import Comparison, Row, interleaved
from dgkd.losses import dgkd_loss

__all__ = ["HYPERS", "TITLE", "Hypers", "run"]

TITLE = "Gradient term: dgkd_loss (closed form) vs autograd.grad(create_graph=True)"


class Hypers(TypedDict):
    """The loss's hyperparameters, as keyword arguments of both formulations."""

    alpha: float
    beta: float
    epsilon: float
    temperature: float


HYPERS = Hypers(alpha=1.0, beta=8.0, epsilon=6.0, temperature=4.0)  # DKD's, with DGKD's epsilon


def _inputs(batch: int, classes: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Student logits (requiring grad), teacher logits and targets, seeded, on ``device``."""
    gen = torch.Generator().manual_seed(0)
    zs = torch.randn(batch, classes, generator=gen).to(device).requires_grad_(True)
    zt = torch.randn(batch, classes, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    return zs, zt, y


def run(device: torch.device, *, quick: bool) -> Comparison:
    """Closed-form dgkd_loss against the double-backward formulation, forward + backward.

    Like for like: both compute the loss and its gradient (dgkd_loss also returns TCKD, NCKD and
    M, which it needs anyway); dgkd_loss's diagnostic cosine of g_T and g_N, which the baseline
    does not compute, is timed in a row of its own.
    """
    comp = Comparison(TITLE)
    repeats, inner = (3, 20) if quick else (15, 200)
    for batch, classes in ((64, 100), (128, 10)):
        zs, zt, y = _inputs(batch, classes, device)

        def fused(zs: Tensor = zs, zt: Tensor = zt, y: Tensor = y) -> None:
            dgkd_loss(zs, zt, y, cosine=False, **HYPERS)["loss"].backward()

        def fused_cosine(zs: Tensor = zs, zt: Tensor = zt, y: Tensor = y) -> None:
            dgkd_loss(zs, zt, y, **HYPERS)["loss"].backward()

        def autograd(zs: Tensor = zs, zt: Tensor = zt, y: Tensor = y) -> None:
            autograd_dgkd_loss(zs, zt, y, **HYPERS).backward()

        fns: dict[str, Callable[[], object]] = {"a": autograd, "b": fused, "c": fused_cosine}
        times = interleaved(fns, repeats=repeats, inner=inner, device=device)
        a = Row(f"autograd ({batch}, {classes})", times["a"])
        b = Row(f"dgkd_loss ({batch}, {classes})", times["b"])
        c = Row(f"dgkd_loss with grad_cos, its default ({batch}, {classes})", times["c"])
        comp.rows += [a, b, c]
        comp.ratio(f"speed-up at ({batch}, {classes})", a.median / b.median, ">= 2x")
        comp.ratio(
            f"speed-up at ({batch}, {classes}), with grad_cos", a.median / c.median, "report"
        )
    comp.notes.append(
        "both sides compute the loss and its gradient from raw logits (the teacher's side "
        "included); the baseline is the DKD reference code's formulation, differentiated twice"
    )
    return comp
