"""Tests for the Optuna backend: several workers on one journal, kill and resume to the exact
total, interrupted trials re-run, heartbeats on an RDB (SQLite, PostgreSQL), samplers, pruners,
and the storage staying readable by Optuna's own CLI."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from pgserver import local_server

from dgkd.cli import search_main
from dgkd.search.optuna import storage as optuna_storage
from dgkd.search.optuna import workers
from dgkd.search.records import SearchOptions
from dgkd.search.sampling import make_pruner, make_sampler
from dgkd.study import load_study
from dgkd.train import train

CODE = "import sys; from dgkd.cli import search_main; sys.exit(search_main(sys.argv[1:]))"


def start(out: Path, *args: str) -> subprocess.Popen:
    """dgkd-search in a subprocess (the test session's cache and thread cap are inherited)."""
    cmd = [sys.executable, "-c", CODE, "--out", str(out), "--quiet", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def journal_study(out: Path, name: str = "smoke") -> optuna.Study:
    backend = optuna.storages.journal.JournalFileBackend(str(out / name / "journal.log"))
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))


def wait_for(
    proc: subprocess.Popen, out: Path, *, finished: int, running: int, epochs: int = 12
) -> None:
    """Poll the journal until enough trials finished and enough are mid-training, several
    epochs from their end (so a signal sent now lands inside the trial), or fail the test."""
    deadline = time.monotonic() + 300  # 120 s ran out on two cores under a busy test run
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (out / "smoke" / "journal.log").exists():
            try:
                trials = journal_study(out).get_trials(deepcopy=False)
            except KeyError:
                trials = []
            states = [t.state for t in trials]
            owned = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and t.intermediate_values
                and t.last_step is not None
                and t.last_step <= epochs - 4
            ]
            if sum(s.is_finished() for s in states) >= finished and len(owned) >= running:
                return
        time.sleep(0.05)
    pytest.fail("the search made no progress")


def unpruned_smoke(tmp_path: Path) -> str:
    """The smoke study without pruning, so a trial seen mid-training is still running a moment
    later when the test signals it."""
    path = tmp_path / "study" / "smoke.toml"
    path.parent.mkdir()
    path.write_text(Path(load_study("smoke").source).read_text().replace('"median"', '"none"'))
    return str(path)


