"""``dgkd-ablate`` end to end, in process: outputs, resuming, the bad inputs, the study sources."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fakes import TINY_POOL_ARGS

from dgkd.cli import ablate_main

TINY = ["--set", "epochs=2", "--set", "teacher_epochs=2", "--teachers", "1", *TINY_POOL_ARGS]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = ablate_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _bad(capsys, tmp_path: Path, *argv: str) -> str:
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgkd-ablate: error: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "ablate").exists()  # nothing half-written
    return lines[0]


def test_ablate_command_writes_tables_and_resumes(capsys, tmp_path):
    argv = [
        "--variants",
        "no_grad_term,minimize_mse",
        "--seeds",
        "2",
        *TINY,
        "--out",
        str(tmp_path),
    ]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    d = tmp_path / "ablate" / "default"
    files = ("runs.csv", "summary.csv", "summary.md", "config.json", "ablation.png")
    assert all((d / f).exists() for f in files)
    assert "base config [" in err and "epochs=2" in err  # the resolved base is printed
    assert "6 runs trained, 0 reused" in err
    # the terminal table carries the summary's numbers
    with (d / "summary.csv").open() as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    mean = float(rows["minimize_mse"]["test_acc_mean"]) * 100
    std = float(rows["minimize_mse"]["test_acc_std"]) * 100
    assert f"{mean:.2f} ± {std:.2f}" in out
    assert "The seed's claims" in out and "Calibration, test ECE" in out
    md = (d / "summary.md").read_text()
    assert f"| {mean:.2f} ± {std:.2f} |" in md
    assert json.loads((d / "config.json").read_text())["command"][:3] == [
        "dgkd-ablate",
        "--variants",
        "no_grad_term,minimize_mse",
    ]

    code, out, err = _run(capsys, *argv)  # the same command again: nothing to train
    assert code == 0 and "0 runs trained, 6 reused" in err

    line = _bad(capsys, tmp_path / "elsewhere", "--seeds", "0")
    assert "--seeds must be >= 1" in line
    code, _, err = _run(capsys, *argv, "--set", "lr=0.03")  # a changed base
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "different base config" in err and "--fresh" in err and "--name" in err


def test_unknown_variant_lists_the_valid_ones(capsys, tmp_path):
    line = _bad(capsys, tmp_path, "--variants", "no_grad_term,sign_flip")
    assert "unknown variant 'sign_flip'" in line
    assert "full, no_grad_term, minimize_mse, raw_mse, kd, ce, tckd_only, nckd_only" in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "epoch=3"], "unknown config field 'epoch'"),
        (["--set", "epochs=two"], "epochs must be of type int"),
        (["--workers", "0"], "argument --workers: expected a number of processes >= 1 or auto"),
        (["--workers", "-1"], "argument --workers: expected a number of processes >= 1 or auto"),
        (["--workers", "abc"], "or auto (the usable cores, 2 here), got 'abc' (see --help)"),
        (["--study", "no_such_study"], "unknown study 'no_such_study'"),
        (["--from-study", "no_such_study"], "unknown study 'no_such_study'"),
        (["--from-study", "smoke"], "no finished trials"),
        (["--set", "method=kd"], "reference row of an ablation is dgkd"),
        (["--set", "seed=3"], "use --seeds N instead"),
        (["--address", "auto"], "--address is for --backend ray"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, usable_cores, argv, expected):
    usable_cores(2)
    assert expected in _bad(capsys, tmp_path, "--variants", "kd", *argv)


def test_workers_default_to_auto_the_usable_cores_on_the_local_backend(
    capsys, tmp_path, monkeypatch, usable_cores
):
    import dgkd.ablate
    from dgkd.ablate import AblateError, AblationOptions

    usable_cores(3)
    assert AblationOptions().workers == 3
    assert AblationOptions(backend="ray").workers is None  # all in flight: Ray schedules them
    seen = []

    def stop(base, opts):
        seen.append(opts.workers)
        raise AblateError("stopped before training")

    monkeypatch.setattr(dgkd.ablate, "preflight", stop)
    for args in ([], ["--workers", "auto"], ["--workers", "5"], ["--workers", "1"]):
        assert _run(capsys, "--variants", "kd", "--out", str(tmp_path), *args)[0] == 2
    assert _run(capsys, "--backend", "ray", "--workers", "auto", "--out", str(tmp_path))[0] == 2
    assert seen == [3, 3, 5, 1, None]


def test_study_base_is_used_without_search(capsys, tmp_path):
    code, out, err = _run(
        capsys, "--study", "smoke", "--variants", "kd", "--seeds", "1", "--workers", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    cfg = json.loads((tmp_path / "ablate" / "smoke" / "config.json").read_text())
    assert cfg["base"]["source"] == "study" and cfg["base"]["study"] == "smoke"
    assert cfg["base"]["config"]["epochs"] == 2 and cfg["base"]["config"]["teacher_epochs"] == 2
    assert "not checked (add no_grad_term to --variants)" in out


def test_from_study_takes_the_best_finished_trial(capsys, tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    (tmp_path / "smoke").mkdir()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "smoke" / "journal.log")))
    study = optuna.create_study(study_name="smoke", storage=storage, direction="maximize")
    dist = {"epsilon": FloatDistribution(0.0, 10.0)}
    for eps, value in ((1.0, 0.40), (2.5, 0.55), (7.0, 0.30)):
        study.add_trial(optuna.trial.create_trial(params={"epsilon": eps}, distributions=dist,
                                                  value=value))  # fmt: skip

    argv = ["--from-study", "smoke", "--variants", "no_grad_term", "--seeds", "1", "--workers", "1"]
    code, _, err = _run(capsys, *argv, "--set", "lr=0.03", "--out", str(tmp_path))
    assert code == 0, err
    d = tmp_path / "ablate" / "smoke-best"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["base"]["source"] == "from-study" and cfg["base"]["params"] == {"epsilon": 2.5}
    base = cfg["base"]["config"]
    assert (base["epsilon"], base["lr"], base["epochs"]) == (2.5, 0.03, 2)  # --set wins
    with (d / "runs.csv").open() as f:
        assert {r["variant"] for r in csv.DictReader(f)} == {"full", "no_grad_term"}
    assert "study smoke, best trial" in err


def test_sigkilled_ablation_keeps_finished_cells_and_completes(tmp_path):
    import subprocess
    import sys
    import time

    entry = "import sys; from dgkd.cli import ablate_main; sys.exit(ablate_main(sys.argv[1:]))"
    # 3 variants x 6 seeds: two populations of 9 cells, each stored as soon as it finishes
    # one process: a second one would finish the other population at the same time
    argv = ["--variants", "no_grad_term,minimize_mse", "--seeds", "6", "--out", str(tmp_path),
            "--quiet", "--workers", "1", "--teachers", "1", "--set", "epochs=6",
            "--set", "teacher_epochs=2", *TINY_POOL_ARGS]  # fmt: skip
    cells = tmp_path / "ablate" / "default" / "cells"
    proc = subprocess.Popen([sys.executable, "-c", entry, *argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(cells.glob("*.json"))) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no cell finished in time"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup, a cell may be mid-training
    proc.wait()
    kept = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert 1 <= len(kept) <= 9  # the first population, whole or being written
    for path in cells.glob("*.json"):  # written atomically: every stored cell is whole
        json.loads(path.read_text())
    assert ablate_main(argv) == 0
    after = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")}
    assert len(after) == 18  # 3 variants x 6 seeds
    assert all(after[name] == mtime for name, mtime in kept.items())  # finished cells not rerun
    with open(tmp_path / "ablate" / "default" / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 18


def _proc(pid: int, name: str) -> str:
    """``/proc/<pid>/<name>``, or "" once the process is gone."""
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    stats = {int(p.name): _proc(int(p.name), "stat") for p in Path("/proc").iterdir()
             if p.name.isdigit()}  # fmt: skip
    return [c for c, st in stats.items() if st and int(st.rsplit(")", 1)[1].split()[1]) == pid]


def _alive(pid: int) -> bool:
    stat = _proc(pid, "stat")
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigkilled_ablation_leaves_no_pool_worker_behind(tmp_path):
    """The process pool's workers end with their parent, even one killed by SIGKILL."""
    import os
    import signal
    import subprocess
    import sys
    import time

    entry = "import sys; from dgkd.cli import ablate_main; sys.exit(ablate_main(sys.argv[1:]))"
    argv = ["--variants", "no_grad_term", "--seeds", "8", "--teachers", "1", "--workers", "2",
            "--quiet", "--out", str(tmp_path), "--set", "epochs=30",
            "--set", "teacher_epochs=2", *TINY_POOL_ARGS]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", entry, *argv], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2:  # the pool's two workers started
        assert proc.poll() is None and time.monotonic() < deadline
        workers = [p for p in _children(proc.pid) if "spawn_main" in _proc(p, "cmdline")]
        time.sleep(0.1)
    time.sleep(1.0)  # let them take a population each
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "pool workers outlived their killed parent"
