"""What every command shares: exit codes, one-line errors, the common options and a parser
whose own errors are one line too. Torch-free, so ``--help`` stays instant."""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable

from dgkd import __version__
from dgkd.config import ConfigError
from dgkd.errors import one_line

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "OneLineParser",
    "UsageError",
    "add_mlflow",
    "add_set",
    "add_version",
    "check_mlflow_uri",
    "run_guarded",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input detected by a command; exit code 2."""


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from dgkd.ablate import AblateError
    from dgkd.images import DatasetMissingError
    from dgkd.search import SearchInputError
    from dgkd.space import SpecError
    from dgkd.teacher import TeacherError

    return (
        UsageError,
        ConfigError,
        DatasetMissingError,
        TeacherError,
        AblateError,
        SpecError,
        SearchInputError,
    )


def run_guarded(prog: str, debug: bool, body: Callable[[], int]) -> int:
    """Run ``body`` and turn exceptions into one-line errors and exit codes."""
    try:
        return body()
    except KeyboardInterrupt as exc:  # its message, if any, says how to resume
        print(f"{prog}: interrupted" + (f"; {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        code = EXIT_USAGE if isinstance(exc, _bad_input_types()) else EXIT_FAILURE
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return code


def add_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def add_set(p: argparse.ArgumentParser, text: str) -> None:
    """The ``--set KEY=VALUE`` option every command shares (parsed by ``parse_overrides``)."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text
    )


MLFLOW_EXAMPLE = "sqlite:///runs/mlflow.db"


def add_mlflow(p: argparse.ArgumentParser, what: str) -> None:
    """The ``--mlflow URI`` option every command shares."""
    p.add_argument("--mlflow", metavar="URI", help=f"also log {what} to this MLflow tracking "
                   f"URI, e.g. {MLFLOW_EXAMPLE} (needs pip install 'dgkd[mlflow]')")  # fmt: skip


def check_mlflow_uri(uri: str) -> None:
    """Refuse ``--mlflow`` without MLflow installed, or with a URI it cannot use.

    Raises:
        UsageError: either; its one line says what to do.
    """
    from dgkd.tracking import mlflow_problem

    problem = mlflow_problem(uri)
    if problem is not None:
        raise UsageError(problem)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``prog: error: ...``) with exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")
