"""The Ray Tune backend: the only place that imports ``ray``.

:mod:`.cluster` connects to a cluster (reused by the ablation), :mod:`.results` turns Tune's
results into records, :mod:`.searcher` builds the Tune run (Optuna's sampler, ASHA),
:mod:`.backend` puts them together as :class:`RayBackend`, :mod:`.logs` keeps Ray's own messages
off the terminal. Ray itself is imported on first use.
"""

from dgkd.search.ray.backend import RayBackend

__all__ = ["RayBackend"]
