"""The Ray Tune backend: the same study, space and trial body on a local or remote Ray cluster.

Search. ``tune.Tuner`` with ``OptunaSearch`` over :meth:`Space.distributions` (the study's
sampler, seeded; enqueued points first) and an ASHA scheduler for the study's pruner: ``median``
is ASHA with reduction factor 2 (a trial below the median at a rung stops) from a quarter of the
epochs, ``hyperband`` ASHA with reduction factor 3 from an eighth, ``none`` no scheduler. Actors
are reused, so a worker process loads the data and the teacher once.

Pruned means pruned. A trial reports its metrics after every epoch but the last; the last epoch
goes out with the final metrics and a ``dgkd_final`` flag. A trial stopped by the scheduler has
no flag and is recorded as PRUNED at its last epoch everywhere: in the records, and in the Optuna
study the searcher learns from (Ray's own ``OptunaSearch`` would tell it COMPLETE with a partial
value). A diverged trial sends a final report with ``dgkd_fail`` and is recorded as FAIL.

Cluster. ``--address`` (or ``RAY_ADDRESS``) connects to a running cluster, checked for
reachability first so a wrong address fails in seconds; without one a local cluster sized to
this machine is started and stopped again. Each trial asks for ``--cpus-per-trial`` CPUs and
``--gpus-per-trial`` GPUs; a trial no node can hold would wait forever, so that is an error.

Resume and extend. Results live under ``<out>/<study>/ray/``. An interrupted run is resumed with
``Tuner.restore`` (unfinished and errored trials run again). Tune fixes a run's number of trials,
so raising ``--trials`` later adds a further run (``<study>-2``, ...) whose searcher is given
every earlier trial first; records are numbered across runs in creation order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgkd.search import SearchInputError, SearchReporter
from dgkd.study import Study
from dgkd.trials import SearchOptions, TrialRecord

__all__ = ["CONNECT_TIMEOUT_S", "FINAL_KEY", "RESULTS_DIR", "run", "to_record"]

RESULTS_DIR = "ray"  # under runs/<study>/
SIGNATURE_FILE = "study.json"  # what a resumed search must share with the stored one
RUNS_FILE = "runs.json"  # {Tune run name: trials it was started for}
CONNECT_TIMEOUT_S = 5.0  # TCP check of --address before Ray tries (it retries for minutes)
MAX_FAILURES = 1  # re-runs of a trial whose worker crashed (a lost node, not a divergence)
FINAL_KEY = "dgkd_final"  # 1.0 on a trial's last report: it ran to the end
FAIL_KEY = "dgkd_fail"  # why a trial failed without raising (divergence)
METRICS_KEY = "dgkd_metrics"  # the final metrics of train(), nested in the last report
EPOCH_KEY = "epoch"  # the scheduler's time attribute: epochs trained
# Config fields that do not change results: a resumed search may differ in them.
_LOCAL_FIELDS = ("data_root", "download", "device", "eval_batch_size")


# --- results -> records -----------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _error_text(error: BaseException | str | None) -> str:
    """One line naming an exception raised inside a trial (Ray wraps it)."""
    if error is None:
        return ""
    if isinstance(error, str):
        text = error
    else:
        cause = getattr(error, "cause", None)
        error = cause if isinstance(cause, BaseException) else error
        text = f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Failure #"):  # Tune's error file: the exception is last
        name, sep, message = lines[-1].partition(": ")
        return f"{name.rsplit('.', 1)[-1]}{sep}{message}"
    return lines[0] if lines else "error"


def _classify(result: dict[str, Any], status: str, error: Any, metric: str) -> tuple[str, Any]:
    """``(state, value or reason)`` of a trial from its last report and Ray's status.

    Tune marks the last result of a trial that ended (ran out, or was stopped by the scheduler)
    with ``done``; a trial cut off by an interruption lacks it, even when Tune calls it
    TERMINATED, and runs again on resume.
    """
    if result.get(FAIL_KEY):
        return "FAIL", str(result[FAIL_KEY])
    if status == "ERROR" or error is not None:
        return "FAIL", _error_text(error) or "the trial raised (see its error.txt)"
    if result.get(FINAL_KEY):
        value = result.get(metric)
        if not _finite(value):
            return "FAIL", f"{metric} is {value}"
        return "COMPLETE", float(value)
    if status == "TERMINATED" and result.get("done"):
        return "PRUNED", None  # stopped by the scheduler before its final report
    if status == "RUNNING" or (status != "PENDING" and EPOCH_KEY in result):
        return "RUNNING", None
    return "WAITING", None


def _final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """train()'s final metrics from the last report (nested, or flattened by Ray)."""
    nested = result.get(METRICS_KEY)
    if isinstance(nested, dict):
        items = nested.items()
    else:
        prefix = METRICS_KEY + "/"
        items = ((k[len(prefix) :], v) for k, v in result.items() if k.startswith(prefix))
    return {k: (float(v) if _finite(v) else math.nan) for k, v in items}


