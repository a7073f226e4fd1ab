"""The benchmark entry point runs end to end in quick mode (speed is not asserted here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import (
    ablate,
    cpu_paths,
    mainjob,
    memory,
    methods,
    population,
    profile,
    search,
    split,
    trial,
)
from benchmarks.__main__ import COMPARISONS, main
from benchmarks.report import Comparison, Row, markdown


def test_quick_mode_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in (
        "Gradient term",
        "overhead per training step",
        "Plugin methods per training step",
        "One trial",
        "Memory",
        "Profile",
        "Search",
        "Ablation",
        split.TITLE,
        population.TITLE,
        cpu_paths.TITLE,
        mainjob.TITLE,
    ):
        assert heading in text
    assert "speed-up at (64, 100)" in text and "DGKD/CE" in text
    assert "MiB peak RSS" in text
    assert "2 cores" in text or "cores" in text  # the machine description is recorded
    assert "aten ops per call" in text and "dgkd step: loss forward" in text
    assert "end-of-epoch evaluation (epoch_metrics)" in text and "% of the run" in text
    assert "nc1 of the training features (4000, 120), 10 classes" in text
    assert "median pruner" in text and "2 workers / 1 worker" in text
    assert "dgkd-ablate / train() per cell" in text
    assert "identical test accuracy in 8 of 8 cells" in text
    assert "| trial wall time, eval_every 1 / eval_every 5 |" in text
    assert "| eval_every = 5 |" in text and "% of peak" in text
    assert "| 3 seeds, capped (2 + 1) |" in text  # the cap forced to 2 in quick mode
    for case in cpu_paths.CASES:
        if "busy" not in case or len(cpu_paths._cores()) >= 2:
            assert f"| {case} |" in text
    assert "| AVX2 in ATen, MKL and oneDNN (an AVX2-only core) | AVX2 |" in text
    # Ray's and Tune's messages go to ray.log, none to the terminal
    assert "smoke, ray backend, run 1: " in text and "0 line(s) on stderr" in text
    assert "| smoke wall time, Ray / Optuna (fastest of each) |" in text


def test_bad_counts_are_one_line_errors(tmp_path: Path, capsys) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--search-trials", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m benchmarks: error: --search-trials must be >= 1"]
    assert not out.exists()


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on any machine
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--device", "cuda", "--only", "loss", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m benchmarks: error: --device cuda: no CUDA device is available"]
    assert not out.exists()


def test_cuda_runs_only_the_loss_and_step_comparisons(tmp_path: Path, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--device", "cuda", "--only", "trial", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --only loss steps" in err[0]
    assert not out.exists()


def test_every_comparison_is_a_module_taking_the_device() -> None:
    assert list(COMPARISONS) == [
        "loss",
        "steps",
        "methods",
        "trial",
        "split",
        "memory",
        "profile",
        "population",
        "cpu_paths",
        "search",
        "ablate",
        "mainjob",
    ]
    for name, run in COMPARISONS.items():
        assert run.__module__ == f"benchmarks.{name}"


@pytest.mark.parametrize(
    "module", [trial, split, methods, memory, profile, population, cpu_paths, ablate, mainjob]
)
def test_cpu_comparisons_refuse_another_device(module) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        module.run(torch.device("cuda"), quick=True)


def test_methods_compares_builtins_with_plugins_in_quick_mode(tmp_path: Path) -> None:
    """Every case and ratio is reported, and the plugins passed the same-computation check."""
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--only", "methods", "--out", str(out)]) == 0
    text = out.read_text()
    assert methods.TITLE in text
    for name in ("kd", "dkd"):
        for k in (1, 2):
            assert f"| {name}, K={k}: one step of the population |" in text
            assert f"| {name} plugin, K={k}: one step of the population |" in text
            assert f"| {name} plugin / built-in, population of {k} |" in text
        assert f"| {name} built-in per member, population of 2 / population of 1 |" in text
        assert f"- {name} plugin vs built-in on the same logits (K=2, first batch)" in text
    assert "One trial" not in text  # --only: the other comparisons did not run


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_benchmark_plugins_compute_the_builtins_losses(name: str) -> None:
    """The plugins the methods comparison times compute what the built-ins' kernels do, for
    members with different settings and warmup factors (so the times compare one loss)."""
    from dgkd.config import TrainConfig
    from dgkd.step import population_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 128, 10, generator=g) * 3
    y = torch.randint(0, 10, (3, 128), generator=g)
    changes: list[dict[str, Any]] = [
        {"temperature": 2.0, "alpha": 0.5},
        {"beta": 3.0, "kd_weight": 1.5},
        {},
    ]
    weights = [0.4, 1.0, 1.0]
    out = []
    for method in (name, methods.PAIRS[name]):
        cfgs = [TrainConfig(method=method, ce_weight=0.7, **c) for c in changes]
        logits = s.clone().requires_grad_()
        loss, _ = population_loss(cfgs, logits, t, y, weights)
        loss.sum().backward()
        out.append((loss.detach(), logits.grad))
    torch.testing.assert_close(out[1], out[0], rtol=methods.TOLERANCE, atol=methods.TOLERANCE)


def test_search_times_the_packaged_study() -> None:
    from dgkd.study import load_study

    assert load_study(search.STUDY).name == "eps_sweep"


def test_markdown_keeps_the_report_format() -> None:
    comp = Comparison("T", rows=[Row("a", [0.002, 0.001, 0.003])], notes=["n"])
    comp.ratio("r", 2.0, ">= 2x")
    assert markdown(comp).split("\n") == [
        "### T",
        "",
        "| case | median (min-max) |",
        "|---|---|",
        "| a | 2 ms (1-3) |",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        "| r | 2.00x | >= 2x |",
        "",
        "- n",
        "",
    ]


def test_markdown_prints_a_body_after_the_notes() -> None:
    comp = Comparison("T", notes=["n"], body="#### B\n\n| x |\n")
    assert markdown(comp).split("\n") == ["### T", "", "- n", "", "#### B", "", "| x |", ""]


def test_the_main_job_reads_states_and_confirm_rounds(tmp_path: Path) -> None:
    (tmp_path / "trials.csv").write_text("number,state\n0,COMPLETE\n1,PRUNED\n2,PRUNED\n")
    seeds = "\n".join(f"c{c},{s}" for c in range(2) for s in range(100, 110))
    (tmp_path / "confirm.csv").write_text("config,seed\n" + seeds + "\n")
    assert mainjob._outcome(tmp_path, 5) == (
        "1 complete / 2 pruned, confirm stage 2 rounds (10 seeds)"
    )
    (tmp_path / "confirm.csv").unlink()
    assert mainjob._outcome(tmp_path, 5) == "1 complete / 2 pruned"


def _cpuinfo(flags: str, *, vendor: str = "GenuineIntel", family: str = "6", mhz=(2000.0,)) -> str:
    """``/proc/cpuinfo`` text of one processor per clock in ``mhz``."""
    return "\n\n".join(
        f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
        f"model name\t: Test CPU\ncpu MHz\t\t: {clock:.3f}\nflags\t\t: fpu sse sse2 {flags}"
        for i, clock in enumerate(mhz)
    )


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "gflops"),
    [
        ("avx avx2 fma avx512f", "GenuineIntel", "6", 128.0),  # 2 x 16 lanes x 2 x 2 GHz
        ("avx avx2 fma", "GenuineIntel", "6", 64.0),
        ("avx avx2 fma", "AuthenticAMD", "23", 64.0),
        ("avx avx2 fma avx512f", "AuthenticAMD", "25", 64.0),  # Zen 4: 256-bit units
        ("avx", "GenuineIntel", "6", 32.0),
    ],
)
def test_the_core_peak_follows_the_vector_flags(flags, vendor, family, gflops) -> None:
    from benchmarks.peak import parse_cpuinfo

    peak = parse_cpuinfo(_cpuinfo(flags, vendor=vendor, family=family))
    assert peak.gflops == pytest.approx(gflops)
    assert "Test CPU" in peak.describe() and "estimated" in peak.describe()


def test_the_core_peak_takes_the_highest_clock_or_lscpus_max() -> None:
    from benchmarks.peak import parse_cpuinfo

    text = _cpuinfo("avx2 fma", mhz=(1500.0, 2500.0))
    assert parse_cpuinfo(text).ghz == pytest.approx(2.5)
    assert parse_cpuinfo(text, max_mhz=3700.0).ghz == pytest.approx(3.7)
    assert "lscpu" in parse_cpuinfo(text, max_mhz=3700.0).describe()
    with pytest.raises(ValueError, match="cpu MHz"):
        parse_cpuinfo("processor\t: 0\nflags\t\t: avx2 fma\n")


def test_a_stopped_run_keeps_its_finished_comparisons_in_a_partial_file(
    tmp_path: Path, monkeypatch
) -> None:
    import benchmarks.__main__ as entry

    def first(device, *, quick):
        return Comparison("First", rows=[Row("a", [0.5])])

    def second(device, *, quick):
        raise KeyboardInterrupt  # Ctrl-C during the second comparison

    monkeypatch.setattr(entry, "COMPARISONS", {"first": first, "second": second})
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("the last whole report\n")
    with pytest.raises(KeyboardInterrupt):
        entry.main(["--only", "first", "second", "--out", str(out)])
    assert out.read_text() == "the last whole report\n"  # never half-written
    partial = (tmp_path / "BENCHMARKS.md.partial").read_text()
    assert "Partial: 1 of 2 comparisons" in partial and "### First" in partial
    monkeypatch.setattr(entry, "COMPARISONS", {"first": first, "second": first})
    assert entry.main(["--only", "first", "second", "--out", str(out)]) == 0
    assert out.read_text().count("### First") == 2
    assert not (tmp_path / "BENCHMARKS.md.partial").exists()
