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
    with pytest.raises(ConfigError, match="valid: auto, distributed, threads, sync, slurm"):
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


def test_auto_runs_few_tasks_here_and_more_on_worker_processes():
    from annotate.parallel import AUTO_IN_PROCESS_TASKS, resolve_scheduler

    assert resolve_scheduler("auto", AUTO_IN_PROCESS_TASKS) == "sync"
    assert resolve_scheduler("auto", AUTO_IN_PROCESS_TASKS + 1) == "distributed"
    for other in ("sync", "threads", "distributed"):
        assert resolve_scheduler(other, 1) == other and resolve_scheduler(other, 100) == other
    few = list(map_unordered(_pid, list(range(AUTO_IN_PROCESS_TASKS)), scheduler="auto", n_workers=2))
    assert [index for index, _ in few] == list(range(AUTO_IN_PROCESS_TASKS))  # in order, in this process
    assert {pid for _, pid in few} == {os.getpid()}
    many = list(map_unordered(_pid, list(range(AUTO_IN_PROCESS_TASKS + 3)), scheduler="auto", n_workers=2))
    assert sorted(index for index, _ in many) == list(range(AUTO_IN_PROCESS_TASKS + 3))
    assert os.getpid() not in {pid for _, pid in many}


def test_local_shards_under_auto_run_on_worker_processes(monkeypatch):
    import annotate.parallel
    from annotate.executors import LocalExecutor

    seen = []

    def record(fn, tasks, scheduler, n_workers=None):
        seen.append(scheduler)
        return iter(())

    monkeypatch.setattr(annotate.parallel, "map_unordered", record)
    LocalExecutor("auto").run(_square, [1, 2])  # two shards are two large tasks, not two small ones
    LocalExecutor("sync").run(_square, [1, 2])
    assert seen == ["distributed", "sync"]


def test_worker_processes_fit_in_the_memory_the_process_may_use(monkeypatch):
    import distributed.system

    from annotate.parallel import OWN_BYTES, WORKER_BYTES, default_workers, process_workers, resolve_scheduler

    monkeypatch.setattr(distributed.system, "MEMORY_LIMIT", OWN_BYTES + 2 * WORKER_BYTES)
    assert process_workers() == min(2, default_workers())
    monkeypatch.setattr(distributed.system, "MEMORY_LIMIT", 2**30)  # a SLURM job of --mem=1G
    assert process_workers() == 1
    assert resolve_scheduler("auto", 100) == "sync"  # one worker would only add its start
    assert resolve_scheduler("auto", 100, n_workers=2) == "distributed"  # --workers says
    assert resolve_scheduler("distributed", 100) == "distributed"
    monkeypatch.setattr(distributed.system, "MEMORY_LIMIT", 2**40)
    assert process_workers() == default_workers()


def _worker_settings(_item) -> dict:
    import dask
    from distributed import get_worker

    return {"pid": os.getpid(), "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            "profile": dask.config.get("distributed.worker.profile.enabled"),
            "tick": dask.config.get("distributed.admin.tick.interval"),
            "callbacks": sorted(get_worker().periodic_callbacks)}


def test_the_local_cluster_runs_without_the_dashboards_bookkeeping():
    """The project's LocalCluster has no dashboard, so its workers run without Dask's statistical
    profiler and with slower monitor ticks (QUIET_CLUSTER), keep the memory monitor that guards
    their memory limit, and keep glibc's own MALLOC_TRIM_THRESHOLD_; Dask's configuration outside
    is left as it was."""
    import dask
    import distributed  # noqa: F401  (registers its configuration's defaults)

    from annotate.parallel import QUIET_CLUSTER, shared_cluster

    before = {key: dask.config.get(key) for key in QUIET_CLUSTER}
    with shared_cluster("distributed", n_workers=2) as shared:
        seen = [value for _, value in map_unordered(_worker_settings, list(range(4)), address=shared)]
    assert {row["pid"] for row in seen} and os.getpid() not in {row["pid"] for row in seen}
    for row in seen:
        assert row["malloc_trim"] is None and row["profile"] is False and row["tick"] == "500ms"
        assert "profile" not in row["callbacks"] and "memory_monitor" in row["callbacks"]
    assert {key: dask.config.get(key) for key in QUIET_CLUSTER} == before