def to_record(
    number: int,
    params: dict[str, Any],
    result: dict[str, Any] | None,
    *,
    metric: str,
    status: str = "TERMINATED",
    error: Any = None,
) -> TrialRecord:
    """One Tune trial as a backend-neutral record.

    Args:
        number: The trial's number in the study (creation order).
        params: The searched parameters (the trial's config).
        result: Its last report (``Result.metrics`` / ``Trial.last_result``), {} if none.
        metric: The study's metric.
        status: Ray's trial status (TERMINATED, ERROR, RUNNING, PENDING, PAUSED).
        error: The exception (or text) of an errored trial.
    """
    result = dict(result or {})
    state, info = _classify(result, status, error, metric)
    epoch = result.get(EPOCH_KEY)
    epoch = int(epoch) if _finite(epoch) else None
    duration = result.get("time_total_s")
    return TrialRecord(
        number=number,
        state=state,
        value=info if state == "COMPLETE" else None,
        params=dict(params),
        duration_s=float(duration) if _finite(duration) else None,
        pruned_epoch=epoch if state == "PRUNED" else None,
        metrics=_final_metrics(result) if state == "COMPLETE" else {},
        fail_reason=info if state == "FAIL" else "",
        fail_epoch=epoch if state == "FAIL" else None,
    )


@dataclass
class _Done:
    """A finished trial of an earlier run, for the next run's searcher."""

    record: TrialRecord
    last_value: float | None  # the metric at its last report (a pruned trial's last epoch)


