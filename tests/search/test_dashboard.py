"""``dgkd-search --dashboard [PORT]`` (``make dashboard STUDY=...``): optuna-dashboard for a
search's journal on 127.0.0.1, its API listing the study and every trial with its metrics.
optuna-dashboard is an optional extra (the dev extra installs it): skipped without it, except
under CI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dgkd.cli import search_main

if os.environ.get("CI") == "true":
    import optuna_dashboard  # noqa: F401  # under CI the extra is installed
else:
    pytest.importorskip("optuna_dashboard")

MAIN = "import sys; from dgkd.cli import search_main; sys.exit(search_main(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, deadline: float, proc: subprocess.Popen[str]) -> Any:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no dashboard at {url}: {proc.communicate()}") from None
            time.sleep(0.3)


def test_dashboard_lists_the_study_and_its_trials(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--study", "smoke"]
    assert search_main([*argv, "--quiet", "--trials", "2", "--workers", "1"]) == 0
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", MAIN, *argv, "--dashboard", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        studies = _get(f"http://127.0.0.1:{port}/api/studies", deadline, proc)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["smoke"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", deadline,
                      proc)  # fmt: skip
        trials = detail["trials"]
        assert [t["number"] for t in trials] == [0, 1]
        assert all(t["state"] == "Complete" for t in trials)
        attrs = {a["key"] for a in trials[0]["user_attrs"]}
        assert {"test_acc", "val_acc", "seed0_val_acc", "seed3_val_acc"} <= attrs
        assert max(len(a["value"]) for a in trials[0]["user_attrs"]) < 40  # no JSON blobs
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out.splitlines()[0] == (
        f"optuna-dashboard for smoke ({tmp_path / 'smoke' / 'journal.log'}): "
        f"http://127.0.0.1:{port}/  (Ctrl-C to stop)"
    )
    assert "GET /api" not in out + err  # no line per request


def test_dashboard_of_a_study_never_searched_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search_main(["--out", str(tmp_path), "--study", "smoke", "--dashboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no search of smoke" in err[0], err
    assert "dgkd-search --study smoke' first" in err[0]
