"""dgkd: hyperparameter search and ablation harness for Decoupled Gradient Knowledge Distillation.

The public entry points are :func:`dgkd.train.train` with :class:`dgkd.train.TrainConfig`, and the
pure losses in :mod:`dgkd.losses`. Submodules are imported on demand so that the command-line
tools start fast.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
