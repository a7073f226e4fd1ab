"""Peak resident memory of one process running a trial (reported, no target).

Each case runs in a fresh process (``python -m benchmarks.memory default N TEACHER_EPOCHS
VAL_POOL TEST_POOL`` or ``... resnet N``), which prints its peak resident set size in KiB. It
reads ``VmHWM``, not ``getrusage``: ``ru_maxrss`` survives exec and would report the parent's
peak. The child imports only what its case needs, so the figure is that of a process doing the
work and nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from benchmarks.report import QUICK_POOLS, Comparison, require_cpu, run_module
from dgkd.config import TrainConfig

__all__ = ["CASES", "TITLE", "main", "run"]

TITLE = "Memory: peak resident set size of one process"
CASES = ("default", "resnet")


def _default_trial(epochs: int, teacher_epochs: int, val_pool: int, test_pool: int) -> None:
    """One default trial through ``train()`` (its teacher trained unless cached)."""
    from dgkd.train import train

    train(
        TrainConfig(
            epochs=epochs, teacher_epochs=teacher_epochs, val_pool=val_pool, test_pool=test_pool
        )
    )


def _resnet_steps(steps: int) -> None:
    """``steps`` DGKD training steps of resnet8x4 on random CIFAR-100-shaped batches of 64."""
    from dgkd.loop import distill_loss
    from dgkd.models import build_model

    model = build_model("resnet8x4", num_classes=100, input_shape=(3, 32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cfg = TrainConfig(method="dgkd")
    for _ in range(steps):
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 100, (64,))
        logits, _ = model(x)
        loss, _ = distill_loss(cfg, logits, torch.randn(64, 100), y, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _peak_kib() -> int:
    """This process's peak resident set size (``VmHWM``), in KiB."""
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry: run one case (``default N TEACHER_EPOCHS VAL_POOL TEST_POOL`` or
    ``resnet N``), print the peak."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in CASES or len(args) != (5 if args[0] == "default" else 2):
        print(
            "usage: python -m benchmarks.memory default N TEACHER_EPOCHS VAL_POOL TEST_POOL"
            " | resnet N",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)
    if args[0] == "default":
        _default_trial(*(int(a) for a in args[1:]))
    else:
        _resnet_steps(int(args[1]))
    print(_peak_kib())
    return 0


def run(device: torch.device, *, quick: bool) -> Comparison:
    """Peak RSS of a process running the default trial, and of one training resnet8x4.

    Raises:
        ValueError: ``device`` is not the CPU.
    """
    require_cpu(device, "memory")
    comp = Comparison(TITLE)
    cases = (
        ("default trial", "default", 3 if quick else 40),
        ("resnet8x4 training steps (batch 64)", "resnet", 2 if quick else 20),
    )
    base = TrainConfig(teacher_epochs=2, **QUICK_POOLS) if quick else TrainConfig()
    trial = [base.teacher_epochs, base.val_pool, base.test_pool]
    for label, kind, n in cases:
        args = [kind, str(n)] + ([str(v) for v in trial] if kind == "default" else [])
        out = run_module("benchmarks.memory", *args)
        mib = int(out.strip().splitlines()[-1]) / 1024
        comp.notes.append(f"{label}: {mib:.0f} MiB peak RSS")
    return comp


if __name__ == "__main__":
    sys.exit(main())
