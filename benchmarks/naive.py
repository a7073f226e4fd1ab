"""Straightforward implementations that the benchmarks measure dgkd against.

They are what one writes first: the gradient term through ``torch.autograd.grad(...,
create_graph=True)``, and a training loop with a DataLoader and a teacher forward pass on every
step. They compute the same quantities as dgkd, so the ratios compare like with like.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from dgkd import metrics
from dgkd.config import TrainConfig
from dgkd.models import CNN1d, build_model
from dgkd.teacher import load_teacher
from dgkd.train import splits_for


def reference_dkd_terms(
    logits_s: Tensor, logits_t: Tensor, target: Tensor, *, temperature: float
) -> tuple[Tensor, Tensor]:
    """TCKD and NCKD as the DKD reference code (mdistiller's ``dkd_loss``) writes them.

    Softmaxes, a target/other mask, ``log`` of the concatenated binary probabilities, and the
    target removed from NCKD by subtracting 1000: unstable for confident students (which is why
    dgkd does not use it), but it is the formulation DGKD's reference code differentiates twice.
    """
    gt_mask = torch.zeros_like(logits_s).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_s).scatter_(1, target.unsqueeze(1), 0).bool()
    p = F.softmax(logits_s / temperature, dim=1)
    q = F.softmax(logits_t / temperature, dim=1)

    def cat_mask(t: Tensor) -> Tensor:
        return torch.cat(
            [(t * gt_mask).sum(1, keepdim=True), (t * other_mask).sum(1, keepdim=True)], 1
        )

    p2, q2 = cat_mask(p), cat_mask(q)
    scale = temperature**2 / target.shape[0]
    tckd = F.kl_div(torch.log(p2), q2, reduction="sum") * scale
    q_hat = F.softmax(logits_t / temperature - 1000.0 * gt_mask, dim=1)
    log_p_hat = F.log_softmax(logits_s / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_p_hat, q_hat, reduction="sum") * scale
    return tckd, nckd


def autograd_dgkd_loss(
    logits_s: Tensor,
    logits_t: Tensor,
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    epsilon: float,
    temperature: float,
) -> Tensor:
    """DGKD with g_T and g_N from a double backward (the reference code's formulation)."""
    tckd, nckd = reference_dkd_terms(logits_s, logits_t, target, temperature=temperature)
    (g_t,) = torch.autograd.grad(tckd, logits_s, create_graph=True)
    (g_n,) = torch.autograd.grad(nckd, logits_s, create_graph=True)
    mse = F.mse_loss(g_t, g_n)
    return alpha * tckd + beta * nckd - epsilon * mse / (mse.detach() + 1e-8)


def plain_forward(model: nn.Module, x: Tensor) -> Tensor:
    """Logits through the model's standard layers: ``nn.Conv1d`` modules called as usual for
    ``cnn1d`` (dgkd's own forward applies the same weights with an im2col gather)."""
    if isinstance(model, CNN1d):
        return model.fc(model.features(x.unsqueeze(1)).flatten(1))
    return model(x)[0]


def naive_trial(cfg: TrainConfig) -> dict[str, float]:
    """The same training as ``dgkd.train.train(cfg)`` for method dgkd, written plainly."""
    device = torch.device("cpu")
    splits = splits_for(cfg)
    val_x, val_y = splits.epoch_val_split  # per epoch, as dgkd's loop: a pool's prefix
    teacher = load_teacher(cfg, splits, device=device).model
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.student,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        width=cfg.student_width or None,
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loader = DataLoader(
        TensorDataset(splits.train_x, splits.train_y),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        weight = min(epoch / cfg.warmup, 1.0) if cfg.warmup else 1.0
        for x, y in loader:
            logits = plain_forward(model, x)
            with torch.no_grad():
                logits_t = plain_forward(teacher, x)
            loss = F.cross_entropy(logits, y) + weight * autograd_dgkd_loss(
                logits,
                logits_t,
                y,
                alpha=cfg.alpha,
                beta=cfg.beta,
                epsilon=cfg.epsilon,
                temperature=cfg.temperature,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            val_acc = metrics.accuracy(plain_forward(model, val_x), val_y)
    model.eval()
    with torch.no_grad():
        val_acc = metrics.accuracy(plain_forward(model, splits.val_x), splits.val_y)
        test_acc = metrics.accuracy(plain_forward(model, splits.test_x), splits.test_y)
    return {"val_acc": val_acc, "test_acc": test_acc}
