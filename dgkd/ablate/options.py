"""How to run an ablation (the ``dgkd-ablate`` flags), with every default written here once.

Torch-free, so the command line can show these defaults in ``--help`` without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dgkd.ablate.errors import AblateError
from dgkd.ablate.variants import VARIANTS
from dgkd.runtime import available_cores

__all__ = ["BACKENDS", "OUT_DIR", "POPULATION", "SEEDS", "TEACHERS", "AblationOptions"]

SEEDS = 10  # seeds per variant: enough for a paired CI and a Holm-corrected p worth reading
# Teacher seeds per variant: a claim about a method must hold across the teachers it distills
# from; three is the fewest that estimate the spread between teachers at all.
TEACHERS = 3
# Most cells trained as one population, and a kill loses at most the populations in flight. On
# one idle core a default (width-24) cell costs least in a population of 4 to 8 (0.69 of a cell
# alone; python -m benchmarks.population), but with two workers on two cores 16 was as fast
# (`--variants all --seeds 10`: 72 s at 16, 76 s at 8).
POPULATION = 16
BACKENDS = ("local", "ray")  # local: this process or a process pool; ray: Ray tasks
OUT_DIR = "runs"  # results root; an ablation writes to <OUT_DIR>/ablate/<name>/


@dataclass(frozen=True)
class AblationOptions:
    """How to run an ablation, independent of the base config; validated on creation.

    Raises:
        AblateError: a bad count, an unknown backend, or an address without the Ray backend.
    """

    variants: tuple[str, ...] = tuple(VARIANTS)
    n_seeds: int = SEEDS  # cells run on seeds 0 .. n_seeds-1
    # under teacher seeds base.teacher_seed .. + teachers-1; None = TEACHERS, or 1 when the
    # base loads one teacher from a teacher_checkpoint
    teachers: int | None = None
    # local: processes, None = auto (one per usable core); ray: populations in flight, None =
    # all of them (the cluster runs as many as it has CPUs for)
    workers: int | None = None
    population: int = POPULATION  # most cells trained together (one population)
    backend: str = BACKENDS[0]
    address: str | None = None  # Ray cluster address; None = RAY_ADDRESS or a new local cluster
    out_dir: Path = Path(OUT_DIR)  # results go to <out_dir>/ablate/<name>/
    name: str | None = None  # None = BaseConfig.default_name
    # the results directory itself instead of <out_dir>/ablate/<name>/ (a suite's setup:
    # <out_dir>/ablate/<suite>/<setup>/, named "<suite>/<setup>")
    directory: Path | None = None
    fresh: bool = False  # move an existing directory of this name aside first
    progress: bool = False  # rich progress bar on stderr
    log: Callable[[str], None] | None = None  # plain progress lines (when not a terminal)
    argv: tuple[str, ...] = ()  # the command line, recorded in config.json

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise AblateError(
                f"--seeds must be >= 1 ({SEEDS} or more for a CI worth reading), got {self.n_seeds}"
            )
        if self.teachers is not None and self.teachers < 1:
            raise AblateError(
                f"--teachers must be >= 1 ({TEACHERS} or more to see the spread between "
                f"teachers), got {self.teachers}"
            )
        if self.population < 1:
            raise AblateError(f"population must be >= 1, got {self.population}")
        if self.workers is not None and self.workers < 1:
            raise AblateError(f"--workers must be >= 1, got {self.workers}")
        if self.backend not in BACKENDS:
            raise AblateError(f"--backend must be {' or '.join(BACKENDS)}, got {self.backend!r}")
        if self.address and self.backend != "ray":
            raise AblateError("--address is for --backend ray; add --backend ray or drop it")
        if self.workers is None and self.backend == "local":  # frozen: set once, resolved
            object.__setattr__(self, "workers", available_cores())
