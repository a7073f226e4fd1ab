"""dgkd.parallel: populations over worker processes give each member its own train() result."""

from __future__ import annotations

from dgkd.config import TrainConfig
from dgkd.parallel import PopulationPool
from dgkd.train import train_population


def _numbers(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "duration_s"}  # all but the wall time


def test_pool_results_equal_train_population_in_order(tiny: TrainConfig) -> None:
    # two teachers: two populations, one per worker; a diverging member reports its error
    tiny = tiny.replace(teacher_lr=tiny.lr)  # the teacher's lr fixed: a student's lr is its own
    cfgs = [tiny.replace(teacher_seed=t, seed=s) for s in (0, 1) for t in (0, 1)]
    cfgs.append(tiny.replace(teacher_seed=1, seed=2, lr=1e30))
    expected = train_population(cfgs)
    with PopulationPool(2) as pool:
        got = pool(cfgs)
        again = pool(cfgs[:2])  # the same processes serve a second call
    assert [r.config for r in got] == cfgs
    for mine, ref in zip(got[:-1], expected[:-1], strict=True):
        assert mine.error is None and _numbers(mine.metrics) == _numbers(ref.metrics)
    assert got[-1].metrics == {} and (got[-1].error or "").startswith("loss became nan")
    assert [_numbers(r.metrics) for r in again] == [_numbers(r.metrics) for r in expected[:2]]
    with PopulationPool(1) as here:  # one worker: in this process, the same numbers
        mine = [_numbers(r.metrics) for r in here(cfgs[:2])]
        assert mine == [_numbers(r.metrics) for r in expected[:2]]
