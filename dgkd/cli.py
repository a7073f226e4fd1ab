"""Command-line entry points: parsing and printing only, ``main(argv=None) -> int`` each.

Exit codes: 0 done, 1 runtime failure, 2 bad input. Errors print one line that says what to fix;
``--debug`` shows the traceback instead. Heavy modules are imported after parsing, so ``--help``
is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dgkd.cliparts import (
    EXIT_OK,
    OneLineParser,
    UsageError,
    add_mlflow,
    add_set,
    add_version,
    check_mlflow_uri,
    run_guarded,
)
from dgkd.config import METHODS, TrainConfig, parse_overrides
from dgkd.runtime import available_cores, parse_workers

__all__ = ["ablate_main", "search_main", "train_main"]


def _train_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="dgkd-train",
        description="Train one student by distillation and print its final metrics.",
        epilog="Config fields for --set: docs/configuration.md (TrainConfig in dgkd/config.py). "
        "Example: dgkd-train --method dgkd --epsilon 6 --set seed=1 --set epochs=20",
    )
    d = TrainConfig()  # the defaults, written once there
    p.add_argument(
        "--method",
        help=f"{', '.join(METHODS)}, kd_ls, or module:ATTR for a method of your own "
        f"(docs/methods.md); default: {d.method}",
    )
    p.add_argument("--alpha", type=float, help=f"TCKD weight (default {d.alpha:g})")
    p.add_argument("--beta", type=float, help=f"NCKD weight (default {d.beta:g})")
    p.add_argument(
        "--epsilon", type=float, help=f"gradient-term weight (default {d.epsilon:g}; 0 = DKD)"
    )
    p.add_argument(
        "--temperature", type=float, help=f"distillation temperature (default {d.temperature:g})"
    )
    add_set(p, "override any config field, repeatable (e.g. --set student=mlp --set epochs=20)")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="start from a search's best.json (reruns its best trial: all its seeds as one "
        "population, its value their mean) or a config.json of --out; other options change it",
    )
    p.add_argument("--seed", type=int, metavar="N", help="train this seed only (with a "
                   "best.json: one of its trial's seeds)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="save config.json, metrics.json, history.csv "
                   "and student.pt there (several seeds: in seed_<s>/ each); rerun an "
                   "interrupted run to resume it")  # fmt: skip
    add_mlflow(p, "the run (config, metrics by epoch, final metrics)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_version(p)
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``dgkd-train``: one training run with the final metrics as a table or JSON."""
    try:
        args = _train_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one line (2)
        return int(exc.code or 0)

    def body() -> int:
        from dgkd.trainrun import rerun

        changes = parse_overrides(args.overrides)
        for name in ("method", "alpha", "beta", "epsilon", "temperature", "seed"):
            if getattr(args, name) is not None:
                changes[name] = getattr(args, name)
        if args.mlflow is not None:
            check_mlflow_uri(args.mlflow)
        return rerun(
            args.config,
            changes,
            out=args.out,
            as_json=args.json,
            mlflow=args.mlflow,
            progress=not args.json and sys.stderr.isatty(),
        )

    return run_guarded("dgkd-train", args.debug, body)


