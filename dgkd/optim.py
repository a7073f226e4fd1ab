"""Optimizers and learning-rate schedules, for one model or a population of K.

A population's parameters are stacked tensors with the K members as equal blocks along dim 0.
:class:`PopulationOptimizer` hands each member's block of every tensor (a view) to torch's own
kernel (``torch._fused_adam_`` and its kin on CPU and CUDA, the functional ``adam``/``sgd``
elsewhere: what ``torch.optim`` itself calls) as a tensor of its own: a member's update is then
bitwise the one ``torch.optim`` makes for that member trained alone. One call over the whole
stacked tensor would not be: the fused kernels vectorize a tensor's body and finish its tail
differently, so an element's rounding would depend on where its member sits. Members may differ
in learning rate and weight decay: one call per distinct pair. Everything is element-wise, so
no member's update depends on another's (there is no global-norm clipping).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from dgkd.config import TrainConfig

__all__ = ["MemberSchedules", "PopulationOptimizer", "build_optimizer", "build_scheduler"]

_BETAS, _EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which build_optimizer uses


def build_optimizer(
    cfg: TrainConfig, params: Iterable[nn.Parameter], lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer, with its fused kernel (one per parameter, not a dozen small
    operations each) on CPU and CUDA: on the default student it is a third of the step."""
    fused = device.type in ("cpu", "cuda")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
        )
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused)


def build_scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured per-epoch learning-rate schedule over ``epochs``."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


class MemberSchedules:
    """Each member's learning rate per epoch, from torch's scheduler for its config.

    torch's schedulers compute each epoch's rate from the previous one; running the real one
    (on a stand-in optimizer) gives each member exactly the floats its own run would use.
    """

    def __init__(self, cfgs: Sequence[TrainConfig], epochs: int) -> None:
        self._runs: dict[float, tuple[torch.optim.Optimizer, object]] = {}
        for cfg in cfgs:
            if cfg.lr not in self._runs:
                opt = torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=cfg.lr)
                self._runs[cfg.lr] = (opt, build_scheduler(cfg, opt, epochs))
        self._base = [cfg.lr for cfg in cfgs]

    def lrs(self, members: Sequence[int]) -> list[float]:
        """The current learning rate of each of ``members`` (indices into the configs)."""
        return [self._runs[self._base[i]][0].param_groups[0]["lr"] for i in members]

    def step(self) -> None:
        """Advance every schedule by one epoch."""
        for opt, sched in self._runs.values():
            opt.step()  # no gradients: nothing changes, but the scheduler sees a step first
            sched.step()  # type: ignore[attr-defined]


def _blocks(tensors: Sequence[Tensor], size: int) -> list[tuple[Tensor, ...]]:
    """Per tensor, its K members' blocks as flat views."""
    return [t.view(size, -1).unbind(0) for t in tensors]


