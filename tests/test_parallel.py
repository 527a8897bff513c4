"""map_unordered: every task's result exactly once, under every scheduler, with a bounded window."""

import os

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


def _pid(_item) -> int:
    return os.getpid()


def test_a_shared_cluster_serves_every_step_and_starts_only_when_needed():
    from annotate.parallel import SharedCluster, map_unordered, shared_cluster

    with shared_cluster("distributed", n_workers=2) as shared:
        assert isinstance(shared, SharedCluster) and not shared.started
        assert [pid for _, pid in map_unordered(_pid, [0], address=shared)] == [os.getpid()]  # one task: here
        assert not shared.started
        first = {pid for _, pid in map_unordered(_pid, list(range(8)), address=shared)}
        second = {pid for _, pid in map_unordered(_pid, list(range(8)), address=shared)}
        assert shared.started and os.getpid() not in first
        assert second <= first  # the same worker processes, not a new cluster
        assert [pid for _, pid in map_unordered(_pid, [0], address=shared)][0] in first  # up: used
    assert not shared.started
    with shared_cluster("sync") as none:
        assert none is None
