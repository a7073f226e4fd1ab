"""``dgkd-search --study NAME --dashboard [PORT]``: optuna-dashboard for a search's storage,
served on 127.0.0.1 (this machine only) until Ctrl-C.

optuna-dashboard is an optional extra (``pip install 'dgkd[dashboard]'``), imported only here.
It shows every trial of the study: parameters, values, the metric by epoch (intermediate values),
and the final metrics and each seed's metric (user attributes) to sort and plot by.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dgkd.search.common import SearchInputError
from dgkd.search.optuna.storage import driver_url, is_url, journal_path, redact
from dgkd.search.records import SearchOptions

if TYPE_CHECKING:
    from dgkd.study import Study

__all__ = ["DEFAULT_PORT", "HOST", "dashboard_app", "serve_dashboard"]

HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def dashboard_app(study: Study, opts: SearchOptions) -> tuple[Any, str]:
    """optuna-dashboard's WSGI application for the study's storage, and where that is.

    Raises:
        SearchInputError: optuna-dashboard is not installed, or the search has no storage yet.
    """
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise SearchInputError(
            "--dashboard needs optuna-dashboard: pip install 'dgkd[dashboard]'"
        ) from None
    import optuna

    if is_url(opts.storage):
        url = driver_url(str(opts.storage))
        return wsgi(url), redact(url)
    path = journal_path(opts)
    if not path.is_file():
        raise SearchInputError(
            f"no search of {study.name} in {path}; run 'dgkd-search --study {study.name}' "
            "first (with the same --out or --storage)"
        )
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return wsgi(optuna.storages.JournalStorage(backend)), str(path)


def serve_dashboard(
    study: Study,
    opts: SearchOptions,
    port: int = DEFAULT_PORT,
    *,
    say: Callable[[str], None] = print,
) -> None:
    """Serve optuna-dashboard for the study on ``HOST:port`` until Ctrl-C, then return.

    Raises:
        SearchInputError: as :func:`dashboard_app`, or the port is taken.
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    app, where = dashboard_app(study, opts)

    class Quiet(WSGIRequestHandler):  # no line per request on the terminal
        def log_message(self, format: str, *args: Any) -> None:
            pass

    try:
        server = make_server(HOST, port, app, WSGIServer, handler_class=Quiet)
    except OSError as exc:
        raise SearchInputError(
            f"--dashboard {port}: cannot listen on {HOST}:{port} ({exc.strerror or exc}); "
            "give another port"
        ) from None
    say(f"optuna-dashboard for {study.name} ({where}): http://{HOST}:{port}/  (Ctrl-C to stop)")
    sys.stdout.flush()
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            say("optuna-dashboard stopped")
