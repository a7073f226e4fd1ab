"""The built-in methods: CE alone, Hinton's KD, DKD and DGKD.

Their ``loss`` is each method's term for one student, as a plugin's would be (tests check it
against the population kernels); training runs their ``fused`` kernels instead
(:func:`dgkd.step.population_loss`), which compute a whole population in one pass. The losses
import torch when called, so the registry itself stays torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dgkd.methods.base import Method

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["BUILTINS", "CE", "DGKD", "DKD", "KD"]


def _kd(s: Tensor, t: Tensor | None, labels: Tensor, settings: Mapping[str, Any]) -> Tensor:
    from dgkd.losses import kd_loss

    assert t is not None, "kd needs the teacher's logits"
    return settings["kd_weight"] * kd_loss(s, t, temperature=settings["temperature"])


def _dkd(s: Tensor, t: Tensor | None, labels: Tensor, settings: Mapping[str, Any]) -> Tensor:
    return _decoupled(s, t, labels, {**settings, "epsilon": 0.0})


def _decoupled(s: Tensor, t: Tensor | None, labels: Tensor, settings: Mapping[str, Any]) -> Tensor:
    from dgkd.losses import dgkd_loss

    out = dgkd_loss(
        s,
        t,
        labels,
        alpha=settings["alpha"],
        beta=settings["beta"],
        epsilon=settings["epsilon"],
        temperature=settings["temperature"],
        grad_term=settings.get("grad_term", "normalized"),
        grad_sign=settings.get("grad_sign", -1.0),
        cosine=False,
    )
    return out["loss"]


CE = Method("ce", None, (), needs_teacher=False, fused="ce")
KD = Method("kd", _kd, ("temperature", "kd_weight"), fused="kd")
DKD = Method("dkd", _dkd, ("alpha", "beta", "temperature"), min_classes=3, fused="dkd")
DGKD = Method(
    "dgkd",
    _decoupled,
    ("alpha", "beta", "temperature", "epsilon", "grad_sign", "grad_term"),
    min_classes=3,
    fused="dkd",
)
BUILTINS: dict[str, Method] = {m.name: m for m in (CE, KD, DKD, DGKD)}
