"""map_unordered: every task's result exactly once, under every scheduler, with a bounded window."""

import pytest

from annotate.errors import ConfigError
from annotate.parallel import map_unordered


def _square(x):
    return x * x


@pytest.mark.parametrize("scheduler", ["sync", "threads", "distributed"])
def test_every_result_once(scheduler):
    results = list(map_unordered(_square, list(range(23)), scheduler=scheduler, n_workers=2))
    assert sorted(index for index, _ in results) == list(range(23))
    assert all(value == index * index for index, value in results)


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: distributed, threads, sync, slurm"):
        list(map_unordered(_square, [1], scheduler="dask"))


def test_slurm_scheduler_needs_a_profile():
    with pytest.raises(ConfigError, match="--scheduler slurm needs --profile"):
        list(map_unordered(_square, [1, 2], scheduler="slurm"))
