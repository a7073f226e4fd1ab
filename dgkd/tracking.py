"""Logging to MLflow (``--mlflow URI``): config, metrics by epoch and final metrics.

A search logs one MLflow run per trial, in an experiment named after the study: the trial's
configuration as parameters, every epoch's metrics at ``step=epoch``, the final metrics at the
last step, and the trial's state as the run's status and its ``dgkd.state`` tag. ``dgkd-train``
and ``dgkd-ablate`` log each finished run the same way (:func:`log_finished`). Works with any
tracking URI MLflow accepts (``sqlite:///runs/mlflow.db``, ``http://host:5000``, and file stores:
``./mlruns``, ``file:///...``, which MLflow 3 accepts only with ``MLFLOW_ALLOW_FILE_STORE=true``,
set here when the URI is one). MLflow's and alembic's own log lines are kept off the terminal
(warnings and errors still show).

MLflow is an optional extra (``pip install 'dgkd[mlflow]'``); this module is imported only when
``--mlflow`` is given, so nothing else pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from dgkd.config import TrainConfig

__all__ = [
    "log_cells",
    "MlflowRun",
    "check_mlflow",
    "ensure_experiment",
    "log_finished",
    "logged_tags",
    "mlflow_problem",
    "mlflow_run",
]

_STATUS = {"COMPLETE": "FINISHED", "KeyboardInterrupt": "KILLED"}  # the rest: FAILED


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def _client(uri: str) -> MlflowClient:
    if _is_file_store(uri):  # MLflow 3 refuses a file store unless this is set
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError(
            "--mlflow needs MLflow: pip install 'dgkd[mlflow]'", name="mlflow"
        ) from None
    for name in ("mlflow", "alembic"):  # e.g. "Creating initial MLflow database tables..."
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The experiment ``name``, created if missing (another process may create it at once)."""
    for _ in range(5):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(client.create_experiment(name))
        except Exception:  # created meanwhile by another worker: read it again
            time.sleep(0.2)
    raise RuntimeError(f"cannot create the MLflow experiment {name!r}")


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment ``name``'s id, created now if missing.

    Called once before parallel workers open their runs: MLflow's file store does not create an
    experiment atomically, so two workers creating it at the same moment make two experiments
    of one name and split the trials between them.
    """
    return _experiment_id(_client(uri), name)


def check_mlflow(uri: str) -> None:
    """Fail before the search starts when MLflow is missing or the URI is unusable.

    Raises:
        ImportError: MLflow is not installed.
        Exception: MLflow's own error for the URI.
    """
    _client(uri).search_experiments(max_results=1)


def mlflow_problem(uri: str) -> str | None:
    """What keeps ``--mlflow uri`` from working, as one line (None: nothing)."""
    from dgkd.errors import one_line

    try:
        check_mlflow(uri)
    except ImportError:
        return "--mlflow needs MLflow: pip install 'dgkd[mlflow]'"
    except Exception as exc:
        return f"--mlflow {uri}: {one_line(exc)}"
    return None


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class MlflowRun:
    """One trial's MLflow run: :meth:`log_epoch` after every epoch, :meth:`end` once."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._step = 0
        self._ended = False

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """The epoch's metrics at ``step=epoch`` (``epoch`` itself is the step, not a metric)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._step = epoch
        metrics = [
            Metric(k, v, now, epoch) for k, v in _finite(row).items() if k != "epoch"
        ]  # fmt: skip
        self.client.log_batch(self.run_id, metrics=metrics)

    def end(self, state: str, metrics: Mapping[str, Any]) -> None:
        """Final metrics (as ``final_<name>`` at the last step) and the run's status."""
        from mlflow.entities import Metric

        if self._ended:
            return
        self._ended = True
        now = int(time.time() * 1000)
        final = [Metric(f"final_{k}", v, now, self._step) for k, v in _finite(metrics).items()]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        self.client.set_tag(
            self.run_id, "dgkd.state", "PRUNED" if state == "TrialPruned" else state
        )
        self.client.set_terminated(self.run_id, status=_STATUS.get(state, "FAILED"))


@contextlib.contextmanager
def mlflow_run(
    uri: str, *, experiment: str, trial: int | str, config: TrainConfig
) -> Iterator[MlflowRun]:
    """An MLflow run for one trial, its config logged as parameters.

    Args:
        uri: The tracking URI.
        experiment: The experiment (the study's name), created on first use.
        trial: The trial's number or id, the run's name (``trial-<trial>``) and a tag.
        config: The trial's full configuration.
    """
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(
        _experiment_id(client, experiment),
        run_name=f"trial-{trial}",
        tags={"dgkd.study": experiment, "dgkd.trial": str(trial)},
    )
    run_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in config.to_dict().items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
        client.log_batch(run_id, params=params[i : i + 100])
    tracked = MlflowRun(client, run_id)
    try:
        yield tracked
    except BaseException as exc:
        tracked.end(type(exc).__name__, {})
        raise
    finally:
        tracked.end("FAIL", {})  # a no-op after end(): only a run left open is failed


def log_finished(
    uri: str,
    *,
    experiment: str,
    name: str,
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    state: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """One finished run as an MLflow run: ``params``, each row of ``history`` at its epoch,
    ``metrics`` as ``final_<name>`` and ``state`` (``COMPLETE``, or why it stopped) as its
    status and ``dgkd.state`` tag; returns the run's id.

    Args:
        uri: The tracking URI.
        experiment: The experiment, created on first use.
        name: The run's name.
        params: Its configuration.
        history: One row per epoch, each with its ``epoch``.
        metrics: Its final metrics (non-finite ones are left out).
        state: ``COMPLETE`` for a run that finished, else what ended it.
        tags: More tags.
    """
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(
        _experiment_id(client, experiment), run_name=name, tags=dict(tags or {})
    )
    run_id = run.info.run_id
    logged = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(logged), 100):  # MLflow takes at most 100 parameters a batch
        client.log_batch(run_id, params=logged[i : i + 100])
    tracked = MlflowRun(client, run_id)
    for row in history:
        tracked.log_epoch(int(row["epoch"]), row)
    tracked.end(state, metrics)
    return str(run_id)


def logged_tags(uri: str, experiment: str, tag: str) -> set[str]:
    """The values of ``tag`` over the runs of ``experiment`` (empty when it does not exist)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], max_results=50_000)
    return {r.data.tags[tag] for r in runs if tag in r.data.tags}


def log_cells(uri: str, experiment: str, cells: Sequence[Any]) -> int:
    """Each of an ablation's finished cells not yet in ``experiment``, as one MLflow run
    (tagged with its key, so a rerun logs only what is new); how many were logged."""
    done = logged_tags(uri, experiment, "dgkd.cell")
    logged = 0
    for cell in cells:
        if cell.key in done:
            continue
        log_finished(
            uri,
            experiment=experiment,
            name=cell.key,
            params=cell.config,
            history=cell.history,
            metrics=cell.metrics,
            state="COMPLETE" if cell.status == "ok" else cell.status,
            tags={"dgkd.command": "dgkd-ablate", "dgkd.cell": cell.key,
                  "dgkd.variant": cell.variant},
        )  # fmt: skip
        logged += 1
    return logged
