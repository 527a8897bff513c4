"""map_unordered: every task's result exactly once, under every scheduler, with a bounded window."""

import os
from pathlib import Path

import pytest

from annotate.errors import ConfigError
from annotate.parallel import map_unordered


def _square(x):
    return x * x


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes", "distributed"])
def test_every_result_once(scheduler):
    results = list(map_unordered(_square, list(range(23)), scheduler=scheduler, n_workers=2))
    assert sorted(index for index, _ in results) == list(range(23))
    assert all(value == index * index for index, value in results)


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: auto, distributed, processes, threads, sync, slurm"):
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


def test_auto_runs_one_task_here_a_few_on_forked_processes_and_more_on_a_cluster():
    from annotate.parallel import AUTO_FORKED_TASKS, resolve_scheduler

    assert resolve_scheduler("auto", 1, n_workers=2) == "sync"
    assert resolve_scheduler("auto", 2, n_workers=2) == "processes"
    assert resolve_scheduler("auto", AUTO_FORKED_TASKS, n_workers=2) == "processes"
    assert resolve_scheduler("auto", AUTO_FORKED_TASKS + 1, n_workers=2) == "distributed"
    for other in ("sync", "threads", "processes", "distributed"):
        assert resolve_scheduler(other, 1) == other and resolve_scheduler(other, 100) == other
    one = list(map_unordered(_pid, [0], scheduler="auto", n_workers=2))
    assert one == [(0, os.getpid())]
    few = list(map_unordered(_parent_pid, list(range(5)), scheduler="auto", n_workers=2))
    assert sorted(index for index, _ in few) == list(range(5))
    assert len({pid for _, (pid, _) in few}) == 2 and os.getpid() not in {pid for _, (pid, _) in few}
    assert {parent for _, (_, parent) in few} == {os.getpid()}  # forked from this process


def test_auto_without_fork_runs_a_few_tasks_here_and_more_on_a_cluster(monkeypatch):
    import annotate.parallel
    from annotate.parallel import AUTO_IN_PROCESS_TASKS, resolve_scheduler

    monkeypatch.setattr(annotate.parallel, "can_fork", lambda: False)
    assert resolve_scheduler("auto", 1, n_workers=2) == "sync"
    assert resolve_scheduler("auto", AUTO_IN_PROCESS_TASKS, n_workers=2) == "sync"
    assert resolve_scheduler("auto", AUTO_IN_PROCESS_TASKS + 1, n_workers=2) == "distributed"
    with pytest.raises(ConfigError, match="--scheduler processes forks worker processes, which only Linux"):
        list(map_unordered(_square, [1, 2], scheduler="processes"))
    few = list(map_unordered(_pid, list(range(AUTO_IN_PROCESS_TASKS)), scheduler="auto", n_workers=2))
    assert few == [(index, os.getpid()) for index in range(AUTO_IN_PROCESS_TASKS)]  # in order, here
    many = list(map_unordered(_pid, list(range(AUTO_IN_PROCESS_TASKS + 3)), scheduler="auto", n_workers=2))
    assert sorted(index for index, _ in many) == list(range(AUTO_IN_PROCESS_TASKS + 3))
    assert os.getpid() not in {pid for _, pid in many}


def _parent_pid(_item) -> tuple[int, int]:
    import time

    time.sleep(0.05)  # long enough that both workers get tasks
    return os.getpid(), os.getppid()


_PARENT_STATE: list = []


def _inherited(_item) -> tuple[list, object]:
    import signal

    return list(_PARENT_STATE), signal.getsignal(signal.SIGINT)


def test_forked_workers_inherit_this_process_and_leave_ctrl_c_to_it():
    """What this process built before the map (the fit's prepared templates, in a run) is there
    in the workers without being sent, and a Ctrl-C reaches only this process."""
    import signal

    _PARENT_STATE[:] = ["built here"]
    try:
        seen = [value for _, value in map_unordered(_inherited, [0, 1, 2], scheduler="processes", n_workers=2)]
    finally:
        _PARENT_STATE.clear()
    assert seen == [(["built here"], signal.SIG_IGN)] * 3
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def _fails_on_two(item):
    if item == 2:
        raise ValueError(f"task {item} failed")
    return item


