"""Run independent tasks: 'auto' (the commands' default: in this process for one task, on worker
processes forked from this one for a few, a Dask distributed LocalCluster for more), a
LocalCluster, Dask workers started as SLURM jobs (dask-jobqueue), forked processes, dask's
threads, or in-process.

Tasks receive plain data (file names, row ranges, settings dicts), never open files or models.
This is the only module that imports dask.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

SCHEDULERS = ("auto", "distributed", "processes", "threads", "sync", "slurm")
TASK_ROWS = 256             # rows per task of ingest, fit and render
AUTO_IN_PROCESS_TASKS = 4   # 'auto' where processes cannot be forked: this many tasks or fewer run in this process
AUTO_FORKED_TASKS = 40      # 'auto': from 2 to this many tasks on forked processes, more on a LocalCluster (README, "Benchmarks")
WORKER_BYTES = 768 * 2**20  # a worker process's room: the fit's bases and training stars and one task (peak ~0.5 GB)
OWN_BYTES = 2**30           # the command's own process beside its workers: the model, predictions, write-back
WINDOW_PER_WORKER = 2
WORKERS_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class SlurmWorkers:
    """The scheduler 'slurm' with what it needs: its Dask workers are started as SLURM jobs asking
    for what `profile` (annotate.slurm.Profile) says, one job per worker of `cpus_per_task` cores,
    with their `annotate-dask-<job>.out/.err` logs in `log_directory` (created; default: the
    current one). The CLI builds it from --scheduler slurm --profile P; it travels wherever a
    scheduler name does (settings, ingest, fit, render)."""

    profile: object
    log_directory: str | None = None

    def __str__(self) -> str:
        return "slurm"


def slurm_cluster(profile, n_workers: int, start: bool = True, log_directory=None):
    """A dask-jobqueue SLURMCluster of `n_workers` one-process worker jobs, started (or, with
    start=False, only set up: its `job_script()` is what each worker job would run). Each job's
    output goes to `log_directory` (created) when one is given."""
    import sys

    from dask_jobqueue import SLURMCluster

    extra = [f"--{flag}={value}" for flag, value in (("qos", profile.qos), ("constraint", profile.constraint),
                                                     ("gpus-per-node", profile.gpus_per_node), ("gres", profile.gres))
             if value]
    extra += [f"--{key.replace('_', '-')}={value}" for key, value in profile.additional.items()]
    cluster = SLURMCluster(
        queue=profile.partition, account=profile.account, cores=profile.cpus_per_task, processes=1,
        memory=f"{int((profile.mem_gb or 2) * 1024)}MB", walltime=f"{profile.time_min // 60:02d}:{profile.time_min % 60:02d}:00",
        job_name="annotate-dask", job_extra_directives=extra, job_script_prologue=list(profile.setup),
        worker_extra_args=worker_lifetime_args(profile.time_min), python=sys.executable,
        scheduler_options={"dashboard_address": None}, silence_logs=logging.CRITICAL,
        log_directory=None if log_directory is None else str(os.path.abspath(log_directory)))
    # workers leave before their job's time limit (staggered, handing their data over) and the
    # adaptive cluster submits jobs to replace them
    if start:
        cluster.adapt(minimum_jobs=n_workers, maximum_jobs=n_workers)
    return cluster


def worker_lifetime_args(time_min: int) -> list[str]:
    """`--lifetime` / `--lifetime-stagger` for a worker in a job of `time_min` minutes. A worker
    leaves at lifetime ± stagger after it starts; even the latest leaves a margin (10 % of the
    limit, at least 3 min: the job's setup lines, the worker's start and its hand-over) before
    SLURM's limit. The stagger, a tenth of what remains, keeps them from leaving all at once."""
    seconds = time_min * 60
    usable = max(66, seconds - max(180, seconds // 10))
    stagger = max(1, usable // 11)
    return ["--lifetime", f"{max(60, usable - stagger)}s", "--lifetime-stagger", f"{stagger}s"]


def _wait_for_slurm_workers(client) -> None:
    from .errors import AnnotateError

    try:
        client.wait_for_workers(1, timeout=WORKERS_START_TIMEOUT_S)
    except TimeoutError:
        raise AnnotateError(f"no Dask worker job started on SLURM within {WORKERS_START_TIMEOUT_S} s "
                            "(see squeue: are the jobs pending on the partition or resources of the profile?)") from None


def resolve_scheduler(scheduler, n_tasks: int, n_workers: int | None = None, forkable: bool = True):
    """The scheduler that 'auto' stands for with `n_tasks` tasks: 'sync' (this process) for one
    task and where fewer than two workers (`n_workers`, default `process_workers()`) would run;
    'processes' (workers forked from this process: no start-up imports, see `_map_forked`) for
    up to AUTO_FORKED_TASKS tasks; 'distributed' (a LocalCluster, whose start of 0.7-2.3 s is
    then small beside the run, and whose workers' memory Dask watches) for more. Where this
    platform cannot fork safely (not Linux), or the tasks may not run in a forked process
    (`forkable` False: they use torch, which may have run here), 'sync' up to
    AUTO_IN_PROCESS_TASKS and 'distributed' above; 'processes' is then 'distributed'. Any other
    scheduler as given."""
    if scheduler == "processes" and not forkable:
        return "distributed"
    if isinstance(scheduler, str) and scheduler == "auto":
        if n_tasks <= 1 or (n_workers or process_workers()) < 2:
            return "sync"
        if forkable and can_fork():
            return "processes" if n_tasks <= AUTO_FORKED_TASKS else "distributed"
        return "sync" if n_tasks <= AUTO_IN_PROCESS_TASKS else "distributed"
    return scheduler


def can_fork() -> bool:
    """Whether worker processes may be forked from this one: on Linux (macOS's system libraries
    are not safe to use in a forked child; Windows has no fork)."""
    import multiprocessing
    import sys

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def default_workers() -> int:
    """This process's cores (its CPU affinity: a SLURM job's allocation), at most 8."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def process_workers() -> int:
    """Worker processes (forked, or a LocalCluster's) when --workers does not say:
    `default_workers()`, but no more than fit in the memory this process may use
    (`memory_limit()`) with OWN_BYTES left for this process and WORKER_BYTES for each worker; at
    least 1. Dask splits that memory evenly between a LocalCluster's workers and stops a worker
    that outgrows its share: in a SLURM job of 1 GB, two workers of 512 MB each were stopped in
    turn while fitting until the shard failed."""
    return max(1, min(default_workers(), int((memory_limit() - OWN_BYTES) // WORKER_BYTES)))


def memory_limit() -> int:
    """Bytes this process may use: the machine's memory, or less where a memory cgroup of this
    process (v1 or v2: a container's, a SLURM job's; its own and those above it) or RLIMIT_RSS
    (which SLURM sets from --mem) says less. What Dask reads for its workers' limit
    (distributed.system.MEMORY_LIMIT), without importing distributed (0.5 s, which a run on
    forked workers does not otherwise need), and also where the job's cgroup is not the root
    of the hierarchy."""
    import resource

    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _cgroup_memory_files():
        try:
            with open(path) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:  # v2 writes 'max' where there is no limit
            limit = min(limit, int(text))
    rss = resource.getrlimit(resource.RLIMIT_RSS)[1]
    return min(limit, rss) if rss > 0 else limit


def _cgroup_memory_files(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> list[str]:
    """The files holding the memory limits of this process's cgroups, from its own up to the
    hierarchy's root (cgroup v2: memory.max; v1: memory.limit_in_bytes of the memory controller)."""
    files = []
    try:
        with open(proc_cgroup) as file:
            lines = file.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            folder, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            folder, name = f"{root}/memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [part for part in path.split("/") if part]
        files += [os.path.join(folder, *parts[:depth], name) for depth in range(len(parts), -1, -1)]
    return files or [f"{root}/memory.max", f"{root}/memory/memory.limit_in_bytes"]


# What a LocalCluster without a dashboard does not need: the workers' statistical profiler (it
# samples each running task's stack every 10 ms) and the frequent system-monitor and event-loop
# ticks that feed the dashboard's plots. Two idle workers and their scheduler used 0.66-0.91 s
# of CPU per 10 s with Dask's defaults and 0.23-0.25 s with these (the memory monitor, which
# guards the workers' memory limit, keeps its default).
QUIET_CLUSTER = {"distributed.worker.profile.enabled": False,
                 "distributed.admin.system-monitor.interval": "2s",
                 "distributed.admin.tick.interval": "500ms"}


def _local_cluster(n_workers: int):
    """A dask.distributed LocalCluster of single-threaded worker processes, without the
    dashboard's bookkeeping (QUIET_CLUSTER). Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536,
    so glibc hands every freed block above 64 kB back to the system; the template fit's many
    few-MB temporaries then each cost fresh pages (2.6× slower than in a plain process), so the
    workers keep glibc's own threshold."""
    import dask
    from distributed import LocalCluster

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set({**QUIET_CLUSTER,
                          "distributed.nanny.pre-spawn-environ": {k: v for k, v in environ.items() if v is not None}}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.CRITICAL)


class SharedCluster:
    """A LocalCluster started on first use and shared by the `map_unordered` calls given it as
    `address` (see `shared_cluster`)."""

    def __init__(self, n_workers: int | None = None):
        self.n_workers, self._cluster = n_workers, None

    @property
    def started(self) -> bool:
        return self._cluster is not None

    @property
    def address(self) -> str:
        if self._cluster is None:
            self._cluster = _local_cluster(self.n_workers or process_workers())
        return self._cluster.scheduler_address

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


@contextmanager
def shared_cluster(scheduler: str, n_workers: int | None = None) -> Iterator[SharedCluster | None]:
    """For scheduler 'distributed': one LocalCluster, started when a step first needs one, for
    every `map_unordered` call inside the block that is given it as `address`, so that a run's
    steps share its worker processes and their warm imports; None (each call as usual) otherwise."""
    if scheduler != "distributed":
        yield None
        return
    shared = SharedCluster(n_workers)
    try:
        yield shared
    finally:
        shared.close()


def map_unordered(func: Callable, items: list, scheduler: "str | SlurmWorkers" = "distributed",
                  n_workers: int | None = None, address: "str | SharedCluster | None" = None) -> Iterator[tuple[int, object]]:
    """Yield (index, func(items[index])) as tasks finish.

    scheduler: 'distributed' (a dask.distributed LocalCluster of processes, or the scheduler at
    `address`), a `SlurmWorkers` (workers as SLURM jobs of its profile), 'processes' (worker
    processes forked from this one: `_map_forked`), 'threads' (dask's thread pool), 'sync' (in
    this process, in order) or 'auto' (`resolve_scheduler` by the number of items). At most WINDOW_PER_WORKER tasks per worker are in
    flight or finished-but-unconsumed at a time, so memory stays bounded however many tasks there
    are and however slowly the caller consumes.
    """
    from .errors import ConfigError

    on_slurm = isinstance(scheduler, SlurmWorkers)
    if scheduler == "slurm":
        raise ConfigError("--scheduler slurm needs --profile (a YAML file, see slurm/profiles/)")
    if not on_slurm and scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    if scheduler == "processes" and not can_fork():
        raise ConfigError("--scheduler processes forks worker processes, which only Linux allows here; "
                          "use --scheduler distributed")
    if not items:
        return
    scheduler = resolve_scheduler(scheduler, len(items), n_workers)
    if isinstance(address, SharedCluster):  # a single task runs here unless the cluster is up anyway
        address = address.address if len(items) > 1 or address.started else None
    if scheduler == "sync" or (len(items) == 1 and address is None and not on_slurm):
        for index, item in enumerate(items):
            yield index, func(item)
    elif scheduler == "threads":
        yield from _map_threads(func, items, n_workers)
    elif scheduler == "processes":
        yield from _map_forked(func, items, n_workers)
    else:
        yield from _map_distributed(func, items, scheduler, n_workers, address)


def _map_threads(func: Callable, items: list, n_workers: int | None) -> Iterator[tuple[int, object]]:
    import dask
    from dask import delayed

    workers = n_workers or default_workers()
    window = WINDOW_PER_WORKER * workers
    for first in range(0, len(items), window):
        results = dask.compute(*[delayed(func)(item) for item in items[first:first + window]],
                               scheduler="threads", num_workers=workers)
        yield from enumerate(results, start=first)


def _forked_worker_start(parent: int) -> None:
    """A forked worker leaves Ctrl-C to the command's process (`parent`), dies at SIGTERM, and
    dies with that process however it ends (a SIGKILL, the OOM killer): left alone, a worker
    would wait on its task queue for ever, holding what it inherited (the output's lock among
    them)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl took hold
        os._exit(1)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block are raised when it ends, not in it: an
    interrupt raised while a pool forks its workers would leave the workers already forked
    unknown to the pool, and the command waiting on them at exit. In the main thread only (the
    only one Python lets set handlers); elsewhere the block runs as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
              for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def _stop_workers(pool) -> None:
    """End a pool's workers now, by SIGKILL (they only read; what they were doing is done again on
    resume), and its bookkeeping: waiting for them instead would take up to two tasks per worker,
    and for ever where one is stuck, since they ignore Ctrl-C."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14
    if kill is not None:
        kill()
    else:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.kill()  # not SIGTERM: a worker forked a moment ago may not have its handlers yet
        for process in processes:
            process.join(5)
    pool.shutdown(wait=True, cancel_futures=True)


def _map_forked(func: Callable, items: list, n_workers: int | None) -> Iterator[tuple[int, object]]:
    """A window of tasks in flight on worker processes forked from this one (`process_workers()`
    of them, or `n_workers`, at most one per task). A forked worker starts in milliseconds with
    this process's modules already imported, where a LocalCluster's spawned workers take
    0.7-2.3 s to start and import; tasks and results travel pickled, as to Dask's workers. The
    workers never touch what this process holds open: tasks name files, which the workers open
    themselves (the run's store is closed between its steps), and they use neither torch nor
    CUDA, which may be initialised here. Forking a process that has threads (torch's) is what
    PyTorch's own data-loader workers do; Python 3.12 and later warn of it, and the warning is
    silenced for this fork. An interrupt, an error, or a caller that stops early ends the
    workers at once (`_stop_workers`); a worker that dies ends the map with an AnnotateError."""
    import multiprocessing
    import warnings
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .errors import AnnotateError

    workers = max(1, min(n_workers or process_workers(), len(items)))
    pending = iter(enumerate(items))
    in_flight: dict = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_forked_worker_start, initargs=(os.getpid(),))

    def submit_next() -> None:
        for index, item in pending:
            in_flight[pool.submit(func, item)] = index
            return

    finished = False
    try:
        try:
            with _signals_deferred(), warnings.catch_warnings():  # the first submit forks the workers
                warnings.filterwarnings("ignore", message=".*multi-threaded, use of fork", category=DeprecationWarning)
                for _ in range(WINDOW_PER_WORKER * workers):
                    submit_next()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=in_flight.get):
                    index = in_flight.pop(future)
                    result = future.result()
                    submit_next()
                    yield index, result
        except BrokenProcessPool as exc:
            raise AnnotateError(f"a worker process ended before its task was done (killed for lack of memory?) "
                                f"or sent back what could not be read ({exc}); what was done is kept: run again "
                                "to resume, or with --workers 1") from exc
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _stop_workers(pool)


def _map_distributed(func: Callable, items: list, scheduler, n_workers: int | None,
                     address: str | None) -> Iterator[tuple[int, object]]:
    """A window of tasks in flight on a Dask cluster: the one at `address`, SLURM worker jobs, or
    a LocalCluster started for this call."""
    from distributed import Client, as_completed

    if address is not None:
        client, cluster = Client(address), None
    else:
        requested = min(n_workers or (1 if isinstance(scheduler, SlurmWorkers) else process_workers()), len(items))
        cluster = slurm_cluster(scheduler.profile, requested, log_directory=scheduler.log_directory) \
            if isinstance(scheduler, SlurmWorkers) else _local_cluster(requested)
        client = Client(cluster)
    try:
        if isinstance(scheduler, SlurmWorkers):
            _wait_for_slurm_workers(client)
        # the window follows the workers asked for, not those up yet: SLURM workers arrive one by one
        workers = len(client.scheduler_info().get("workers", {}))
        window = WINDOW_PER_WORKER * max(1, requested if address is None else workers)
        pending = iter(enumerate(items))
        index_of = {}

        def submit_next(queue) -> None:
            for index, item in pending:
                future = client.submit(func, item, pure=False)
                index_of[future.key] = index
                queue.add(future)
                return

        queue = as_completed()
        for _ in range(window):
            submit_next(queue)
        for future in queue:
            result = future.result()  # fetched only now: results wait on the workers, not here
            index = index_of.pop(future.key)
            future.release()
            submit_next(queue)
            yield index, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()