def _ablate_parser() -> argparse.ArgumentParser:
    from dgkd.ablate.options import (  # torch-free: --help stays fast
        BACKENDS,
        OUT_DIR,
        SEEDS,
        TEACHERS,
    )
    from dgkd.ablate.variants import REFERENCE, VARIANTS

    names = ", ".join(f"{v} (always included)" if v == REFERENCE else v for v in VARIANTS)
    p = OneLineParser(
        prog="dgkd-ablate",
        description="Run DGKD ablation variants on paired seeds and export tables with "
        "bootstrap CIs and Holm-corrected paired tests.",
        epilog=f"Variants: {names}. Results: <out>/ablate/<name>/ (runs.csv, summary.csv, "
        "summary.md, config.json, ablation.png). "
        "Suites: <out>/ablate/<suite>/<setup>/ each, and suite.csv, suite.md, suite.png. "
        "Examples: dgkd-ablate --variants no_grad_term,minimize_mse; "
        "dgkd-ablate --suite mnist1d_pairs --variants no_grad_term",
    )
    p.add_argument(
        "--variants",
        default="all",
        metavar="A,B,...",
        help=f"comma-separated variants, or 'all' (default: all); {REFERENCE} is always included",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--study", metavar="NAME", help="use the study's base config (no search)")
    src.add_argument(
        "--from-study", metavar="NAME", help="use the best finished trial of the study's search"
    )
    src.add_argument(
        "--suite",
        metavar="NAME",
        help="run the ablation on every setup of a suite (a name from --list, or a .toml file) "
        "and aggregate across them: <out>/ablate/<suite>/ (suite.csv, suite.md, suite.png)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage of --from-study (default: the journal <out>/<study>/journal.log)",
    )
    p.add_argument(
        "--seeds",
        dest="n_seeds",
        type=int,
        default=SEEDS,
        metavar="N",
        help=f"seeds 0..N-1 per variant and teacher (default {SEEDS})",
    )
    p.add_argument(
        "--teachers",
        type=int,
        metavar="N",
        help="teacher seeds per variant, teacher_seed..teacher_seed+N-1 (teacher_seed is 0 "
        f"unless --set); every seed runs under each; CIs resample teachers, then seeds "
        f"(default {TEACHERS}, or 1 with a teacher_checkpoint; 1 = one teacher, one-level "
        "statistics)",
    )
    p.add_argument("--workers", type=parse_workers, metavar="N|auto", help="parallel processes "
                   f"(local; default auto: the usable cores, {available_cores()} here) or "
                   "populations in flight (ray; default auto: all)")  # fmt: skip
    p.add_argument(
        "--backend", choices=BACKENDS, default=BACKENDS[0], help=f"default: {BACKENDS[0]}"
    )
    p.add_argument(
        "--address",
        metavar="RAY_ADDRESS",
        help="Ray cluster to join (--backend ray; default: RAY_ADDRESS or a new local cluster; "
        "'auto' joins the one 'ray start' started on this machine)",
    )
    add_set(p, "override a field of the base config, repeatable (e.g. --set epochs=20)")
    p.add_argument(
        "--out", default=OUT_DIR, metavar="DIR", help=f"results root (default: {OUT_DIR})"
    )
    p.add_argument(
        "--name",
        help="results directory under <out>/ablate/ (default: 'default', the study's name, "
        "or '<study>-best' with --from-study)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="move an existing directory of that name aside"
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--list", action="store_true", help="list the packaged suites and studies")
    add_mlflow(p, "every run (config, metrics by epoch, final metrics) once it is finished")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_version(p)
    return p


def ablate_main(argv: Sequence[str] | None = None) -> int:
    """``dgkd-ablate``: paired ablation of DGKD's variants, summarized into tables."""
    try:
        args = _ablate_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one line (2)
        return int(exc.code or 0)
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        from dgkd.ablate import (
            AblationOptions,
            describe_base,
            parse_variants,
            preflight,
            print_summary,
            resolve_base,
            run_ablation,
        )
        from dgkd.config import parse_overrides

        if args.list:
            from dgkd.suite.command import list_sources

            list_sources()
            return EXIT_OK
        tty = sys.stderr.isatty()
        opts = AblationOptions(
            variants=parse_variants(args.variants),
            n_seeds=args.n_seeds,
            teachers=args.teachers,
            workers=args.workers,
            backend=args.backend,
            address=args.address,
            out_dir=Path(args.out),
            name=args.name,
            fresh=args.fresh,
            progress=tty and not args.quiet,
            log=None if tty or args.quiet else (lambda line: print(line, file=sys.stderr)),
            argv=tuple(argv),
        )
        if args.suite:
            from dgkd.suite.command import suite_command

            return suite_command(args, opts, parse_overrides(args.overrides))
        base = resolve_base(
            study=args.study,
            from_study=args.from_study,
            storage=args.storage,
            overrides=parse_overrides(args.overrides),
            out_dir=args.out,
        )
        if args.mlflow is not None:
            check_mlflow_uri(args.mlflow)
        plan = preflight(base, opts)  # every bad input is refused before anything is printed
        print(describe_base(base), file=sys.stderr)
        print(
            f"{len(plan.variants)} variants x {len(plan.teacher_seeds)} teacher(s) x "
            f"{len(plan.seeds)} seeds: "
            f"{len(plan.pending)} runs to train, {len(plan.finished)} finished in {plan.directory}",
            file=sys.stderr,
        )
        result = run_ablation(base, opts)
        if result.moved_to is not None:
            print(f"moved the old results to {result.moved_to}", file=sys.stderr)
        print_summary(result)
        print(
            f"{result.ran} runs trained, {result.reused} reused; results in {result.directory}",
            file=sys.stderr,
        )
        if args.mlflow is not None:
            from dgkd.tracking import log_cells

            logged = log_cells(args.mlflow, f"dgkd-ablate/{result.name}", result.cells)
            print(f"{logged} runs logged to MLflow {args.mlflow}", file=sys.stderr)
        return EXIT_OK

    return run_guarded("dgkd-ablate", args.debug, body)


def _search_parser() -> argparse.ArgumentParser:
    from dgkd.search.records import option_default  # light: no torch, no search library
    from dgkd.search.registry import backend_names

    backend = option_default("backend")
    backends = " or ".join(f"{n} (default)" if n == backend else n for n in backend_names())
    p = OneLineParser(
        prog="dgkd-search",
        description="Search a study's hyperparameters with Optuna (default) or Ray Tune. "
        "Rerunning the same command continues an interrupted search up to --trials.",
        epilog="Outputs in <out>/<study>/: trials.csv, best.json, importance.csv, "
        "students/trial_<n>/seed_<s>.pt, best_student.pt, history/trial_<n>.csv, "
        "optimization_history.png, learning_curves.png, "
        "accuracy_vs_<param>.png (one parameter) or param_importances.png and slice.png (more), "
        "trial_seeds.csv, confirm.csv and verdict.md (the confirm stage), "
        "and the Optuna storage: journal.log unless --storage (either backend). "
        "Example: dgkd-search --study eps_sweep --trials 200",
    )
    p.add_argument("--study", metavar="NAME|FILE", help="a packaged study name or a .toml file")
    add = p.add_argument
    # fmt: off
    add("--trials", type=int, metavar="N",
        help="total trials across workers and restarts (default: the study's)")
    add("--workers", type=parse_workers, metavar="N|auto", help="processes sharing the storage "
        f"(optuna backend; default auto: the usable cores, {option_default('workers')} here)")
    add("--backend", metavar="NAME", help=backends)
    add("--storage", metavar="URL", help="Optuna RDB URL (e.g. postgresql://...) or journal "
        "file path (default: <out>/<study>/journal.log); a Ray search records its trials there")
    add("--address", metavar="RAY_ADDRESS", help="Ray cluster to join (ray backend; "
        "default: RAY_ADDRESS or a new local cluster)")
    add("--cpus-per-trial", type=float, metavar="N",
        help=f"ray backend (default {option_default('cpus_per_trial'):g})")
    add("--gpus-per-trial", type=float, metavar="F", help="ray backend, fractions allowed "
        f"(default {option_default('gpus_per_trial'):g})")
    add("--seeds", dest="n_seeds", type=int, metavar="K", help="seeds per trial, trained as one "
        "population; the trial's value is their mean (default: the study's seeds)")
    add("--batch", type=int, metavar="N", help="ask the sampler for N trials at once and train "
        "them as one population (optuna backend; default: the study's batch)")
    add("--confirm-top", type=int, metavar="K", help="retrain the K best configs and the "
        "baseline on fresh seeds and state a verdict; 0 = off (default: the study's [confirm])")
    add("--confirm-seeds", dest="n_confirm_seeds", type=int, metavar="N",
        help="fresh seeds per config in the confirm stage (default: the study's [confirm])")
    add("--confirm-teachers", type=int, metavar="N", help="teacher seeds the confirm seeds run "
        "under, from the base's teacher_seed; the search ranks under the first one only "
        "(default: the study's [confirm] teachers, else 1)")
    # fmt: on
    p.add_argument("--out", default="runs", metavar="DIR", help="results root (default: runs)")
    p.add_argument("--fresh", action="store_true", help="start over: move <out>/<study> (and "
                   "the study in --storage) aside as <name>.old-<timestamp>")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="plain log lines, no live display")
    add_set(p, "override a field of the study's base config, repeatable (e.g. --set epochs=20)")
    add_mlflow(p, "every trial (config, metrics by epoch, final metrics)")
    p.add_argument("--dashboard", type=int, nargs="?", const=8080, metavar="PORT",
                   help="instead of searching, serve optuna-dashboard for the study's storage "
                   "on http://127.0.0.1:PORT (default 8080) until Ctrl-C (needs pip install "
                   "'dgkd[dashboard]')")  # fmt: skip
    p.add_argument("--list", action="store_true", help="list the packaged studies and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_version(p)
    return p


def search_main(argv: Sequence[str] | None = None) -> int:
    """``dgkd-search``: run or continue a study's search and summarize the best trials."""
    try:
        args = _search_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one line (2)
        return int(exc.code or 0)

    def body() -> int:
        from dgkd.study import available_studies, load_study

        if args.list:
            for name in available_studies():
                study = load_study(name)
                print(f"{name}: {' '.join(study.description.split())}")
            return EXIT_OK
        if not args.study:
            raise UsageError("--study is required (a name from --list, or a .toml file)")
        from dgkd.config import parse_overrides
        from dgkd.search import TrialState, make_options, print_summary, run_search

        study = load_study(args.study)
        if args.dashboard is not None:
            return _dashboard(study, args)
        opts = make_options(
            study,
            trials=args.trials,
            out=args.out,
            workers=args.workers,
            backend=args.backend,
            storage=args.storage,
            address=args.address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            fresh=args.fresh,
            quiet=args.quiet,
            overrides=parse_overrides(args.overrides),
            mlflow=args.mlflow,
            n_seeds=args.n_seeds,
            batch=args.batch,
            confirm_top=args.confirm_top,
            n_confirm_seeds=args.n_confirm_seeds,
            confirm_teachers=args.confirm_teachers,
        )
        records = run_search(study, opts)
        print_summary(study, records, opts)
        failed = [r for r in records if r.state == TrialState.FAIL]
        if failed and not any(r.state == TrialState.COMPLETE for r in records):
            first = failed[0]
            raise RuntimeError(f"no trial completed; trial {first.number}: {first.fail_reason}")
        return EXIT_OK

    return run_guarded("dgkd-search", args.debug, body)


def _dashboard(study, args: argparse.Namespace) -> int:
    from dgkd.search.dashboard import serve_dashboard
    from dgkd.search.records import SearchOptions

    if not 1 <= args.dashboard <= 65535:
        raise UsageError(f"--dashboard takes a port in 1..65535, got {args.dashboard}")
    out_dir = Path(args.out).expanduser() / study.name
    serve_dashboard(study, SearchOptions(1, out_dir, storage=args.storage), args.dashboard)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