def check_exact_total(out: Path, total: int, name: str = "smoke") -> pd.DataFrame:
    """Every trial number once, no gaps, and exactly ``total`` that count toward the budget."""
    frame = pd.read_csv(out / name / "trials.csv")
    assert list(frame["number"]) == list(range(len(frame)))
    interrupted = frame["fail_reason"].astype("string").fillna("").str.startswith("interrupted")
    assert int((~interrupted).sum()) == total
    assert set(frame["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    for _, row in frame[interrupted].iterrows():  # each interruption re-ran its parameters
        rerun = int(row["fail_reason"].rsplit("re-run as trial ", 1)[1])
        assert frame.loc[rerun, "params_epsilon"] == row["params_epsilon"]
        assert frame.loc[rerun, "state"] in ("COMPLETE", "PRUNED")
    return frame


def test_two_workers_share_one_journal_and_stop_at_the_total(tmp_path: Path) -> None:
    proc = start(tmp_path, "--study", "smoke", "--trials", "6", "--workers", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "2 worker(s)" in out and "smoke: 6/6 trials" in out
    check_exact_total(tmp_path, 6)
    trials = journal_study(tmp_path).trials
    assert len(trials) == 6
    owners = {t.user_attrs["worker"].split(":")[1] for t in trials}
    assert len(owners) == 2  # both processes ran trials
    # The storage stays readable by Optuna's own CLI, with the command the search prints: the
    # best trial, one short line per parameter and metric, each seed's metric too.
    opts = SearchOptions(1, tmp_path / "smoke")
    command = optuna_storage.inspect_command(load_study("smoke"), opts)
    env_var, name, *args = command.split()
    assert env_var == "PYTHONWARNINGS=ignore" and name == "optuna"
    optuna_cli = str(Path(sys.executable).with_name("optuna"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    shown = subprocess.run([optuna_cli, *args], capture_output=True, text=True, check=True, env=env)
    assert shown.stderr == ""
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) < 80, shown.stdout
    assert {f"user_attrs_seed{s}_val_acc" for s in range(4)} <= {x.split(":")[0] for x in lines}
    store = args[args.index("--storage") :]
    listing = [optuna_cli, "trials", "--study-name", "smoke", *store, "-f", "json", "--flatten"]
    listed = subprocess.run(listing, capture_output=True, text=True, check=True, env=env)
    rows = json.loads(listed.stdout)
    assert len(rows) == 6
    assert all(isinstance(v, int | float | str | None) for row in rows for k, v in row.items()
               if k != "user_attrs_seeds")  # fmt: skip  # flat: no list of dicts


def test_killed_search_resumes_to_exactly_the_total(tmp_path: Path) -> None:
    study = unpruned_smoke(tmp_path)
    proc = start(
        tmp_path, "--study", study, "--trials", "6", "--workers", "1", "--set", "epochs=12"
    )
    wait_for(proc, tmp_path, finished=3, running=1)
    proc.kill()  # SIGKILL: no cleanup, the running trial is left RUNNING in the journal
    proc.wait()
    left = journal_study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    assert len(left) == 1
    argv = ["--out", str(tmp_path), "--quiet", "--study", study, "--trials", "6", "--workers", "1"]
    assert search_main([*argv, "--set", "epochs=12"]) == 0
    frame = check_exact_total(tmp_path, 6)
    cut = frame[frame["number"] == left[0].number].iloc[0]
    assert cut["state"] == "FAIL" and cut["fail_reason"].startswith("interrupted (process ")


@pytest.mark.parametrize(("batch", "total"), [("1", 5), ("2", 8)])
def test_sigterm_interrupts_workers_which_reenqueue_their_trials(
    tmp_path: Path, batch: str, total: int
) -> None:
    study = unpruned_smoke(tmp_path)
    args = ("--study", study, "--trials", str(total), "--workers", "2", "--set", "epochs=12")
    proc = start(tmp_path, *args, "--batch", batch)
    wait_for(proc, tmp_path, finished=2, running=2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    # A worker killed for not stopping left its threads' stacks: the failure message shows them.
    err += "".join(f.read_text() for f in sorted(tmp_path.rglob("*.stacks.txt")))
    assert proc.returncode == 130, err
    assert "rerun the same command to continue" in out
    trials = journal_study(tmp_path).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING], err
    cut = [t for t in trials if t.user_attrs.get("interrupted")]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert cut and len(waiting) == len(cut)
    assert {t.user_attrs["retry_of"] for t in waiting} == {t.number for t in cut}
    resume = [a for a in args if a not in ("--workers", "2")]  # any worker count may resume
    assert search_main(["--out", str(tmp_path), "--quiet", *resume]) == 0
    check_exact_total(tmp_path, total)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _add_running_trial(study: optuna.Study, owner: str, epsilon: float) -> int:
    storage = study._storage
    trial_id = storage.create_new_trial(study._study_id)
    dist = optuna.distributions.FloatDistribution(0.0, 10.0)
    storage.set_trial_param(trial_id, "epsilon", dist.to_internal_repr(epsilon), dist)
    storage.set_trial_user_attr(trial_id, "worker", owner)
    return storage.get_trial_number_from_id(trial_id)


def test_dead_owner_is_recovered_but_a_live_one_is_left_alone(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--quiet", "--study", "smoke", "--workers", "1"]
    assert search_main([*argv, "--trials", "2"]) == 0
    study = journal_study(tmp_path)
    host = socket.gethostname()
    dead = _add_running_trial(study, f"{host}:{_dead_pid()}:0", 7.0)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _add_running_trial(study, f"{host}:{sleeper.pid}:0", 3.0)
        assert search_main([*argv, "--trials", "5"]) == 0
        trials = journal_study(tmp_path).trials
        assert trials[live].state == TrialState.RUNNING  # another process's trial: not stolen
        assert trials[dead].state == TrialState.FAIL
        rerun = [t for t in trials if t.user_attrs.get("retry_of") == dead]
        assert len(rerun) == 1 and rerun[0].params == {"epsilon": 7.0}
        assert rerun[0].state.is_finished()
        finished = [t for t in trials if t.state.is_finished() and t.number != dead]
        assert len(finished) == 4  # 5 = 4 finished + the live one still running
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sqlite_url_storage_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'search.db'}"
    argv = ["--out", str(tmp_path), "--quiet", "--study", "smoke", "--storage", url]
    argv += ["--workers", "1"]
    assert search_main([*argv, "--trials", "3"]) == 0
    assert not (tmp_path / "smoke" / "journal.log").exists()
    assert len(pd.read_csv(tmp_path / "smoke" / "trials.csv")) == 3
    assert len(optuna.load_study(study_name="smoke", storage=url).trials) == 3
    assert search_main([*argv, "--trials", "2", "--fresh"]) == 0
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert "smoke" in names and any(n.startswith("smoke.old-") for n in names)
    assert len(optuna.load_study(study_name="smoke", storage=url).trials) == 2


def test_heartbeat_stale_trial_is_failed_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optuna_storage, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(optuna_storage, "GRACE_PERIOD_S", 1)
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    argv = ["--out", str(tmp_path), "--quiet", "--study", "smoke", "--storage", url]
    argv += ["--workers", "1"]  # one process: the short heartbeat is patched into this one
    assert search_main([*argv, "--trials", "2"]) == 0
    opts = SearchOptions(trials=1, out_dir=tmp_path / "smoke", storage=url)
    study = optuna.load_study(study_name="smoke", storage=optuna_storage.open_storage(opts))
    stale = _add_running_trial(study, "another-host:1:1", 5.0)
    study._storage.record_heartbeat(study.trials[stale]._trial_id)
    time.sleep(2.5)  # past the grace period: the other host's worker is gone
    assert search_main([*argv, "--trials", "4"]) == 0
    frame = check_exact_total(tmp_path, 4)
    reason = frame.loc[stale, "fail_reason"]
    assert reason.startswith("interrupted (its heartbeat stopped); re-run as trial ")


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL database: $DGKD_TEST_POSTGRES_URL, else a server started here on loopback.

    Skipped when PostgreSQL is not installed, except under CI (CI=true), where it fails.
    """
    if os.environ.get("DGKD_TEST_POSTGRES_URL"):
        yield os.environ["DGKD_TEST_POSTGRES_URL"]
        return
    with local_server() as server:
        yield server.url


def test_postgresql_two_workers_running_batches(tmp_path: Path, postgres_url: str) -> None:
    name = f"pg_{uuid.uuid4().hex[:8]}"
    study_file = tmp_path / f"{name}.toml"  # a fresh study name in the shared database
    shutil.copy(load_study("smoke").source, study_file)
    proc = start(tmp_path, "--study", str(study_file), "--trials", "5", "--workers", "2",
                 "--batch", "2", "--storage", postgres_url)  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    check_exact_total(tmp_path, 5, name)  # batches of 2 stop at an odd total exactly
    url = optuna_storage.driver_url(postgres_url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert len(trials) == 5
    assert len({t.user_attrs["worker"] for t in trials}) == 2


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "cmaes", "gp"])
def test_every_sampler_runs(tmp_path: Path, sampler: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        f'sampler = "{sampler}"\ntrials = 4\n'
        '[space.epsilon]\ntype = "float"\nlow = 0.0\nhigh = 2.0\nstep = 0.5\n'
        '[space.temperature]\ntype = "float"\nlow = 1.0\nhigh = 4.0\nstep = 1.0\n'
    )
    study = load_study(path)
    with workers.Quiet(None):
        ostudy = optuna.create_study(sampler=make_sampler(study), direction="maximize")
        ostudy.optimize(lambda t: sum(study.space.suggest(t).values()), n_trials=4)
    assert len(ostudy.trials) == 4
    assert all(study.space["epsilon"].contains(t.params["epsilon"]) for t in ostudy.trials)


def test_grid_search_stops_when_the_grid_is_exhausted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        'sampler = "grid"\npruner = "none"\ntrials = 50\n'
        '[space.epsilon]\ntype = "categorical"\nchoices = [0.0, 1.0, 2.0]\n'
        "[base]\nepochs = 2\nteacher_epochs = 2\nval_pool = 200\ntest_pool = 400\n"
    )
    argv = ["--out", str(tmp_path), "--quiet", "--study", str(path), "--workers", "1"]
    assert search_main(argv) == 0  # one process: a grid drawn by several may repeat a point
    assert "the grid has only 3 points" in capsys.readouterr().out
    frame = pd.read_csv(tmp_path / "grid" / "trials.csv")
    assert sorted(frame["params_epsilon"]) == [0.0, 1.0, 2.0]


def test_pruners() -> None:
    study = load_study("eps_sweep")
    median = make_pruner(study, 40, 5)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert median._n_warmup_steps == 10 and median._n_startup_trials == 10
    assert median._interval_steps == 5
    assert make_pruner(study, 2, 5)._n_warmup_steps == 1  # never the last epoch or later
    hyper = make_pruner(study.replace(pruner="hyperband"), 40)
    assert isinstance(hyper, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(study.replace(pruner="none"), 40), optuna.pruners.NopPruner)


def test_storage_helpers() -> None:
    assert (
        optuna_storage.redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    )
    assert optuna_storage.driver_url("postgresql://u@h/db").startswith("postgresql+psycopg")
    assert optuna_storage.driver_url("sqlite:///x.db") == "sqlite:///x.db"
    opts = SearchOptions(trials=1, out_dir=Path("runs/eps_sweep"))
    assert optuna_storage.inspect_command(load_study("eps_sweep"), opts) == (
        "PYTHONWARNINGS=ignore optuna best-trial --flatten -f yaml --study-name eps_sweep "
        "--storage runs/eps_sweep/journal.log --storage-class JournalFileBackend"
    )


def test_journal_elsewhere_via_storage_path(tmp_path: Path) -> None:
    journal = tmp_path / "shared" / "j.log"
    argv = ["--out", str(tmp_path / "runs"), "--quiet", "--study", "smoke", "--workers", "1"]
    argv += ["--trials", "2"]
    assert search_main([*argv, "--storage", str(journal)]) == 0
    assert journal.is_file() and not (tmp_path / "runs" / "smoke" / "journal.log").exists()
    assert len(pd.read_csv(tmp_path / "runs" / "smoke" / "trials.csv")) == 2
    argv[-1] = "1"
    assert search_main([*argv, "--storage", str(journal), "--fresh"]) == 0
    assert [p.name.startswith("j.log.old-") for p in journal.parent.iterdir()].count(True) == 1
    assert len(pd.read_csv(tmp_path / "runs" / "smoke" / "trials.csv")) == 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a zombie of ours counts as gone
            return False
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def test_sigkill_of_a_two_worker_search_loses_nothing(tmp_path: Path) -> None:
    study = unpruned_smoke(tmp_path)
    args = ("--study", study, "--trials", "5", "--set", "epochs=12")
    proc = start(tmp_path, *args, "--workers", "2")
    wait_for(proc, tmp_path, finished=1, running=2)
    running = journal_study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    pids = {int(t.user_attrs["worker"].split(":")[1]) for t in running}
    proc.kill()  # SIGKILL of the parent: no cleanup of its own
    proc.wait()
    # Its workers follow it (SIGTERM on parent death) instead of training on as orphans.
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their killed parent"
        time.sleep(0.2)
    trials = journal_study(tmp_path).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t for t in trials if t.user_attrs.get("interrupted")]  # stopped mid-trial
    assert search_main(["--out", str(tmp_path), "--quiet", *args]) == 0
    frame = check_exact_total(tmp_path, 5)
    # Determinism after a resume: a re-run trial (fresh worker process, after the kill) has
    # exactly the metrics of the same config trained here, in this process.
    reruns = frame[frame["fail_reason"].astype("string").fillna("").str.startswith("interrupted")]
    row = frame.loc[int(reruns.iloc[0]["fail_reason"].rsplit("re-run as trial ", 1)[1])]
    loaded = load_study(study)
    cfg = loaded.config({"epsilon": float(row["params_epsilon"])}, {"epochs": 12})
    alone = [train(cfg.replace(seed=s)).metrics for s in loaded.trial_seeds({"epochs": 12})]
    for key in ("val_acc", "test_acc", "test_agreement", "test_ece", "train_nc1"):
        mean = math.fsum(m[key] for m in alone) / len(alone)  # the trial: its seeds' mean
        assert row[key] == pytest.approx(mean, rel=0, abs=1e-12), key


def test_two_searches_started_at_once_share_one_journal(tmp_path: Path) -> None:
    study = unpruned_smoke(tmp_path)
    args = ("--study", study, "--trials", "6", "--workers", "1")  # two processes in all
    procs = [start(tmp_path, *args) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    frame = check_exact_total(tmp_path, 6)
    assert len(frame) == 6  # no duplicate or lost trial numbers, nothing interrupted
    assert len(journal_study(tmp_path).trials) == 6


def test_postgresql_worker_killed_mid_trial_is_retried_through_its_heartbeat(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DGKD_HEARTBEAT_S", "1")
    monkeypatch.setenv("DGKD_GRACE_PERIOD_S", "2")
    name = f"pg_{uuid.uuid4().hex[:8]}"
    study_file = tmp_path / f"{name}.toml"  # a fresh study name in the shared database
    study_file.write_text(
        Path(load_study("smoke").source).read_text().replace('"median"', '"none"')
    )
    args = ("--study", str(study_file), "--trials", "10", "--storage", postgres_url,
            "--workers", "1", "--set", "epochs=12")  # fmt: skip
    procs = [start(tmp_path, *args) for _ in range(2)]  # two machines' worth of processes
    url = optuna_storage.driver_url(postgres_url)
    deadline = time.monotonic() + 120
    while True:  # until both processes are training, each with a trial of its own
        assert time.monotonic() < deadline, "the two processes never trained at once"
        with contextlib.suppress(KeyError):
            running = optuna.load_study(study_name=name, storage=url).get_trials(
                states=(TrialState.RUNNING,)
            )
            owners = {int(t.user_attrs.get("worker", "h:0:0").split(":")[1]) for t in running}
            if {p.pid for p in procs} <= owners:
                break
        time.sleep(0.1)
    victim, survivor = procs
    cut = [t.number for t in running if t.user_attrs["worker"].split(":")[1] == str(victim.pid)]
    victim.kill()  # SIGKILL mid-trial: its trial stays RUNNING and its heartbeat stops
    victim.wait()
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    frame = check_exact_total(tmp_path, 10, name)
    for number in cut:  # found stale by the survivor and retried with the same parameters
        assert frame.loc[number, "state"] == "FAIL"
        assert frame.loc[number, "fail_reason"].startswith("interrupted (its heartbeat stopped)")