def _creation_order(trial: Any, default: int) -> int:
    """A Tune trial's creation counter (its experiment tag starts with it; a restored run lists
    its trials in another order)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return int(head) if head.isdigit() else default


def _grid_records(grid: Any, metric: str, first: int) -> tuple[list[TrialRecord], list[_Done]]:
    """Records of a ResultGrid, numbered from ``first`` in trial creation order."""
    results = list(grid)
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    if len(trials) != len(results):  # pragma: no cover - a Ray that hides its trials
        trials = [None] * len(results)
    pairs = sorted(zip(trials, results, strict=True), key=lambda p: _creation_order(p[0], 0))
    records, done = [], []
    for i, (trial, res) in enumerate(pairs):
        status = getattr(trial, "status", None)
        status = status or ("ERROR" if res.error is not None else "TERMINATED")
        metrics = res.metrics or {}
        record = to_record(
            first + i, res.config or {}, metrics, metric=metric, status=status, error=res.error
        )
        records.append(record)
        value = metrics.get(metric)
        done.append(_Done(record, float(value) if _finite(value) else None))
    return records, done


def _trial_records(trials: Sequence[Any], metric: str, first: int, ended: dict[str, str]):
    """Records of Tune ``Trial`` objects (live, from a callback)."""
    out = []
    ordered = sorted(trials, key=lambda t: _creation_order(t, 0))
    for i, t in enumerate(ordered):
        status = ended.get(t.trial_id, t.status)
        error = None
        if status == "ERROR":
            error = _safe(t.get_pickled_error) or _safe(t.get_error) or "the trial raised"
        out.append(
            to_record(first + i, t.config, t.last_result, metric=metric, status=status, error=error)
        )
    return out


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


# --- the trial (runs on a Ray worker) ---------------------------------------------------------


def _trial(
    params: dict[str, Any],
    *,
    study: Study,
    overrides: dict[str, Any],
    threads: int,
    cwd: str,
) -> None:
    """Train one trial and report to Tune: every epoch but the last, then the final metrics."""
    from ray import tune

    from dgkd.loop import DivergedError
    from dgkd.objective import run_trial, set_threads

    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the config mean what they mean to the user
    set_threads(threads)
    cfg = study.config(dict(params), overrides)
    metric, last = study.metric, cfg.epochs

    def report(epoch: int, row: dict[str, float]) -> None:
        if epoch < last and _finite(row.get(metric)):
            tune.report({**row, EPOCH_KEY: epoch})

    try:
        metrics = run_trial(cfg, report)
    except DivergedError as exc:
        tune.report(
            {metric: math.nan, EPOCH_KEY: exc.epoch, FINAL_KEY: 1.0, FAIL_KEY: f"diverged: {exc}"}
        )
        return
    clean = {k: float(v) for k, v in metrics.items()}
    tune.report(
        {metric: clean.get(metric, math.nan), EPOCH_KEY: last, FINAL_KEY: 1.0, METRICS_KEY: clean}
    )


# --- classes built on Ray's (defined on first use, so importing this module stays light) -------

_LIVE: Callable[[Sequence[Any], dict[str, str]], None] | None = None  # the running search's hook


def _ray_classes() -> dict[str, type]:
    """``_Searcher`` and ``_Progress``; module attributes, so Tune's pickles find them."""
    if "_Searcher" in globals():
        return {"_Searcher": globals()["_Searcher"], "_Progress": globals()["_Progress"]}
    import optuna
    from optuna.trial import TrialState
    from ray.tune import Callback
    from ray.tune.search.optuna import OptunaSearch

    class _Searcher(OptunaSearch):
        """OptunaSearch that tells Optuna PRUNED/FAIL instead of COMPLETE with a partial value,
        reports intermediate values by epoch, and can start from earlier runs' trials."""

        def __init__(self, *, prior: Sequence[_Done] = (), **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._reported: dict[str, set[int]] = {}
            for done in prior:
                self._add_prior(done)

        def _add_prior(self, done: _Done) -> None:
            r = done.record
            state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}.get(
                r.state, TrialState.FAIL
            )
            if r.state not in ("COMPLETE", "PRUNED", "FAIL"):
                return
            inter = {}
            if r.state == "PRUNED" and r.pruned_epoch and done.last_value is not None:
                inter = {int(r.pruned_epoch): done.last_value}
            try:
                trial = optuna.trial.create_trial(
                    state=state,
                    value=r.value if state == TrialState.COMPLETE else None,
                    params=dict(r.params),
                    distributions=self._space,
                    intermediate_values=inter,
                )
                self._ot_study.add_trial(trial)
            except ValueError:  # outside today's space (the space file changed): skip
                pass

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            value, step = result.get(self.metric), result.get(EPOCH_KEY)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            if not _finite(value) or not _finite(step):
                return
            seen = self._reported.setdefault(trial_id, set())
            if int(step) not in seen:  # a trial re-run after a crash reports its epochs again
                seen.add(int(step))
                ot_trial.report(float(value), int(step))

        def on_trial_complete(
            self, trial_id: str, result: dict | None = None, error: bool = False
        ) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None or trial_id in self._completed_trials:
                return
            result = result or {}
            state, info = _classify(result, "ERROR" if error else "TERMINATED", None, self.metric)
            if state in ("RUNNING", "WAITING"):
                return  # cut off by an interruption: it runs again when the search resumes
            if state == "PRUNED":
                self.on_trial_result(trial_id, result)  # the epoch it was stopped at
            ot_state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}.get(
                state, TrialState.FAIL
            )
            self._ot_study.tell(
                ot_trial,
                info if state == "COMPLETE" else None,
                state=ot_state,
                skip_if_finished=True,
            )
            self._completed_trials.add(trial_id)

    class _Progress(Callback):
        """Feeds the running search's reporter; holds no state, so it pickles with the run."""

        def _notify(self, trials: Sequence[Any], ended: dict[str, str] | None = None) -> None:
            if _LIVE is not None:
                _LIVE(trials, ended or {})

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._notify(trials)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._notify(trials, {trial.trial_id: "TERMINATED"})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._notify(trials, {trial.trial_id: "ERROR"})

    for cls in (_Searcher, _Progress):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
    return {"_Searcher": _Searcher, "_Progress": _Progress}


