"""Small fake data the tests share."""

from __future__ import annotations

import torch

from dgkd.data import Splits

# MNIST-1D pools for tiny test runs: 600 examples generate in a fraction of a second, where the
# defaults' 30,000 take seconds once per session and every run would evaluate them.
TINY_POOLS = {"val_pool": 200, "test_pool": 400}
# The same as command-line options.
TINY_POOL_ARGS = ["--set", "val_pool=200", "--set", "test_pool=400"]


def image_splits(train: int) -> Splits:
    """A tiny CIFAR-shaped dataset of random uint8 images (8 validation, 8 test), augmented as
    the image datasets are; the same for every call with the same size."""
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g)

    return Splits(name="cifar10", num_classes=10, input_shape=(3, 32, 32),
                  train_x=images(train), train_y=labels(train), val_x=images(8),
                  val_y=labels(8), test_x=images(8), test_y=labels(8), mean=(0.5, 0.5, 0.5),
                  std=(0.25, 0.25, 0.25), augment=True)  # fmt: skip


def assert_image_members_train_alone(cfgs: list, splits: Splits) -> None:
    """``fit_population(cfgs)`` under one resnet8 teacher gives each member exactly its own
    ``fit(cfg)``: the same history and the same weights, bit for bit."""
    from dgkd.loop import fit, fit_population
    from dgkd.models import build_model

    torch.manual_seed(0)
    teacher = build_model("resnet8", num_classes=10, input_shape=(3, 32, 32)).eval()
    kw = {"teacher": teacher, "teacher_train_logits": None, "device": torch.device("cpu")}
    runs = fit_population(cfgs, splits, **kw)
    for cfg, run in zip(cfgs, runs, strict=True):
        model, history = fit(cfg, splits, **kw)
        assert run.error is None and run.model is not None
        assert run.history == history, cfg
        for key, value in model.state_dict().items():
            assert torch.equal(run.model.state_dict()[key], value), (cfg, key)
