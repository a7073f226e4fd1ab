"""The method registry: built-ins, a method of one's own (``module:ATTR``, entry points) and
``kd_ls``, trained alone, in populations and in worker processes, and searched."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from fakes import TINY_POOL_ARGS

import dgkd.methods
from dgkd.cli import search_main, train_main
from dgkd.config import LOSS_FIELDS, METHODS, ConfigError, TrainConfig
from dgkd.losses import kd_loss
from dgkd.methods import Method, builtin
from dgkd.methods.standardized import KD_LS
from dgkd.step import population_loss
from dgkd.train import train, train_population

# A method of one's own, in one file: Hinton's KD written from its definition.
PLUGIN = """
import torch.nn.functional as F
from dgkd.methods import Method


def hinton(student, teacher, labels, settings):
    t = settings["temperature"]
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    return settings["kd_weight"] * t * t * F.kl_div(log_p, q, reduction="batchmean")


METHOD = Method("mykd", hinton, ("temperature", "kd_weight"))
NOT_A_METHOD = 3
"""
TINY = ["--set", "epochs=2", "--set", "teacher_epochs=2", *TINY_POOL_ARGS]
# What a user reads off a run; the plugin must land within 0.02 of the built-in on each.
COMPARED = ("val_acc", "test_acc", "published_test_acc", "test_agreement", "train_acc")


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``mykd_plugin:METHOD``, a module in a temp dir on the path (and PYTHONPATH, which
    subprocesses read); forgotten afterwards, so each test imports it afresh."""
    (tmp_path / "mykd_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path), prepend=":")
    monkeypatch.delitem(sys.modules, "mykd_plugin", raising=False)
    yield "mykd_plugin:METHOD"
    sys.modules.pop("mykd_plugin", None)


def _json_metrics(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, float]:
    assert train_main(["--json", *argv, *TINY]) == 0
    return json.loads(capsys.readouterr().out)["metrics"]


def test_plugin_trains_like_the_builtin_kd(plugin: str, capsys) -> None:
    ours = _json_metrics(capsys, ["--set", f"method={plugin}"])
    builtin_kd = _json_metrics(capsys, ["--method", "kd"])
    for key in COMPARED:
        assert abs(ours[key] - builtin_kd[key]) <= 0.02, (key, ours[key], builtin_kd[key])
    assert ours["test_acc"] > 0.15  # two epochs beat chance (10 classes)


def test_searching_a_field_the_plugin_does_not_read_is_refused(plugin: str, tmp_path, capsys):
    argv = ["--study", "smoke", "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]
    assert search_main([*argv, "--set", f"method={plugin}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"dgkd-search: error: --set method={plugin}: epsilon: searched")
    assert f"but method {plugin} ignores it (it applies to dgkd)" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.db"))


def test_plugin_members_of_a_population_are_their_own_runs(plugin: str, tiny) -> None:
    cfgs = [tiny.replace(method=m, seed=s) for m in (plugin, "kd_ls", "dkd") for s in (0, 1)]
    together = train_population(cfgs)
    assert [r.config for r in together] == cfgs
    for cfg, result in zip(cfgs[::3], together[::3], strict=True):
        alone = train(cfg)
        assert result.metrics["test_acc"] == alone.metrics["test_acc"], cfg.method
        assert result.history == alone.history, cfg.method
    assert {"ce", "distill"} <= together[0].history[-1].keys()


def test_plugin_trains_in_worker_processes(plugin: str, tiny) -> None:
    from dgkd.parallel import PopulationPool

    # Two batch sizes: two populations, one per spawned worker, which import the plugin by name.
    cfgs = [tiny.replace(method=plugin, batch_size=b) for b in (64, 128)]
    with PopulationPool(2) as pool:
        results = pool(cfgs)
    assert [r.error for r in results] == [None, None]
    assert results[1].metrics["test_acc"] == train(cfgs[1]).metrics["test_acc"]


def test_method_from_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    """A console script's path lacks the working directory; ``module:ATTR`` still finds it."""
    (tmp_path / "cwd_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_plugin", raising=False)
    assert TrainConfig(method="cwd_plugin:METHOD").method == "cwd_plugin:METHOD"
    assert dgkd.methods.get("cwd_plugin:METHOD").name == "mykd"


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("no_such_module:METHOD", "method 'no_such_module:METHOD': cannot import no_such_module"),
        ("mykd_plugin:NOPE", "method 'mykd_plugin:NOPE': module mykd_plugin has no attribute"),
        ("mykd_plugin:NOT_A_METHOD", "mykd_plugin:NOT_A_METHOD is a int, not a dgkd.methods"),
        ("mykd_plugin:", "method 'mykd_plugin:': expected module:ATTR, e.g. mykd:METHOD"),
        ("dkdx", "method must be one of ce, kd, dkd, dgkd, got 'dkdx'; other methods: kd_ls"),
    ],
)
def test_bad_methods_are_one_line_config_errors(plugin: str, method: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(method=method)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_a_method_reads_config_fields_only(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    module = types.ModuleType("odd_plugin")
    module.METHOD = Method("odd", lambda *a: torch.zeros(()), ("tau",))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "odd_plugin", module)
    assert train_main(["--set", "method=odd_plugin:METHOD", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reads 'tau', which is not a config field" in err


def test_installed_packages_register_methods_by_entry_point(plugin: str, monkeypatch) -> None:
    point = importlib.metadata.EntryPoint("epkd", plugin, dgkd.methods.ENTRY_POINT_GROUP)
    found = {dgkd.methods.ENTRY_POINT_GROUP: [point]}
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: found.get(group, []))
    dgkd.methods._entry_points.cache_clear()
    try:
        assert dgkd.methods.get("epkd").name == "mykd"
        assert "epkd" in dgkd.methods.names()
        assert TrainConfig(method="epkd").method == "epkd"
    finally:
        dgkd.methods._entry_points.cache_clear()


def test_builtins_are_registry_entries_with_the_loss_fields_studies_check() -> None:
    assert METHODS == ("ce", "kd", "dkd", "dgkd")
    assert all(dgkd.methods.get(m) is builtin.BUILTINS[m] for m in METHODS)
    assert dgkd.methods.names()[:5] == (*METHODS, "kd_ls")
    assert LOSS_FIELDS == {
        "alpha": ("dkd", "dgkd"),
        "beta": ("dkd", "dgkd"),
        "temperature": ("kd", "dkd", "dgkd"),
        "warmup": ("kd", "dkd", "dgkd"),
        "epsilon": ("dgkd",),
        "grad_sign": ("dgkd",),
        "grad_term": ("dgkd",),
        "kd_weight": ("kd",),
    }


@pytest.mark.parametrize("name", ["kd", "dkd", "dgkd"])
def test_a_builtin_as_a_plugin_computes_what_its_kernel_does(name: str, monkeypatch) -> None:
    """The built-ins' ``loss``, run member by member as a plugin's is, against their kernels:
    the same losses and gradients for members with different settings."""
    module = types.ModuleType("copies")
    module.M = dataclasses.replace(builtin.BUILTINS[name], fused=None)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "copies", module)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 64, 10, generator=g) * 3
    y = torch.randint(0, 10, (3, 64), generator=g)
    changes: list[dict[str, Any]] = [
        {"temperature": 2.0, "alpha": 0.5},
        {"beta": 3.0, "kd_weight": 1.5},
        {},
    ]
    weights = [0.5, 1.0, 1.0]
    out = []
    for method in (name, "copies:M"):
        cfgs = [TrainConfig(method=method, epsilon=2.0, ce_weight=0.7, **c) for c in changes]
        logits = s.clone().requires_grad_()
        loss, _ = population_loss(cfgs, logits, t, y, weights)
        loss.sum().backward()
        out.append((loss.detach(), logits.grad))
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-6)


def test_a_method_without_a_teacher_gets_none_and_the_harness_adds_ce(monkeypatch) -> None:
    seen: list[object] = []

    def confidence(student, teacher, labels, settings):  # a teacher-free term: mean max-prob
        seen.append(teacher)
        return settings["alpha"] * student.softmax(-1).amax(-1).mean()

    module = types.ModuleType("selfish")
    module.M = Method("conf", confidence, ("alpha",), needs_teacher=False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "selfish", module)
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 2, 16, 10, generator=g)
    y = torch.randint(0, 10, (2, 16), generator=g)
    cfgs = [TrainConfig(method="selfish:M", alpha=a, ce_weight=0.5) for a in (0.0, 2.0)]
    loss, terms = population_loss(cfgs, s, t, y, [1.0, 0.25])
    ce = torch.stack([F.cross_entropy(s[k], y[k]) for k in range(2)])
    term = s[1].softmax(-1).amax(-1).mean()
    torch.testing.assert_close(loss, torch.stack([0.5 * ce[0], 0.5 * ce[1] + 0.25 * 2.0 * term]))
    torch.testing.assert_close(terms["ce"], ce)
    assert seen == [None, None]