def _dies_on_one(item):
    import signal

    if item == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does
    return item


def test_a_forked_task_error_reaches_the_caller_and_a_killed_worker_says_so():
    with pytest.raises(ValueError, match="task 2 failed"):
        list(map_unordered(_fails_on_two, list(range(5)), scheduler="processes", n_workers=2))
    from annotate.errors import AnnotateError

    with pytest.raises(AnnotateError, match=r"a worker process ended before its task was done .*run again to resume"):
        list(map_unordered(_dies_on_one, list(range(4)), scheduler="processes", n_workers=2))


def _first_quick_then_stuck(item):
    import time

    if item == 0:
        return os.getpid()
    time.sleep(600)  # a read that never returns (a hung file system)


def test_a_caller_that_stops_ends_the_forked_workers_at_once_even_stuck_ones():
    """Ctrl-C (or an error) in the caller while workers are busy: the workers, which ignore
    Ctrl-C, are ended at once rather than waited for (waiting took up to two tasks per worker,
    and for ever where one was stuck)."""
    import time

    results = map_unordered(_first_quick_then_stuck, list(range(6)), scheduler="processes", n_workers=2)
    _, worker = next(results)
    start = time.perf_counter()
    results.close()
    assert time.perf_counter() - start < 10
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_an_interrupt_while_workers_are_forked_is_raised_once_they_are():
    """An interrupt that lands while a pool forks its workers is held until the fork is done,
    then raised as usual, so that no forked worker is left unknown to the pool."""
    import signal

    from annotate.parallel import _signals_deferred

    with pytest.raises(KeyboardInterrupt):
        with _signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached = True  # not interrupted inside
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


_ORPHAN_SCRIPT = """
import os, sys, time
from annotate.parallel import map_unordered

def task(item):
    with open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w"):
        pass
    time.sleep(600)

for _ in map_unordered(task, list(range(4)), scheduler="processes", n_workers=2):
    pass
"""


