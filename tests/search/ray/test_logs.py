"""Tests for dgkd.search.ray.logs that need no cluster: what goes to ray.log, what stays put."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

from dgkd.search.ray.logs import LOG_FILE, ray_log


def _ray_code(name: str) -> dict:
    """Functions defined as if in Ray's module ``name`` (a warning raised there is Ray's)."""
    scope: dict = {"__name__": name}
    source = (
        "import warnings\n"
        "def warn(text):\n    warnings.warn(text, UserWarning, stacklevel=2)\n"
        "def call(fn):\n    return fn()\n"
    )
    exec(compile(source, f"<{name}>", "exec"), scope)
    return scope


def test_ray_messages_go_to_the_file_and_everything_is_put_back(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import ray._private.worker as ray_worker  # Ray's handler on its logger is in `before`

    loggers = [logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train")]
    before = [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers]
    tune = _ray_code("ray.tune.fake")
    path = tmp_path / "run" / LOG_FILE  # its folder is made with the file

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        hook = warnings.showwarning
        with ray_log(path) as note:
            note("search smoke on a local Ray cluster")
            loggers[1].warning("Experiment state snapshotting has been triggered")
            loggers[2].debug("not at this level")
            tune["warn"]("a warning raised in Tune")
            # Ray's code on the stack: a warning of the code it calls is Ray's too.
            tune["call"](lambda: warnings.warn("from a callee of Tune", UserWarning, stacklevel=1))
            warnings.warn("our own warning", UserWarning, stacklevel=1)  # not Ray's: as before
            # A line a worker printed, as Ray forwards it (log_to_driver).
            batch = {"lines": ["Exception ignored in: ..."], "pid": 7, "is_err": True}
            ray_worker.print_worker_logs({**batch, "actor_name": "_trial"}, sys.stderr)
        assert warnings.showwarning is hook

    assert [str(w.message) for w in shown] == ["our own warning"]
    assert capfd.readouterr() == ("", "")
    text = path.read_text()
    assert "INFO dgkd: search smoke on a local Ray cluster" in text
    assert "WARNING ray.tune: Experiment state snapshotting" in text
    assert "a warning raised in Tune" in text and "from a callee of Tune" in text
    assert "WARNING _trial pid=7: Exception ignored in: ..." in text
    assert "not at this level" not in text and "our own" not in text
    assert [(list(lg.handlers), lg.propagate, lg.level) for lg in loggers] == before

    with ray_log(path) as note:  # a second search appends
        note("second")
    assert path.read_text().startswith(text) and path.read_text().endswith("second\n")
