"""Run independent tasks with Dask: a distributed LocalCluster by default, or in-process.

Tasks receive plain data (file names, row ranges, settings dicts), never open files or models.
This is the only module that imports dask.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

SCHEDULERS = ("distributed", "threads", "sync")
WINDOW_PER_WORKER = 2


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def map_unordered(func: Callable, items: list, scheduler: str = "distributed",
                  n_workers: int | None = None, address: str | None = None) -> Iterator[tuple[int, object]]:
    """Yield (index, func(items[index])) as tasks finish.

    scheduler: 'distributed' (a dask.distributed LocalCluster of processes, or the scheduler at
    `address`), 'threads' (dask's thread pool) or 'sync' (in this process, in order). At most
    WINDOW_PER_WORKER tasks per worker are in flight or finished-but-unconsumed at a time, so
    memory stays bounded however many tasks there are and however slowly the caller consumes.
    """
    if scheduler not in SCHEDULERS:
        from .errors import ConfigError
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    if not items:
        return
    if scheduler == "sync" or (len(items) == 1 and address is None):
        for index, item in enumerate(items):
            yield index, func(item)
        return
    if scheduler == "threads":
        import dask
        from dask import delayed

        workers = n_workers or default_workers()
        window = WINDOW_PER_WORKER * workers
        for first in range(0, len(items), window):
            results = dask.compute(*[delayed(func)(item) for item in items[first:first + window]],
                                   scheduler="threads", num_workers=workers)
            yield from enumerate(results, start=first)
        return
    from distributed import Client, LocalCluster, as_completed

    if address is not None:
        client, cluster = Client(address), None
    else:
        n = n_workers or default_workers()
        cluster = LocalCluster(n_workers=min(n, len(items)), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        window = WINDOW_PER_WORKER * max(1, len(client.scheduler_info().get("workers", {})) or 1)
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

