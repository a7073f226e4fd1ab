"""Search backends: ``optuna_backend`` (default) and ``ray_backend``.

Each exposes ``run(study, opts) -> list[TrialRecord]`` over the same study, space and trial body
(:func:`dgkd.objective.run_trial`), and is the only module that imports its library. Import the
submodule you need; this package imports neither.
"""

__all__: list[str] = []
