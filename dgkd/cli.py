"""Command-line entry points: parsing and printing only, ``main(argv=None) -> int`` each.

Exit codes: 0 done, 1 runtime failure, 2 bad input. Errors print one line that says what to fix;
``--debug`` shows the traceback instead. Heavy modules are imported after parsing, so ``--help``
is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence

__all__ = ["train_main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input detected by a command; exit code 2."""


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from dgkd.images import DatasetMissingError
    from dgkd.teacher import TeacherError
    from dgkd.train import ConfigError

    return (UsageError, ConfigError, DatasetMissingError, TeacherError)


def run_guarded(prog: str, debug: bool, body: Callable[[], int]) -> int:
    """Run ``body`` and turn exceptions into one-line errors and exit codes."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        code = EXIT_USAGE if isinstance(exc, _bad_input_types()) else EXIT_FAILURE
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dgkd-train",
        description="Train one student by distillation and print its final metrics.",
        epilog="Config fields for --set: see TrainConfig in dgkd/train.py or the README. "
        "Example: dgkd-train --method dgkd --epsilon 6 --set seed=1 --set epochs=20",
    )
    p.add_argument("--method", choices=("ce", "kd", "dkd", "dgkd"), help="default: dgkd")
    p.add_argument("--alpha", type=float, help="TCKD weight (default 1.0)")
    p.add_argument("--beta", type=float, help="NCKD weight (default 8.0)")
    p.add_argument("--epsilon", type=float, help="gradient-term weight (default 6.0; 0 = DKD)")
    p.add_argument("--temperature", type=float, help="distillation temperature (default 4.0)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, repeatable (e.g. --set student=mlp --set epochs=20)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``dgkd-train``: one training run with the final metrics as a table or JSON."""
    args = _train_parser().parse_args(argv)

    def body() -> int:
        from dgkd.train import TrainConfig, parse_overrides, train

        changes = parse_overrides(args.overrides)
        for name in ("method", "alpha", "beta", "epsilon", "temperature"):
            if getattr(args, name) is not None:
                changes[name] = getattr(args, name)
        cfg = TrainConfig().replace(**changes)
        result = train(cfg, progress=not args.json and sys.stderr.isatty())
        if args.json:
            print(json.dumps({"config": cfg.to_dict(), "metrics": _jsonable(result.metrics)}))
        else:
            _print_metrics(cfg, result.metrics)
        return EXIT_OK

    return run_guarded("dgkd-train", args.debug, body)


def _jsonable(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a missing value becomes null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _print_metrics(cfg, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{cfg.method} {cfg.student}"
    if cfg.method in ("dkd", "dgkd"):
        title += f"  alpha={cfg.alpha:g} beta={cfg.beta:g} T={cfg.temperature:g}"
        title += f" epsilon={cfg.epsilon:g}" if cfg.method == "dgkd" else ""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