def __getattr__(name: str) -> Any:  # PEP 562: unpickling a restored run finds the classes
    if name in ("_Searcher", "_Progress"):
        return _ray_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the cluster ------------------------------------------------------------------------------


def _address(opts: SearchOptions) -> str | None:
    """``--address``, else ``RAY_ADDRESS``; None (or "local") starts a local cluster."""
    address = (opts.address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if address in ("", "local") else address


def _check_reachable(address: str) -> str | None:
    """Fail fast on an address nothing listens on (Ray itself retries for minutes).

    Returns:
        The host, or None for ``auto`` (a cluster started on this machine).
    """
    if address == "auto":
        return None  # Ray looks for a cluster started here and fails at once without one
    if address.startswith("ray://"):
        raise SearchInputError(
            f"Ray Client addresses ({address}) are not supported: run dgkd-search on a node of "
            "the cluster with --address <head-ip>:6379 (the address `ray start --head` printed)"
        )
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise SearchInputError(
            f"Ray address {address!r} is not host:port; use the address `ray start --head` "
            "printed, e.g. --address 10.0.0.1:6379"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            reason = f"no answer in {CONNECT_TIMEOUT_S:g} s"
        raise SearchInputError(
            f"cannot reach the Ray cluster at {address} ({reason}); start it with "
            f"`ray start --head --port={port}` or fix --address / RAY_ADDRESS"
        ) from None
    return host


def _is_this_machine(host: str) -> bool:
    """Whether ``host`` is an address of this machine (only those can be bound to)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def _token_available() -> bool:
    home_token = Path.home() / ".ray" / "auth_token"
    return (
        bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
        or home_token.is_file()
    )


def _sync_auth_config() -> None:
    """Make Ray follow ``RAY_AUTH_MODE`` and the token variables as they are now (it reads them
    once, at import; the CLI imports it late, but a program may run several searches)."""
    want_token = os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"
    try:
        from ray._raylet import (
            AuthenticationMode,
            AuthenticationTokenLoader,
            Config,
            get_authentication_mode,
        )
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return
    if (get_authentication_mode() == AuthenticationMode.TOKEN) != want_token:
        Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()  # the token may have moved, too


def _connect(address: str | None, host: str | None, opts: SearchOptions) -> bool:
    """Connect to ``address`` or start a local cluster; True if this call initialized Ray.

    A cluster on this machine gets the token Ray keeps here, as Ray does for ``auto`` (since
    Ray 2.59 a local ``ray.init`` creates ``~/.ray/auth_token`` and a later ``ray start`` uses
    it); a remote one only with ``RAY_AUTH_MODE=token``, so no token leaves the machine unasked.
    """
    import ray

    if ray.is_initialized():
        return False
    from dgkd.objective import available_cores

    env = {k: os.environ[k] for k in ("DGKD_CACHE",) if os.environ.get(k)}
    common: dict[str, Any] = {
        "log_to_driver": not opts.quiet,
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": env} if env else None,
    }
    if address is None:
        _sync_auth_config()
        quiet_auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = quiet_auth.level
        quiet_auth.setLevel(logging.ERROR)  # "token authentication is enabled": a local cluster
        try:
            ray.init(address="local", num_cpus=available_cores(), include_dashboard=False, **common)
        finally:
            quiet_auth.setLevel(level)
        return True
    local = host is None or _is_this_machine(host)
    if "RAY_AUTH_MODE" not in os.environ and local and _token_available():
        os.environ["RAY_AUTH_MODE"] = "token"
    _sync_auth_config()
    try:
        ray.init(address=address, **common)
    except Exception as exc:
        reason = _error_text(str(exc) or type(exc).__name__)
        raise SearchInputError(
            f"cannot connect to the Ray cluster at {address}: {reason}; if it uses token "
            "authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN)"
        ) from None
    return True


def _trial_slots(opts: SearchOptions) -> int:
    """How many trials the cluster runs at once; raises when no node can hold one."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n.get("CPU", 0.0)) for n in nodes] or [0.0]
    gpus = [float(n.get("GPU", 0.0)) for n in nodes] or [0.0]
    need_cpu, need_gpu = opts.cpus_per_trial, opts.gpus_per_trial
    if need_cpu > max(cpus):
        raise SearchInputError(
            f"each trial asks for {need_cpu:g} CPUs (--cpus-per-trial) but the largest node of "
            f"the Ray cluster has {max(cpus):g}; lower --cpus-per-trial"
        )
    if need_gpu > max(gpus):
        have = f"{max(gpus):g} GPUs" if max(gpus) else "no GPU"
        raise SearchInputError(
            f"each trial asks for {need_gpu:g} GPUs (--gpus-per-trial) but the largest node of "
            f"the Ray cluster has {have}; lower --gpus-per-trial or add a GPU node"
        )
    slots = 0
    for cpu, gpu in zip(cpus, gpus, strict=True):
        n = math.floor(cpu / need_cpu + 1e-9)
        if need_gpu > 0:
            n = min(n, math.floor(gpu / need_gpu + 1e-9))
        slots += n
    if slots < 1:
        raise SearchInputError(
            f"no node of the Ray cluster has {need_cpu:g} CPUs and {need_gpu:g} GPUs at once; "
            "lower --cpus-per-trial or --gpus-per-trial"
        )
    return slots


# --- the search -------------------------------------------------------------------------------


def _signature(study: Study, opts: SearchOptions) -> dict[str, Any]:
    """What a resumed search must share with the stored one (else trials would not compare)."""
    from optuna.distributions import distribution_to_json

    searched = {p.name for p in study.space.searched()}
    cfg = study.check_overrides(opts.overrides).to_dict()
    return {
        "metric": study.metric,
        "direction": study.direction,
        "space": {k: distribution_to_json(d) for k, d in study.space.distributions().items()},
        "config": {k: v for k, v in cfg.items() if k not in searched and k not in _LOCAL_FIELDS},
    }


def _check_signature(root: Path, wanted: dict[str, Any]) -> None:
    stored = _read_json(root / SIGNATURE_FILE)
    if not stored:
        return
    for key in ("metric", "direction", "space", "config"):
        old, new = stored.get(key), wanted[key]
        if old == new:
            continue
        what = "search space" if key == "space" else f"{key} {old!r} (now {new!r})"
        if key == "config":
            diff = next(k for k in sorted(set(old or {}) | set(new)) if old.get(k) != new.get(k))
            what = f"config ({diff} {old.get(diff)!r}, now {new.get(diff)!r})"
        raise SearchInputError(
            f"{root} holds a search with another {what}; rerun with the same study and --set "
            "options, or add --fresh to move the old one aside"
        )


def _segment_name(study: Study, index: int) -> str:
    return study.name if index == 0 else f"{study.name}-{index + 1}"


def _scheduler(study: Study, epochs: int) -> Any:
    """The study's pruner as a Tune scheduler (see the module docstring)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.pruner == "none" or epochs < 2:
        return FIFOScheduler()
    rf, grace = (2, max(1, epochs // 4)) if study.pruner == "median" else (3, max(1, epochs // 8))
    return ASHAScheduler(
        time_attr=EPOCH_KEY,
        max_t=epochs,
        grace_period=min(grace, epochs),
        reduction_factor=rf,
        brackets=1,
    )


def _grid_size(study: Study) -> int | None:
    if study.sampler != "grid":
        return None
    return math.prod(len(v) for v in (study.space.grid() or {}).values())


def run(
    study: Study, opts: SearchOptions, *, log: Callable[[str], None] | None = None
) -> list[TrialRecord]:
    """Run ``study`` on Ray Tune until ``opts.trials`` trials have finished; every record.

    Raises:
        SearchInputError: an unreachable or refusing cluster, trials no node can hold, or stored
            results of the same study with another space, metric or configuration.
        KeyboardInterrupt: the run was interrupted (its state is saved; rerun to resume).
    """
    log = log or (lambda line: print(line, flush=True))
    root = Path(opts.out_dir).expanduser().resolve() / RESULTS_DIR
    epochs = study.check_overrides(opts.overrides).epochs
    signature = _signature(study, opts)
    _check_signature(root, signature)
    grid = _grid_size(study)
    total = min(opts.trials, grid) if grid else opts.trials
    address = _address(opts)
    host = _check_reachable(address) if address is not None else None

    import ray

    auth_mode = os.environ.get("RAY_AUTH_MODE")
    started = False
    try:
        started = _connect(address, host, opts)
        slots = _trial_slots(opts)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / SIGNATURE_FILE).is_file():
            from dgkd.io import atomic_write_json

            atomic_write_json(root / SIGNATURE_FILE, signature)
        where = f"Ray cluster {address}" if address else "a local Ray cluster"
        return _search(study, opts, root, total, epochs, slots, where, log)
    finally:
        if started:
            ray.shutdown()
        if auth_mode is None:  # set for a local cluster (by Ray or above): leave it as it was
            os.environ.pop("RAY_AUTH_MODE", None)


def _search(
    study: Study,
    opts: SearchOptions,
    root: Path,
    total: int,
    epochs: int,
    slots: int,
    where: str,
    log: Callable[[str], None],
) -> list[TrialRecord]:
    from ray import tune

    from dgkd.io import atomic_write_json
    from dgkd.search import move_aside

    global _LIVE
    classes = _ray_classes()
    threads = max(1, int(opts.cpus_per_trial))
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, study=study, overrides=dict(opts.overrides), threads=threads, cwd=os.getcwd()
        ),
        resources,
    )

    # Earlier runs: finished ones are read, an interrupted last one is resumed.
    planned = _read_json(root / RUNS_FILE)  # {run name: trials it was started for}
    runs: list[Path] = []
    while (root / _segment_name(study, len(runs))).is_dir():
        path = root / _segment_name(study, len(runs))
        if not tune.Tuner.can_restore(str(path)):
            moved = move_aside(path)  # never got going (no state saved): keep it, start again
            log(f"moved an unrestorable Ray run to {moved}")
            break
        runs.append(path)
    records: list[TrialRecord] = []
    prior: list[_Done] = []
    resume = None
    for i, path in enumerate(runs):
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
        recs, done = _grid_records(tuner.get_results(), study.metric, len(records))
        if i == len(runs) - 1 and _unfinished(recs, planned.get(path.name)):
            resume = (tuner, path, recs)
            break
        records += recs
        prior += done

    reporter = SearchReporter(study, opts, total=total, log=log)
    with reporter, _quiet_tune():
        note = f"{where}, {slots} trial(s) at a time"
        if resume is not None:
            note += f"; resuming the interrupted run {resume[1].name}"
        reporter.start(records + (resume[2] if resume else []), note=note)
        while True:
            if resume is not None:
                tuner, path, _ = resume
                resume = None
            else:
                left = total - len(records)
                if left <= 0:
                    break
                path = root / _segment_name(study, len(runs))
                if records:
                    log(f"adding {left} trial(s) as Ray run {path.name}")
                planned[path.name] = left
                atomic_write_json(root / RUNS_FILE, planned)
                tuner = _new_tuner(
                    study, opts, trainable, classes, path, left, epochs, slots, prior,
                    index=len(runs),
                )  # fmt: skip
                runs.append(path)
            first = len(records)

            def live(trials: Sequence[Any], ended: dict[str, str], before=tuple(records)) -> None:
                now = _trial_records(trials, study.metric, len(before), ended)
                reporter.update([*before, *now])

            _LIVE = live
            try:
                grid = tuner.fit()
            finally:
                _LIVE = None
            recs, done = _grid_records(grid, study.metric, first)
            records += recs
            prior += done
            reporter.update(records)
            if _unfinished(recs, planned.get(path.name)):
                _interrupted(study, opts, records, total, log)
    return records


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's classic reporter at verbosity 0 prints nothing (the newer one prints a header
    even then); Optuna's per-study log lines off. The reporter shows progress instead."""
    import optuna

    old_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    old_verbosity = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old_verbosity)
        if old_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old_env


def _interrupted(
    study: Study,
    opts: SearchOptions,
    records: list[TrialRecord],
    total: int,
    log: Callable[[str], None],
) -> None:
    """Tune stopped early on Ctrl-C (its state is saved): write what exists, then re-raise."""
    from dgkd.export import write_search_outputs

    write_search_outputs(study, records, opts.out_dir, overrides=opts.overrides)
    finished = sum(r.state in ("COMPLETE", "PRUNED", "FAIL") for r in records)
    log(f"interrupted at {finished}/{total} trials; rerun the same command to continue")
    raise KeyboardInterrupt


def _new_tuner(
    study: Study,
    opts: SearchOptions,
    trainable: Any,
    classes: dict[str, type],
    path: Path,
    samples: int,
    epochs: int,
    slots: int,
    prior: Sequence[_Done],
    *,
    index: int,
) -> Any:
    """A fresh Tune run of ``samples`` trials whose searcher knows every earlier trial."""
    from ray import tune

    from dgkd.backends.optuna_backend import make_sampler

    mode = "max" if study.direction == "maximize" else "min"
    seen = [r.record.params for r in prior]
    points = [dict(p) for p in study.enqueue if not any(_same(p, q) for q in seen)]
    searcher = classes["_Searcher"](
        space=study.space.distributions(),
        metric=study.metric,
        mode=mode,
        # A later run gets its own seed: a random sampler must not replay the first run's draws.
        sampler=make_sampler(study, seed=study.seed + index),
        points_to_evaluate=points or None,
        prior=prior,
    )
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            metric=study.metric,
            mode=mode,
            search_alg=searcher,
            scheduler=_scheduler(study, epochs),
            num_samples=samples,
            max_concurrent_trials=max(1, min(slots, samples)),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            callbacks=[classes["_Progress"]()],
            verbose=0,
        ),
    )


def _unfinished(records: Sequence[TrialRecord], planned: int | None) -> bool:
    """Whether a run stopped short: a trial left over, or fewer trials than it was started for."""
    if any(r.state not in ("COMPLETE", "PRUNED", "FAIL") for r in records):
        return True
    return planned is not None and len(records) < planned


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _same(point: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether ``params`` already evaluated the enqueued ``point``."""
    return all(k in params and params[k] == v for k, v in point.items())
