"""What a distillation method is: :class:`Method`, and :class:`MethodError` for a bad one.

Torch-free, so that validating a config (which resolves its method) stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["Loss", "Method", "MethodError"]


class MethodError(ValueError):
    """A method name or reference that does not resolve, or a malformed :class:`Method`."""


class Loss(Protocol):
    """The distillation term of one student, a 0-d tensor differentiable in ``student_logits``.

    ``student_logits`` and ``teacher_logits`` are (B, C) (the teacher's None when the method
    does not need one), ``labels`` (B,), and ``settings`` maps each field the method reads to
    this run's value.
    """

    def __call__(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor | None,
        labels: Tensor,
        settings: Mapping[str, Any],
        /,
    ) -> Tensor: ...


@dataclass(frozen=True)
class Method:
    """A distillation method: its term for one student, and the config fields it reads.

    The harness trains ``ce_weight * CE + w * loss(...)`` with ``w = min(epoch / warmup, 1)``,
    for every member of a population; ``loss=None`` is no distillation term (CE alone).
    ``reads`` must name :class:`~dgkd.config.TrainConfig` fields (``temperature``, ``alpha``,
    ``kd_weight``, ...): configs, studies and their hashes stay as they are, and a study that
    searches a loss setting the method does not read is refused.

    ``min_classes``: the fewest classes the loss is defined for (DKD's NCKD needs 3).
    ``fused``: the built-ins' population kernel (``ce``, ``kd`` or ``dkd``), which computes
    every member at once, bitwise as its own run; a plugin leaves it None and its loss runs
    member by member.
    """

    name: str
    loss: Loss | None
    reads: tuple[str, ...]
    needs_teacher: bool = True
    min_classes: int = 2
    fused: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.reads, (list, str)):
            reads = (self.reads,) if isinstance(self.reads, str) else tuple(self.reads)
            object.__setattr__(self, "reads", reads)
        if not isinstance(self.name, str) or not self.name:
            raise MethodError(f"a method needs a name, got {self.name!r}")
        if self.loss is not None and not callable(self.loss):
            raise MethodError(f"method {self.name}: loss must be callable or None")
        if not all(isinstance(r, str) for r in self.reads):
            raise MethodError(f"method {self.name}: reads must be config field names")
        if self.loss is None and self.needs_teacher:
            raise MethodError(f"method {self.name}: without a loss it cannot need a teacher")

    @property
    def fields(self) -> tuple[str, ...]:
        """Every config field that changes this method's training loss beyond ``ce_weight``:
        what it reads, and ``warmup``, which scales its term (none without a term)."""
        if self.loss is None or "warmup" in self.reads:
            return self.reads
        return (*self.reads, "warmup")
