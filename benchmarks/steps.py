"""Distillation overhead per training step: DGKD against CE and DKD, as the trainer steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from benchmarks.report import Comparison, Row, interleaved
from dgkd.config import TrainConfig
from dgkd.loop import build_optimizer, distill_loss
from dgkd.losses import teacher_stats
from dgkd.models import build_model

__all__ = ["SECTIONS", "TITLE", "run", "step_fn"]

TITLE = "Distillation overhead per training step"
SECTIONS = ("model forward", "loss forward", "backward (model and loss)", "optimizer step")


def step_fn(
    model: nn.Module,
    x: Tensor,
    logits_t: Tensor,
    y: Tensor,
    cfg: TrainConfig,
    cached: bool,
    clock: dict[str, float] | None = None,
) -> Callable[[], None]:
    """One training step as ``dgkd.loop.fit`` runs it, with the configured optimizer.

    ``cached``: the teacher's logits are cached (no augmentation), so dkd/dgkd use the
    precomputed teacher side of the loss, as the trainer does on MNIST-1D. ``clock``, if given,
    accumulates each section's wall time and labels the sections for torch.profiler (the profile
    comparison); without it the step runs bare.
    """
    params = list(model.parameters())
    opt = build_optimizer(cfg, params, cfg.lr, x.device)
    stats = teacher_stats(logits_t, y, temperature=cfg.temperature) if cached else None
    index = torch.arange(len(y), device=y.device)
    side = stats if cfg.method in ("dkd", "dgkd") else None  # the teacher side dkd/dgkd use

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        if clock is None:
            yield
            return
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        clock[name] = clock.get(name, 0.0) + time.perf_counter() - start

    def step() -> None:
        with section(SECTIONS[0]):
            logits, _ = model(x)
        with section(SECTIONS[1]):
            batch = side.select(index) if side is not None else None
            loss, _ = distill_loss(cfg, logits, logits_t, y, 1.0, stats=batch)
        with section(SECTIONS[2]):
            for p in params:  # as the trainer clears gradients
                p.grad = None
            loss.backward()
        with section(SECTIONS[3]):
            opt.step()

    return step


def run(device: torch.device, *, quick: bool) -> Comparison:
    """Per-step cost (forward, loss, backward, optimizer step) of DGKD against CE and DKD."""
    comp = Comparison(TITLE)
    small, large = ((2, 10), (1, 1)) if quick else ((7, 100), (5, 10))  # (repeats, inner)
    if device.type == "cuda" and not quick:
        large = (7, 50)  # a GPU step takes milliseconds, not a second
    cifar = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    default = TrainConfig()
    cases = [
        (f"default student (cnn1d w{default.student_width}, batch {default.batch_size}, Adam)",
         "cnn1d", default.student_width, (40,), 10, default.batch_size, small, True, default),
        ("resnet8x4, CIFAR-100 shape (batch 64, SGD)", "resnet8x4", None, (3, 32, 32), 100, 64,
         large, False, cifar),
    ]  # fmt: skip
    for label, arch, width, shape, classes, batch, (repeats, inner), cached, base in cases:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, *shape, generator=gen).to(device)
        y = torch.randint(0, classes, (batch,), generator=gen).to(device)
        logits_t = (torch.randn(batch, classes, generator=gen) * 3).to(device)
        steps: dict[str, Callable[[], object]] = {}
        for method in ("ce", "dkd", "dgkd"):
            torch.manual_seed(0)
            model = build_model(arch, num_classes=classes, input_shape=shape, width=width)
            model.to(device)
            steps[method] = step_fn(model, x, logits_t, y, base.replace(method=method), cached)
        times = interleaved(steps, repeats=repeats, inner=inner, device=device)
        medians = {}
        for method, values in times.items():
            row = Row(f"{method}: {label}", values)
            comp.rows.append(row)
            medians[method] = row.median
        target_ce = "<= 1.15" if arch == "resnet8x4" else "<= 1.3"
        comp.ratio(f"DGKD/CE, {label}", medians["dgkd"] / medians["ce"], target_ce)
        target_dkd = "<= 1.10" if arch == "resnet8x4" else "report"
        comp.ratio(f"DGKD/DKD, {label}", medians["dgkd"] / medians["dkd"], target_dkd)
    return comp
