"""The Ray Tune backend: the same study, space and trial body on a local or remote Ray cluster.

Cluster. See :mod:`.cluster`: ``--address`` (or ``RAY_ADDRESS``) joins a running cluster, else a
local one is started and stopped again. Each trial asks for ``--cpus-per-trial`` CPUs and
``--gpus-per-trial`` GPUs; a trial no node can hold would wait forever, so that is an error.

Resume and extend. Results live under ``<out>/<study>/ray/``. An interrupted run is resumed with
``Tuner.restore`` (unfinished and errored trials run again). Tune fixes a run's number of trials,
so raising ``--trials`` later adds a further run (``<study>-2``, ...) whose searcher is given
every earlier trial first; records are numbered across runs in creation order. How trials are
picked and stopped is in :mod:`.searcher`, how results become records in :mod:`.results`.
Ray's and Tune's own messages go to ``<out>/<study>/ray.log``, not the terminal (:mod:`.logs`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dgkd.io import atomic_write_bytes, atomic_write_json, move_aside
from dgkd.runtime import set_threads
from dgkd.search.base import SearchBackend
from dgkd.search.common import (
    Log,
    base_config,
    check_signature,
    print_line,
    signature,
    stop_interrupted,
    trial_seeds,
    trial_total,
)
from dgkd.search.export import jsonable
from dgkd.search.optuna.mirror import StorageMirror
from dgkd.search.optuna.storage import check_storage, inspect_command
from dgkd.search.ray.cluster import connect, resolve_address
from dgkd.search.ray.logs import LOG_FILE, ray_log
from dgkd.search.ray.results import (
    EPOCH_KEY,
    FAIL_KEY,
    FINAL_KEY,
    METRICS_KEY,
    ROW_KEY,
    SEEDS_KEY,
    STUDENT_FILE,
    Done,
    grid_records,
    trial_records,
)
from dgkd.search.ray.searcher import new_tuner, quiet_tune, set_live
from dgkd.search.records import (
    FINAL_STATES,
    SearchInputError,
    SearchOptions,
    TrialRecord,
    TrialState,
)
from dgkd.search.reporter import SearchReporter
from dgkd.search.trial import TrialTracking, train_trial
from dgkd.search.trialfiles import save_student, seed_file, student_path, write_history

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["RESULTS_DIR", "RayBackend"]

RESULTS_DIR = "ray"  # under runs/<study>/
SIGNATURE_FILE = "study.json"  # what a resumed search must share with the stored one
RUNS_FILE = "runs.json"  # {Tune run name: trials it was started for}


class RayBackend(SearchBackend):
    """Tune with Optuna's sampler and ASHA, on a Ray cluster (``--address``) or a local one."""

    name: ClassVar[str] = "ray"
    uses_cluster: ClassVar[bool] = True

    def run(
        self, study: Study, opts: SearchOptions, *, log: Log | None = None
    ) -> list[TrialRecord]:
        """Run ``study`` on Ray Tune until ``opts.trials`` trials have finished; every record.

        Raises:
            SearchInputError: an unreachable or refusing cluster, trials no node can hold, or
                stored results of the same study with another space, metric or configuration.
            KeyboardInterrupt: the run was interrupted (its state is saved; rerun to resume).
        """
        log = log or print_line
        root = Path(opts.out_dir).expanduser().resolve() / RESULTS_DIR
        wanted = signature(study, opts)
        check_signature(_read_json(root / SIGNATURE_FILE), wanted, holder=f"{root} holds a search")
        address = resolve_address(opts.address)
        where = f"Ray cluster {address}" if address else "a local Ray cluster"
        # From the cluster's start to its stop: workers' last lines come in as it stops.
        with ray_log(root.parent / LOG_FILE) as note, connect(address):
            slots = _trial_slots(opts)
            mirror = StorageMirror(study, opts, log)  # once the cluster can run the trials
            root.mkdir(parents=True, exist_ok=True)
            if not (root / SIGNATURE_FILE).is_file():
                atomic_write_json(root / SIGNATURE_FILE, wanted)
            note(f"search {study.name} on {where}, {slots} trial(s) at a time")
            return _search(study, opts, root, slots, where, log, mirror)

    def preflight(self, study: Study, opts: SearchOptions) -> None:
        """The Optuna storage its trials are recorded in: reachable, not another search's."""
        check_storage(study, opts)

    def inspect_command(self, study: Study, opts: SearchOptions) -> str | None:
        """``optuna trials ...`` for the storage the trials are recorded in."""
        return inspect_command(study, opts)


# --- the trial (runs on a Ray worker) ---------------------------------------------------------