class PopulationOptimizer:
    """The configured optimizer (adam, adamw or sgd) over a population's stacked parameters.

    Gradients accumulate into persistent buffers (``p.grad``), zeroed after each step, so the
    members' views are built once, not at every step.
    """

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        params: Sequence[nn.Parameter],
        device: torch.device,
        *,
        state: dict[str, list[Tensor]] | None = None,
        fused: bool | None = None,
    ) -> None:
        first = cfgs[0]
        self.size = len(cfgs)
        self.kind, self.momentum = first.optimizer, first.momentum
        self.weight_decay = [cfg.weight_decay for cfg in cfgs]
        # torch's fused kernels where they exist, as build_optimizer chooses.
        self.fused = device.type in ("cpu", "cuda") if fused is None else fused
        self.params = list(params)
        for p in self.params:
            p.grad = torch.zeros_like(p)
        if state is None:
            state = self._fresh_state(device)
        self.state = state
        self._grads = grads = [p.grad for p in self.params if p.grad is not None]
        # Per name, per parameter, the members' blocks (the step counters: see _group).
        plain = [p.detach() for p in self.params]  # updated in place, outside autograd
        named: dict[str, Sequence[Tensor]] = {"param": plain, "grad": grads, **state}
        self._blocks = {
            name: _blocks(tensors, self.size) for name, tensors in named.items() if name != "step"
        }
        self._calls: list[tuple[float, float, dict[str, list[Tensor]]]] = []
        self._lrs: list[float] = []

    def _fresh_state(self, device: torch.device) -> dict[str, list[Tensor]]:
        if self.kind == "sgd":
            # Zero momentum buffers: buf = momentum * 0 + grad is the first step's buf = grad.
            return {"buf": [torch.zeros_like(p) for p in self.params]} if self.momentum else {}
        # The fused kernels read the step count and this class advances it: one counter for
        # all. torch's other implementations advance each tensor's own: one per member and
        # parameter (member-major).
        count = 1 if self.fused else self.size * len(self.params)
        step_device = device if self.fused else torch.device("cpu")
        return {
            "exp_avg": [torch.zeros_like(p) for p in self.params],
            "exp_avg_sq": [torch.zeros_like(p) for p in self.params],
            "step": [torch.tensor(0.0, device=step_device) for _ in range(count)],
        }

    def _group(self, lrs: Sequence[float]) -> None:
        """One optimizer call per distinct (lr, weight decay): the members' tensors."""
        groups: dict[tuple[float, float], list[int]] = {}
        for k, key in enumerate(zip(lrs, self.weight_decay, strict=True)):
            groups.setdefault(key, []).append(k)
        n = len(self.params)
        self._calls = []
        for (lr, wd), members in groups.items():
            lists = {
                name: [blocks[j][k] for k in members for j in range(n)]
                for name, blocks in self._blocks.items()
            }
            steps = self.state.get("step", [])
            if len(steps) == 1:
                lists["step"] = steps * (len(members) * n)
            elif steps:
                lists["step"] = [steps[k * n + j] for k in members for j in range(n)]
            self._calls.append((lr, wd, lists))
        self._lrs = list(lrs)

    @torch.no_grad()
    def step(self, lrs: Sequence[float]) -> None:
        """Update every member with its learning rate, then zero the gradients."""
        if list(lrs) != self._lrs:
            self._group(lrs)
        if self.fused and self.kind != "sgd":
            self.state["step"][0].add_(1)
        for lr, wd, t in self._calls:
            self._update(lr, wd, t)
        torch._foreach_zero_(self._grads)

    def _update(self, lr: float, wd: float, t: dict[str, list[Tensor]]) -> None:
        """One call of torch's kernel, as ``torch.optim`` makes it, on these members' tensors."""
        if self.kind == "sgd":
            bufs = t.get("buf", [])
            if self.fused:
                torch._fused_sgd_(
                    t["param"],
                    t["grad"],
                    bufs,
                    weight_decay=wd,
                    momentum=self.momentum,
                    lr=lr,
                    dampening=0.0,
                    nesterov=False,
                    maximize=False,
                    is_first_step=False,
                )
            else:
                sgd(
                    t["param"],
                    t["grad"],
                    list(bufs) or [None] * len(t["param"]),
                    weight_decay=wd,
                    momentum=self.momentum,
                    lr=lr,
                    dampening=0.0,
                    nesterov=False,
                    maximize=False,
                )
        elif self.fused:
            fused = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
            fused(
                t["param"],
                t["grad"],
                t["exp_avg"],
                t["exp_avg_sq"],
                [],
                t["step"],
                lr=lr,
                beta1=_BETAS[0],
                beta2=_BETAS[1],
                weight_decay=wd,
                eps=_EPS,
                amsgrad=False,
                maximize=False,
            )
        else:
            adam(
                t["param"],
                t["grad"],
                t["exp_avg"],
                t["exp_avg_sq"],
                [],
                t["step"],
                fused=False,
                decoupled_weight_decay=self.kind == "adamw",
                amsgrad=False,
                beta1=_BETAS[0],
                beta2=_BETAS[1],
                lr=lr,
                weight_decay=wd,
                eps=_EPS,
                maximize=False,
            )

    def select(
        self, keep: Sequence[int], cfgs: Sequence[TrainConfig], params: Sequence[nn.Parameter]
    ) -> PopulationOptimizer:
        """The optimizer of the population of members ``keep``, whose parameters are ``params``."""
        index = torch.tensor(list(keep), device=self.params[0].device)
        n = len(self.params)
        state: dict[str, list[Tensor]] = {}
        for name, tensors in self.state.items():
            if name == "step":
                shared = len(tensors) == 1
                state[name] = (
                    tensors if shared else [tensors[k * n + j] for k in keep for j in range(n)]
                )
            else:
                state[name] = [
                    t.view(self.size, -1).index_select(0, index).view(p.shape)
                    for t, p in zip(tensors, params, strict=True)
                ]
        return PopulationOptimizer(cfgs, params, index.device, state=state, fused=self.fused)
