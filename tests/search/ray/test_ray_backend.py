"""The Ray Tune backend against a real Ray cluster on loopback, started (and stopped) here.

The cluster is started with token authentication on, as Ray clusters will be by default, and
the search connects to it through ``--address`` with only the token file in the environment.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import pickle
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dgkd.search import SearchInputError, SearchOptions, TrialRecord
from dgkd.search.ray.backend import RayBackend
from dgkd.search.ray.cluster import CONNECT_TIMEOUT_S
from dgkd.search.ray.results import to_record
from dgkd.study import Study, load_study

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
SMOKE_TRIALS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """``ray start --head`` on loopback with 2 CPUs and token auth; its address.

    Stopped by signalling the ``ray start --block`` process this fixture started (it stops the
    cluster's processes), then its process group: never other Ray instances on the machine.
    """
    token = tmp_path_factory.mktemp("ray-auth") / "token"
    token.write_text(secrets.token_hex(32))
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="dgkd-ray-", dir="/tmp")  # short: Ray puts sockets here
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [
            str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
            "--num-cpus=2", "--include-dashboard=false", "--block", f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    started = threading.Event()
    output: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            if "Ray runtime started" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not started.wait(90) or proc.poll() is not None:
            pytest.fail("ray start --head failed:\n" + "".join(output[-30:]))
        with pytest.MonkeyPatch.context() as mp:
            # The search must find the token itself: only the token file is set here.
            mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
            mp.delenv("RAY_AUTH_MODE", raising=False)
            mp.delenv("RAY_ADDRESS", raising=False)
            yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this cluster only
        proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _opts(out: Path, study: Study, trials: int, address: str | None, **kw) -> SearchOptions:
    return SearchOptions(
        trials=trials,
        out_dir=out / study.name,
        backend="ray",
        address=address,
        quiet=True,
        **kw,
    )


def _run(study: Study, opts: SearchOptions) -> tuple[list[TrialRecord], list[str]]:
    lines: list[str] = []
    records = RayBackend().run(study, opts, log=lines.append)
    return records, lines


@pytest.fixture(scope="module")
def smoke(cluster: str, tmp_path_factory: pytest.TempPathFactory):
    """The smoke study's 8 trials on the cluster: (study, out root, records)."""
    study = load_study("smoke")
    out = tmp_path_factory.mktemp("ray-smoke")
    records, _ = _run(study, _opts(out, study, SMOKE_TRIALS, cluster))
    return study, out, records


# --- converting Tune results ------------------------------------------------------------------


def test_to_record_complete_pruned_failed_and_unfinished() -> None:
    final = {"val_acc": 0.5, "epoch": 4, "dgkd_final": 1.0, "time_total_s": 2.5, "done": True}
    final["dgkd_metrics"] = {"val_acc": 0.5, "test_acc": 0.4, "test_ece": float("nan")}
    r = to_record(3, {"epsilon": 1.0}, final, metric="val_acc")
    assert (r.number, r.state, r.value, r.params, r.duration_s) == (
        3, "COMPLETE", 0.5, {"epsilon": 1.0}, 2.5,
    )  # fmt: skip
    assert r.metrics["test_acc"] == 0.4 and math.isnan(r.metrics["test_ece"])
    assert r.pruned_epoch is None and r.fail_reason == ""

    # Ray flattens nested results in some places: same record.
    flat = {k: v for k, v in final.items() if k != "dgkd_metrics"}
    flat.update({f"dgkd_metrics/{k}": v for k, v in final["dgkd_metrics"].items()})
    assert to_record(3, {}, flat, metric="val_acc").metrics.keys() == r.metrics.keys()

    # Stopped by the scheduler: its last report is a partial value, never a COMPLETE one.
    stopped = {"val_acc": 0.9, "epoch": 2, "time_total_s": 1.0, "done": True}
    p = to_record(4, {"epsilon": 2.0}, stopped, metric="val_acc")
    assert (p.state, p.value, p.pruned_epoch, p.metrics) == ("PRUNED", None, 2, {})

    diverged = {"val_acc": float("nan"), "epoch": 3, "dgkd_final": 1.0, "done": True}
    diverged["dgkd_fail"] = "diverged: loss became nan at epoch 3, step 7"
    f = to_record(5, {}, diverged, metric="val_acc")
    assert (f.state, f.value, f.fail_epoch) == ("FAIL", None, 3)
    assert f.fail_reason.startswith("diverged: loss became nan")

    err = to_record(
        6, {}, {"val_acc": 0.3, "epoch": 1}, metric="val_acc", status="ERROR",
        error=RuntimeError("CUDA out of memory\nTraceback ..."),
    )  # fmt: skip
    assert (err.state, err.fail_reason, err.fail_epoch) == (
        "FAIL", "RuntimeError: CUDA out of memory", 1,
    )  # fmt: skip

    tune_text = (  # what Tune's error file holds when the exception itself is not at hand
        "Failure # 1 (occurred at 2026-01-01_00-00-00)\nTraceback (most recent call last):\n"
        "  File ...\ndgkd.teacher.TeacherError: teacher_checkpoint /x/t.pt does not exist"
    )
    err = to_record(6, {}, {}, metric="val_acc", status="ERROR", error=tune_text)
    assert err.fail_reason == "TeacherError: teacher_checkpoint /x/t.pt does not exist"

    # Cut off by an interruption (Tune may call it TERMINATED, but it never reported 'done').
    cut = to_record(7, {}, {"val_acc": 0.3, "epoch": 1}, metric="val_acc")
    assert cut.state == "RUNNING" and cut.value is None
    assert to_record(8, {}, {}, metric="val_acc", status="PENDING").state == "WAITING"
    assert to_record(9, {}, {}, metric="val_acc", status="RUNNING").state == "RUNNING"


# --- a search on the cluster ------------------------------------------------------------------


def test_smoke_study_on_a_cluster(smoke) -> None:
    study, out, records = smoke
    assert [r.number for r in records] == list(range(SMOKE_TRIALS))
    assert {r.state for r in records} <= set(FINISHED)
    assert records[0].params == {"epsilon": 0.0}  # the enqueued DKD baseline runs first
    complete = [r for r in records if r.state == "COMPLETE"]
    pruned = [r for r in records if r.state == "PRUNED"]
    assert complete and pruned, [r.state for r in records]  # ASHA prunes at epoch 1 of 2
    for r in complete:
        assert r.value == r.metrics[study.metric]
        assert {"test_acc", "test_agreement", "train_nc1", "teacher_test_acc"} <= set(r.metrics)
        assert r.duration_s is not None and r.duration_s > 0
    for r in pruned:
        assert r.value is None and r.metrics == {} and r.pruned_epoch == 1

    # The reporter wrote the same states to trials.csv: a pruned trial has no value there.
    with open(out / study.name / "trials.csv") as f:
        rows = {int(row["number"]): row for row in csv.DictReader(f)}
    assert len(rows) == SMOKE_TRIALS
    for r in records:
        assert rows[r.number]["state"] == r.state
        assert (rows[r.number]["value"] == "") == (r.state != "COMPLETE")

    # The Optuna study the searcher learned from says PRUNED too, not COMPLETE with a partial
    # value (what Ray's OptunaSearch alone would tell it).
    saved = sorted(glob.glob(str(out / study.name / "ray" / "smoke" / "searcher-state-*.pkl")))
    with open(saved[-1], "rb") as f:
        ostudy = pickle.load(f)["_ot_study"]
    states = {tuple(t.params.items()): t.state.name for t in ostudy.trials}
    for r in records:
        assert states[tuple(r.params.items())] == r.state


def test_more_trials_extend_the_search(smoke, cluster: str) -> None:
    study, out, before = smoke
    records, lines = _run(study, _opts(out, study, SMOKE_TRIALS + 3, cluster))
    assert [r.number for r in records] == list(range(SMOKE_TRIALS + 3))
    for old, new in zip(before, records, strict=False):  # the first 8, untouched
        assert (old.params, old.state, old.value) == (new.params, new.state, new.value)
    assert {r.state for r in records} <= set(FINISHED)
    assert any("adding 3 trial(s)" in line for line in lines)
    new_params = [r.params["epsilon"] for r in records[SMOKE_TRIALS:]]
    assert all(0.0 <= e <= 10.0 for e in new_params)
    assert (out / study.name / "ray" / "smoke-2").is_dir()

    # The same command again has nothing left to run and changes nothing.
    start = time.monotonic()
    again, _ = _run(study, _opts(out, study, SMOKE_TRIALS + 3, cluster))
    assert time.monotonic() - start < 15
    assert [(r.number, r.state, r.value) for r in again] == [
        (r.number, r.state, r.value) for r in records
    ]


def test_interrupted_search_resumes_to_the_total(cluster: str, tmp_path: Path) -> None:
    study, trials = load_study("smoke"), 10
    cmd = [
        str(Path(sys.executable).with_name("dgkd-search")), "--study", "smoke",
        "--trials", str(trials), "--backend", "ray", "--address", cluster,
        "--out", str(tmp_path), "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    table = tmp_path / "smoke" / "trials.csv"

    def finished() -> dict[int, dict[str, str]]:
        try:
            with open(table) as f:
                return {int(r["number"]): r for r in csv.DictReader(f) if r["state"] in FINISHED}
        except (OSError, ValueError, KeyError):
            return {}

    deadline = time.monotonic() + 90
    while len(finished()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    done_before = finished()
    assert 2 <= len(done_before) < trials

    records, lines = _run(study, _opts(tmp_path, study, trials, cluster))
    assert [r.number for r in records] == list(range(trials))  # none lost, none repeated
    assert all(r.state in FINISHED for r in records)
    for number, row in done_before.items():
        r = records[number]
        assert row["state"] == r.state
        assert float(row["params_epsilon"]) == pytest.approx(r.params["epsilon"])
    assert any("resuming" in line for line in lines)


# --- bad input --------------------------------------------------------------------------------


def test_unreachable_address_fails_fast_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from dgkd.cli import search_main

    study, address = load_study("smoke"), f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(SearchInputError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1"):
        RayBackend().run(study, _opts(tmp_path, study, 2, address))
    assert time.monotonic() - start < CONNECT_TIMEOUT_S + 2
    assert not (tmp_path / "smoke").exists()

    rc = search_main(
        ["--study", "smoke", "--backend", "ray", "--address", address, "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "ray start --head" in err, err
    assert not (tmp_path / "smoke").exists()

    for bad, match in (("ray://10.0.0.1:10001", "not supported"), ("nonsense", "host:port")):
        with pytest.raises(SearchInputError, match=match):
            RayBackend().run(study, _opts(tmp_path, study, 2, bad))


def test_trials_bigger_than_any_node_are_refused(cluster: str, tmp_path: Path) -> None:
    study = load_study("smoke")
    with pytest.raises(SearchInputError, match=r"asks for 3 CPUs.*has 2; lower --cpus-per-trial"):
        RayBackend().run(study, _opts(tmp_path, study, 2, cluster, cpus_per_trial=3.0))
    with pytest.raises(SearchInputError, match="has no GPU"):
        RayBackend().run(study, _opts(tmp_path, study, 2, cluster, gpus_per_trial=0.5))
    assert not (tmp_path / "smoke" / "ray").exists()


def test_resume_with_another_config_is_refused(smoke, cluster: str) -> None:
    study, out, _ = smoke
    opts = _opts(out, study, SMOKE_TRIALS, cluster, overrides={"lr": 0.03})
    with pytest.raises(SearchInputError, match=r"another config \(lr .*--fresh"):
        RayBackend().run(study, opts)


# --- Ray's own messages -------------------------------------------------------------------------


def test_tune_warnings_go_to_ray_log_not_the_terminal(
    cluster: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tune's warning about frequent experiment snapshots, made certain here (any two forced
    ones within 1000 s; a trial saving its state every epoch forces two), is in ray.log and not
    on the terminal; Ray's loggers have their own handlers back afterwards."""
    import logging

    import ray.tune  # noqa: F401  # Ray's loggers get their handlers at import, before `before`

    from dgkd.cli import search_main

    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    loggers = ("ray", "ray.tune", "ray.train")

    def state() -> dict[str, tuple[list[logging.Handler], bool]]:
        return {
            n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate)
            for n in loggers
        }

    before = state()
    spec = tmp_path / "smoke.toml"  # no pruning: the one trial runs every epoch
    spec.write_text(Path(load_study("smoke").source).read_text().replace('"median"', '"none"'))
    rc = search_main(
        [
            "--study", str(spec), "--trials", "1", "--seeds", "1", "--backend", "ray",
            "--address", cluster, "--out", str(tmp_path), "--set", "epochs=4",
            "--set", "checkpoint_every=1",
        ]
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert rc == 0, err
    assert "trial 0 COMPLETE" in out
    assert err == "" and "snapshotting" not in out and not re.search(r"\bWARNING\b", out), out
    log = (tmp_path / "smoke" / "ray.log").read_text()
    assert "search smoke on Ray cluster" in log
    assert "Experiment state snapshotting has been triggered multiple times" in log

    # Ray's loggers have their own handlers back (the terminal's; which stream object they
    # write to depends on what captured stderr when Ray was imported, so compare the handlers).
    assert state() == before


# --- a local cluster ----------------------------------------------------------------------------


def test_local_cluster_grid_and_diverged_trial(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No address: a local cluster is started and stopped; a diverged trial is a FAIL."""
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes ~/.ray/auth_token for a local cluster
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    spec = tmp_path / "lr_grid.toml"
    spec.write_text(
        'space = { lr = { type = "categorical", choices = [0.01, 1e30] } }\n'
        'sampler = "grid"\npruner = "none"\ntrials = 2\n'
        '[base]\nmethod = "dkd"\nepochs = 2\nteacher_epochs = 2\nval_pool = 200\ntest_pool = 400\n'
    )
    study = load_study(str(spec))
    records, _ = _run(study, _opts(tmp_path / "runs", study, 5, None))  # the grid has 2 points
    by_lr = {r.params["lr"]: r for r in records}
    assert sorted(by_lr) == [0.01, 1e30] and len(records) == 2
    assert by_lr[0.01].state == "COMPLETE"
    bad = by_lr[1e30]
    assert (bad.state, bad.value, bad.fail_epoch) == ("FAIL", None, 1)
    assert bad.fail_reason.startswith("diverged: loss became")
    assert "RAY_AUTH_MODE" not in os.environ
    import ray

    assert not ray.is_initialized()


# --- what a Ray search leaves for Optuna's tools --------------------------------------------------


def test_ray_search_is_readable_by_optuna_tools(smoke) -> None:
    import json as jsonlib

    import optuna
    import pandas as pd

    from dgkd.search import best_params

    study, out, records = smoke
    run = out / study.name
    cmd = [str(Path(sys.executable).with_name("optuna")), "trials", "--flatten", "--study-name",
           "smoke", "--storage", str(run / "journal.log"), "--storage-class",
           "JournalFileBackend", "-f", "json"]  # fmt: skip
    rows = jsonlib.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    rows = rows[: len(records)]  # a later test may have extended the search
    assert [r["number"] for r in rows] == [r.number for r in records]
    assert [r["state"] for r in rows] == [r.state for r in records]
    for row, r in zip(rows, records, strict=True):
        if r.state == "COMPLETE":
            assert row["user_attrs_test_acc"] == pytest.approx(r.metrics["test_acc"])
    backend = optuna.storages.journal.JournalFileBackend(str(run / "journal.log"))
    ostudy = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(backend))
    assert ostudy.user_attrs["dgkd_backend"] == "ray"
    for t, r in zip(ostudy.trials, records, strict=False):
        assert len(t.intermediate_values) == (2 if r.state == "COMPLETE" else 1)
        history = pd.read_csv(run / "history" / f"trial_{r.number}.csv")
        assert list(history["epoch"]) == sorted(t.intermediate_values)
    assert best_params(study, out_dir=run) == ostudy.best_trial.params  # --from-study reads it
    from dgkd.search.export import write_search_outputs

    write_search_outputs(study, records, run)  # what run_search does after the backend
    assert (run / "best_student.pt").is_file() and (run / "learning_curves.png").is_file()
    best = json.loads((run / "best.json").read_text())  # every seed's student, as with Optuna
    assert sorted(best["students"]) == [str(s) for s in best["seeds"]] and len(best["seeds"]) > 1
    assert all((run / path).is_file() for path in best["students"].values())
    for t in ostudy.trials:  # each seed's metric a flat attribute, every metric a system one
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert f"seed{best['seeds'][-1]}_val_acc" in t.user_attrs
            assert len(t.system_attrs["dgkd_seed_metrics"]) == len(best["seeds"])


# --- a worker process killed mid-trial ------------------------------------------------------------


def test_worker_killed_mid_trial_is_retried(cluster: str, tmp_path: Path) -> None:
    """SIGKILL of the Ray worker running a trial: Tune runs the trial again (FailureConfig) and
    the search ends with every trial complete, once."""
    import json as jsonlib

    import pandas as pd

    epochs = 40  # two seeds in batches of 16: about 0.2 s an epoch, so a trial is seen mid-way
    spec = tmp_path / "smoke.toml"  # no pruning: both trials run every epoch
    spec.write_text(Path(load_study("smoke").source).read_text().replace('"median"', '"none"'))
    cmd = [
        str(Path(sys.executable).with_name("dgkd-search")), "--study", str(spec), "--trials", "2",
        "--seeds", "2", "--backend", "ray", "--address", cluster, "--out", str(tmp_path), "--quiet",
        "--set", f"epochs={epochs}", "--set", "batch_size=16",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 120
    while victim is None:  # a trial some way into training: kill the worker process running it
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trial was seen mid-training"
        for path in glob.glob(str(tmp_path / "smoke" / "ray" / "smoke" / "*" / "result.json")):
            lines = Path(path).read_text().splitlines()
            with contextlib.suppress(ValueError, IndexError, KeyError, ProcessLookupError):
                last = jsonlib.loads(lines[-1])
                if 2 <= last["training_iteration"] <= epochs // 2:
                    os.kill(int(last["pid"]), signal.SIGKILL)  # this search's worker, by pid
                    victim = last["trial_id"]
                    break
        time.sleep(0.1)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    frame = pd.read_csv(tmp_path / "smoke" / "trials.csv")
    assert list(frame["number"]) == [0, 1]
    assert list(frame["state"]) == ["COMPLETE", "COMPLETE"], frame
    for number in (0, 1):  # the re-run trial's history: each epoch once, all of them
        history = pd.read_csv(tmp_path / "smoke" / "history" / f"trial_{number}.csv")
        assert list(history["epoch"]) == list(range(1, epochs + 1))
    retried = glob.glob(str(tmp_path / "smoke" / "ray" / "smoke" / f"*{victim}*" / "error.*"))
    assert retried, "the killed trial left no error record: was it retried?"


# --- one teacher per config, whichever backend trains it ------------------------------------------


def test_ray_search_and_ablation_train_the_same_teacher_as_train(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teacher a Ray worker trains (a search trial) or an ablation on Ray uses is, bit for
    bit, the one ``train()`` trains in a cache of its own (tests/test_teacher_identity.py has
    the other entry points)."""
    import json as jsonlib

    import dgkd.teacher as teacher_mod
    from dgkd.ablate import AblationOptions, resolve_base, run_ablation
    from dgkd.config import TrainConfig
    from dgkd.teacher import teacher_key
    from dgkd.train import train

    cfg = TrainConfig(epochs=2, teacher_epochs=2, val_pool=200, test_pool=400)  # smoke's base

    def sha_in(name: str, run) -> str:
        cache = tmp_path / name
        monkeypatch.setenv("DGKD_CACHE", str(cache))
        monkeypatch.setattr(teacher_mod, "_MEMO", {})
        run()
        entries = list((cache / "teachers").glob("*.json"))
        assert [p.stem for p in entries] == [teacher_key(cfg)]
        return jsonlib.loads(entries[0].read_text())["sha256"]

    study = load_study("smoke")
    shas = {
        "train()": sha_in("train", lambda: train(cfg)),
        "ray search": sha_in(
            "search", lambda: _run(study, _opts(tmp_path / "runs", study, 1, cluster))
        ),
        "ray ablation": sha_in(
            "ablation",
            lambda: run_ablation(
                resolve_base(
                    overrides={"epochs": 2, "teacher_epochs": 2, "val_pool": 200, "test_pool": 400}
                ),
                AblationOptions(
                    variants=("ce",),
                    n_seeds=1,
                    teachers=1,
                    backend="ray",
                    address=cluster,
                    out_dir=tmp_path / "ablate",
                ),
            ),
        ),
    }
    assert len(set(shas.values())) == 1, shas