def _trial(
    params: dict[str, Any],
    *,
    study: Study,
    overrides: dict[str, Any],
    threads: int,
    cwd: str,
    mlflow: str | None = None,
    seeds: tuple[int, ...] = (),
) -> None:
    """Train one trial and report to Tune: every epoch but the last, then the final metrics
    with the last epoch's row and, when it completed, its student as the trial's checkpoint.

    The trial's state goes with the report of every epoch it is saved at (``checkpoint_every``)
    as a Tune checkpoint; a trial retried after a crash or resumed by ``Tuner.restore`` starts
    from the last one (``tune.get_checkpoint``) and ends as an uninterrupted one.
    """
    from ray import tune

    from dgkd.checkpoint import Checkpoint

    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the config mean what they mean to the user
    set_threads(threads)
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # per checkpoint
    cfg = study.config(dict(params), overrides)
    metric = study.metric
    last_row: dict[str, Any] = {}

    def on_epoch(epoch: int, row: dict[str, float], last: bool) -> None:
        last_row.clear()
        last_row.update(row)
        if not last:
            result = {**row, EPOCH_KEY: epoch, ROW_KEY: json.dumps(jsonable(row))}
            saved = state.saved_epoch == epoch  # written just before this report
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp) if saved else None)

    track = TrialTracking(mlflow, study.name, tune.get_context().get_trial_id() or "?")
    with tempfile.TemporaryDirectory(prefix="dgkd-state-") as tmp:
        restored = tune.get_checkpoint()
        if restored is not None:
            restored.to_directory(tmp)
        state = Checkpoint(Path(tmp), replay=False)  # Tune keeps the reports made before it
        outcome = train_trial(
            cfg, metric=metric, on_epoch=on_epoch, seeds=seeds, track=track, checkpoint=state
        )
    final: dict[str, Any] = {
        **last_row,
        metric: math.nan if outcome.value is None else outcome.value,
        EPOCH_KEY: cfg.epochs if outcome.fail_epoch is None else outcome.fail_epoch,
        FINAL_KEY: 1.0,
    }
    if last_row:
        final[ROW_KEY] = json.dumps(jsonable(last_row))
    if outcome.metrics:
        final[METRICS_KEY] = {k: float(v) for k, v in outcome.metrics.items()}
    if outcome.seed_metrics:  # JSON: Tune would flatten a list of dicts
        final[SEEDS_KEY] = json.dumps(
            {"seeds": list(outcome.seeds), "metrics": [jsonable(m) for m in outcome.seed_metrics]}
        )
    if outcome.state == TrialState.FAIL:
        final[FAIL_KEY] = outcome.fail_reason
    if outcome.model is None:
        tune.report(final)
        return
    with tempfile.TemporaryDirectory(prefix="dgkd-student-") as tmp:
        save_student(Path(tmp) / STUDENT_FILE, outcome.model)
        for seed, model in zip(outcome.seeds, outcome.models, strict=True):
            save_student(Path(tmp) / seed_file(seed), model)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


# --- the cluster's capacity -------------------------------------------------------------------


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


def _segment_name(study: Study, index: int) -> str:
    return study.name if index == 0 else f"{study.name}-{index + 1}"


def _keep(
    study: Study, opts: SearchOptions, records: Sequence[TrialRecord], done: Sequence[Done]
) -> None:
    """Every trial's history under ``history/``, every complete one's students under
    ``students/`` (the exporter copies the best one's first seed to ``best_student.pt``)."""
    for d in done:
        if d.history:
            write_history(opts.out_dir, d.record.number, d.history)
        seeds = d.record.seeds or (0,)
        if d.record.state != TrialState.COMPLETE or d.student is None:
            continue
        for seed in seeds:
            source = d.student.parent / seed_file(seed)
            if not source.is_file() and seed == seeds[0]:  # a checkpoint of before: one seed
                source = d.student
            if source.is_file():
                atomic_write_bytes(student_path(opts.out_dir, d.record.number, seed),
                                   source.read_bytes())  # fmt: skip


def _search(
    study: Study,
    opts: SearchOptions,
    root: Path,
    slots: int,
    where: str,
    log: Log,
    mirror: StorageMirror,
) -> list[TrialRecord]:
    from ray import tune

    total = trial_total(study, opts)
    epochs = base_config(study, opts).epochs
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            study=study,
            overrides=dict(opts.overrides),
            threads=max(1, int(opts.cpus_per_trial)),
            cwd=os.getcwd(),
            mlflow=opts.mlflow,
            seeds=tuple(trial_seeds(study, opts)),
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
    prior: list[Done] = []
    resume = None
    for i, path in enumerate(runs):
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
        recs, done = grid_records(tuner.get_results(), study.metric, len(records))
        if i == len(runs) - 1 and _unfinished(recs, planned.get(path.name)):
            resume = (tuner, path, recs)
            break
        records += recs
        prior += done
    _keep(study, opts, records, prior)
    mirror.update(records)

    reporter = SearchReporter(study, opts, total=total, log=log)
    with reporter, quiet_tune():
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
                tuner = new_tuner(
                    study, opts, trainable, path,
                    samples=left, epochs=epochs, slots=slots, prior=prior, index=len(runs),
                )  # fmt: skip
                runs.append(path)
            first = len(records)

            def live(
                trials: Sequence[Any],
                ended: dict[str, str],
                before: tuple[TrialRecord, ...] = tuple(records),
            ) -> None:
                now = trial_records(trials, study.metric, len(before), ended)
                reporter.update([*before, *now])

            set_live(live)
            try:
                grid = tuner.fit()
            finally:
                set_live(None)
            recs, done = grid_records(grid, study.metric, first)
            records += recs
            prior += done
            _keep(study, opts, records, prior)
            _drop_states(grid, errored=not _unfinished(recs, planned.get(path.name)))
            mirror.update(records)
            reporter.update(records)
            if _unfinished(recs, planned.get(path.name)):
                stop_interrupted(study, opts, records, total, log)
                raise KeyboardInterrupt
    return records


def _drop_states(grid: Any, *, errored: bool) -> None:
    """Delete the trial states (not the students) in the checkpoints of trials that ended, and
    of errored ones when ``errored`` (a run that ended: no restore will re-run them)."""
    from dgkd.config import STATE_GLOB  # not dgkd.checkpoint's: that imports torch

    for result in grid:
        metrics = result.metrics or {}
        ended = bool(metrics.get(FINAL_KEY) or metrics.get("done"))
        if ended or (errored and result.error is not None):
            for path in Path(result.path).glob(f"checkpoint_*/{STATE_GLOB}"):
                path.unlink(missing_ok=True)


def _unfinished(records: Sequence[TrialRecord], planned: int | None) -> bool:
    """Whether a run stopped short: a trial left over, or fewer trials than it was started for."""
    if any(r.state not in FINAL_STATES for r in records):
        return True
    return planned is not None and len(records) < planned


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