def test_forked_workers_die_with_a_killed_parent(tmp_path):
    """A run killed by SIGKILL (the OOM killer) takes its forked workers with it: left behind, they
    would wait for tasks for ever and hold the output's lock, which they inherited."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path)])
    for _ in range(200):
        workers = [int(path.name.split("-")[1]) for path in tmp_path.glob("worker-*")]
        if len(workers) == 2:
            break
        time.sleep(0.05)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    alive = set(workers)
    for _ in range(100):
        for pid in list(alive):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                state = "gone"
            if state in ("gone", "Z", "X"):  # a zombie is dead, waiting for whoever adopted it
                alive.discard(pid)
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, "forked workers outlived their killed parent"


def _record_start(item) -> int:
    folder, index = item
    Path(folder, f"task-{index}").touch()
    return index


def test_forked_workers_keep_a_bounded_window_however_slowly_results_are_taken(tmp_path):
    """At most WINDOW_PER_WORKER tasks per worker are handed out before the caller has taken a
    result, and one more per result taken: a caller that stops after the first result leaves the
    rest of the items unread."""
    from annotate.parallel import WINDOW_PER_WORKER

    results = map_unordered(_record_start, [(str(tmp_path), i) for i in range(50)], scheduler="processes",
                            n_workers=2)
    next(results)
    results.close()  # the caller stops: the pool is shut down, its queued tasks cancelled
    ran = sorted(int(path.name.split("-")[1]) for path in tmp_path.iterdir())
    assert 1 <= len(ran) <= 2 * WINDOW_PER_WORKER + 1 and max(ran) <= 2 * WINDOW_PER_WORKER, ran


def test_local_shards_under_auto_run_on_worker_processes(monkeypatch):
    import annotate.parallel
    from annotate.executors import LocalExecutor

    seen = []

    def record(fn, tasks, scheduler, n_workers=None):
        seen.append(scheduler)
        return iter(())

    monkeypatch.setattr(annotate.parallel, "map_unordered", record)
    LocalExecutor("auto").run(_square, [1, 2])  # two shards are two large tasks, not two small ones
    LocalExecutor("processes").run(_square, [1, 2])  # shards run the model: not on forked processes
    LocalExecutor("sync").run(_square, [1, 2])
    assert seen == ["distributed", "distributed", "sync"]


def test_worker_processes_fit_in_the_memory_the_process_may_use(monkeypatch):
    import annotate.parallel
    from annotate.parallel import OWN_BYTES, WORKER_BYTES, default_workers, process_workers, resolve_scheduler

    monkeypatch.setattr(annotate.parallel, "memory_limit", lambda: OWN_BYTES + 2 * WORKER_BYTES)
    assert process_workers() == min(2, default_workers())
    monkeypatch.setattr(annotate.parallel, "memory_limit", lambda: 2**30)  # a SLURM job of --mem=1G
    assert process_workers() == 1
    assert resolve_scheduler("auto", 100) == "sync"  # one worker would only add its start
    assert resolve_scheduler("auto", 100, n_workers=2) == "distributed"  # --workers says
    assert resolve_scheduler("auto", 10, n_workers=2) == "processes"
    assert resolve_scheduler("distributed", 100) == "distributed"
    monkeypatch.setattr(annotate.parallel, "memory_limit", lambda: 2**40)
    assert process_workers() == default_workers()


def test_the_memory_limit_is_the_least_of_the_machine_the_cgroups_and_rlimit(tmp_path, monkeypatch):
    """A SLURM job's cgroup lies below the hierarchy's root: its limit is read where the process's
    own cgroup is (v2: memory.max; v1: the memory controller's memory.limit_in_bytes), and every
    cgroup above it counts too; 'max' (v2) is no limit."""
    import resource

    import annotate.parallel
    from annotate.parallel import _cgroup_memory_files, memory_limit

    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / "job_7" / "step_0").mkdir(parents=True)
    (v2 / "memory.max").write_text("max\n")
    (v2 / "system.slice" / "job_7" / "memory.max").write_text(f"{3 * 2**30}\n")
    (v2 / "system.slice" / "job_7" / "step_0" / "memory.max").write_text("max\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/job_7/step_0\n")
    files = _cgroup_memory_files(str(proc), str(v2))
    assert files[0] == str(v2 / "system.slice" / "job_7" / "step_0" / "memory.max") and files[-1] == str(v2 / "memory.max")
    monkeypatch.setattr(annotate.parallel, "_cgroup_memory_files", lambda: files)
    rss = resource.getrlimit(resource.RLIMIT_RSS)[1]  # -1 (RLIM_INFINITY) where none is set
    assert memory_limit() == min(machine, 3 * 2**30, rss if rss > 0 else machine)

    v1 = tmp_path / "v1"
    (v1 / "memory" / "slurm" / "uid_0" / "job_9").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # none
    (v1 / "memory" / "slurm" / "uid_0" / "job_9" / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    proc.write_text("11:cpuset:/slurm/uid_0/job_9\n4:memory:/slurm/uid_0/job_9\n1:name=systemd:/x\n")
    files = _cgroup_memory_files(str(proc), str(v1))
    assert files == [str(v1 / "memory" / "slurm" / "uid_0" / "job_9" / "memory.limit_in_bytes"),
                     str(v1 / "memory" / "slurm" / "uid_0" / "memory.limit_in_bytes"),
                     str(v1 / "memory" / "slurm" / "memory.limit_in_bytes"),
                     str(v1 / "memory" / "memory.limit_in_bytes")]
    monkeypatch.setattr(annotate.parallel, "_cgroup_memory_files", lambda: files)
    assert memory_limit() == min(machine, 2**30, rss if rss > 0 else machine)
    monkeypatch.undo()
    assert 0 < memory_limit() <= machine  # this machine's own files


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