def _standardized_kd(zs: torch.Tensor, zt: torch.Tensor, temp: float, weight: float):
    """Logit-standardized KD from its definition, in double precision."""

    def zscore(z: torch.Tensor) -> torch.Tensor:
        centered = z - z.sum(1, keepdim=True) / z.shape[1]
        std = ((centered**2).sum(1, keepdim=True) / (z.shape[1] - 1)).sqrt()
        return centered / (std + 1e-7)

    def softmax(z: torch.Tensor) -> torch.Tensor:
        e = (z - z.max(1, keepdim=True).values).exp()
        return e / e.sum(1, keepdim=True)

    p, q = softmax(zscore(zs) / temp), softmax(zscore(zt) / temp)
    return weight * temp**2 * (q * (q.log() - p.log())).sum(1).mean()


def test_kd_ls_is_kd_on_z_scored_logits() -> None:
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(2, 32, 10, generator=g) * 4
    y = torch.randint(0, 10, (32,), generator=g)
    settings = {"temperature": 2.0, "kd_weight": 3.0}
    zs64 = zs.double().requires_grad_()
    expected = _standardized_kd(zs64, zt.double(), 2.0, 3.0)
    (expected_grad,) = torch.autograd.grad(expected, zs64)
    student = zs.clone().requires_grad_()
    loss = KD_LS.loss(student, zt, y, settings)  # type: ignore[misc]
    loss.backward()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)
    torch.testing.assert_close(student.grad, expected_grad.float(), rtol=1e-4, atol=1e-7)
    # Standardized: shifting or scaling either side's logits changes nothing, unlike for KD.
    moved = KD_LS.loss(5 * zs + 2, 0.5 * zt - 1, y, settings)  # type: ignore[misc]
    assert math.isclose(moved.item(), loss.item(), rel_tol=1e-4)
    plain = [kd_loss(a, b, temperature=2.0).item() for a, b in ((zs, zt), (5 * zs + 2, zt))]
    assert not math.isclose(*plain, rel_tol=1e-2)


