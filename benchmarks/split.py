"""Where one default search trial's time goes: training steps, the loss, per-epoch evaluation.

A trial of the packaged ``eps_sweep`` study trains its seeds as one population; the pruner
reads the per-epoch validation accuracy, and the study evaluates every 5th epoch and the last
(``eval_every = 5``). This comparison times that trial against the same trial evaluating every
epoch, and splits each into the end-of-epoch evaluation (``dgkd.loop.epoch_metrics``), the
loss's forward (``dgkd.loop.population_loss``) and the rest (the students' forward and
backward, the optimizer, the final test-split evaluation), by wrapping those two functions with
a clock.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.profile import _timing
from benchmarks.report import QUICK_POOLS, Comparison, Row, require_cpu

__all__ = ["STUDY", "TITLE", "run"]

STUDY = "eps_sweep"
TITLE = f"One {STUDY} trial's time: training, loss, per-epoch evaluation"


def run(device: torch.device, *, quick: bool) -> Comparison:
    """One trial of the study (its seeds as one population, its base config) with the study's
    ``eval_every`` against evaluation at every epoch, best of 3 interleaved runs each.

    Raises:
        ValueError: ``device`` is not the CPU.
    """
    import time

    import dgkd.loop
    from dgkd.study import load_study
    from dgkd.train import train_population

    require_cpu(device, "split")
    study = load_study(STUDY)
    base = study.check_overrides({})
    if quick:
        base = base.replace(epochs=5, teacher_epochs=2, **QUICK_POOLS)
    seeds = study.trial_seeds(base=base)
    every = base.eval_every
    cases = {f"eval_every = {e}": e for e in dict.fromkeys((1, every))}
    train_population([base.replace(seed=s) for s in seeds])  # data and teacher cached
    walls: dict[str, list[float]] = {name: [] for name in cases}
    evals: dict[str, list[float]] = {name: [] for name in cases}
    losses: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(1 if quick else 3):  # interleaved: each repeat times every case once
        for name, e in cases.items():
            cfgs = [base.replace(seed=s, eval_every=e) for s in seeds]
            clock_eval: list[float] = []
            clock_loss: list[float] = []
            with (
                _timing(dgkd.loop, "epoch_metrics", clock_eval),
                _timing(dgkd.loop, "population_loss", clock_loss),
            ):
                start = time.perf_counter()
                train_population(cfgs)
                walls[name].append(time.perf_counter() - start)
            evals[name].append(sum(clock_eval))
            losses[name].append(sum(clock_loss))
    comp = Comparison(TITLE)
    comp.rows += [Row(f"one trial, {name}", walls[name]) for name in cases]
    if len(cases) > 1:
        one, study_case = (statistics.median(walls[n]) for n in cases)
        label = f"trial wall time, eval_every 1 / eval_every {every}"
        comp.ratio(label, one / study_case, "report")
    comp.table = [["case", "wall s", "evaluation s", "loss forward s", "the rest s"]]
    for name in cases:
        wall = statistics.median(walls[name])
        ev, lo = statistics.median(evals[name]), statistics.median(losses[name])
        rest = wall - ev - lo
        comp.table.append(
            [
                name,
                f"{wall:.2f}",
                f"{ev:.2f} ({100 * ev / wall:.0f}%)",
                f"{lo:.2f} ({100 * lo / wall:.0f}%)",
                f"{rest:.2f} ({100 * rest / wall:.0f}%)",
            ]
        )
    comp.notes += [
        f"the {STUDY} study's base config ({base.epochs} epochs, student {base.student} width "
        f"{base.student_width}, method {base.method}), seeds {seeds} as one population, one "
        f"thread; medians of {1 if quick else 3} interleaved runs, data and teacher cached",
        "evaluation: the end-of-epoch forward passes over the validation pool's prefix and the "
        "training split and the NC1 of its features; the rest: the students' forward and "
        "backward, the loss's backward, the optimizer and the final test-split evaluation",
    ]
    return comp
