"""Run independent tasks with Dask: a distributed LocalCluster by default, or in-process.

Tasks receive plain data (file names, row ranges, settings dicts), never open files or models.
This is the only module that imports dask.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator

SCHEDULERS = ("distributed", "threads", "sync")


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def map_unordered(func: Callable, items: list, scheduler: str = "distributed",
                  n_workers: int | None = None, address: str | None = None) -> Iterator[tuple[int, object]]:
    """Yield (index, func(items[index])) as tasks finish.

    scheduler: 'distributed' (a dask.distributed LocalCluster of processes, or the scheduler at
    `address`), 'threads' (dask's thread pool) or 'sync' (in this process, in order).
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

        results = dask.compute(*[delayed(func)(item) for item in items], scheduler="threads",
                               num_workers=n_workers or default_workers())
        yield from enumerate(results)
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
        futures = client.map(func, items, pure=False)
        index_of = {future.key: i for i, future in enumerate(futures)}
        for future, result in as_completed(futures, with_results=True):
            yield index_of[future.key], result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

