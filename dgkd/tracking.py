"""Trial logging to MLflow (``--mlflow URI``): config, metrics by epoch and final metrics.

One MLflow run per trial, in an experiment named after the study: the trial's configuration as
parameters, every epoch's metrics at ``step=epoch``, the final metrics at the last step, and the
trial's state as the run's status and its ``dgkd.state`` tag. Works with any tracking URI MLflow
accepts (``./mlruns``, ``file:///...``, ``sqlite:///mlflow.db``, ``http://host:5000``).

MLflow is an optional extra (``pip install 'dgkd[mlflow]'``); this module is imported only when
``--mlflow`` is given, so nothing else pays for it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from dgkd.config import TrainConfig

__all__ = ["MlflowRun", "check_mlflow", "mlflow_run"]

_STATUS = {"COMPLETE": "FINISHED", "KeyboardInterrupt": "KILLED"}  # the rest: FAILED


def _client(uri: str) -> MlflowClient:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError(
            "--mlflow needs MLflow: pip install 'dgkd[mlflow]'", name="mlflow"
        ) from None
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


def check_mlflow(uri: str) -> None:
    """Fail before the search starts when MLflow is missing or the URI is unusable.

    Raises:
        ImportError: MLflow is not installed.
        Exception: MLflow's own error for the URI.
    """
    _client(uri).search_experiments(max_results=1)


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