def test_a_loss_that_is_not_one_number_is_an_error_naming_the_method(monkeypatch) -> None:
    def per_example(student, teacher, labels, settings):  # forgot the mean
        return F.cross_entropy(student, labels, reduction="none")

    module = types.ModuleType("vector_loss")
    module.M = Method("vec", per_example, (), needs_teacher=False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vector_loss", module)
    s = torch.randn(1, 16, 10)
    y = torch.randint(0, 10, (1, 16))
    with pytest.raises(ValueError, match=r"^method vector_loss:M: loss must return a 0-d tensor, "
                       r"got \(16,\)$"):  # fmt: skip
        population_loss([TrainConfig(method="vector_loss:M")], s, None, y, [1.0])


def test_a_method_without_a_loss_trains_each_member_on_its_own_weighted_ce(monkeypatch) -> None:
    module = types.ModuleType("ce_plugin")
    module.M = Method("ce_only", None, (), needs_teacher=False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ce_plugin", module)
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 16, 10, generator=g)
    y = torch.randint(0, 10, (3, 16), generator=g)
    cfgs = [TrainConfig(method="ce_plugin:M", ce_weight=w) for w in (0.5, 1.0, 2.0)]
    loss, terms = population_loss(cfgs, s, None, y, [1.0, 1.0, 1.0])
    ce = torch.stack([F.cross_entropy(s[k], y[k]) for k in range(3)])
    torch.testing.assert_close(loss, ce * torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(terms["ce"], ce)
    assert set(terms) == {"ce"}  # no distillation term to report


def test_a_loss_that_is_not_a_tensor_is_an_error_naming_its_type(monkeypatch) -> None:
    module = types.ModuleType("float_loss")
    module.M = Method("flt", lambda s, t, y, st: 0.5, (), needs_teacher=False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "float_loss", module)
    with pytest.raises(ValueError, match=r"^method float_loss:M: loss must return a 0-d tensor, "
                       r"got float$"):  # fmt: skip
        population_loss([TrainConfig(method="float_loss:M")], torch.randn(1, 8, 10), None,
                        torch.randint(0, 10, (1, 8)), [1.0])  # fmt: skip
