"""The merge of a sharded run, in a child process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import Row, peak_rss_mb, reset_peak_rss
from .writeback import make_catalog


def merge_case(n_rows: str, workdir: str, shard_size: str = "500000") -> str:
    """Write a catalog, a plan and synthetic shard files for n_rows, then run the merge; returns
    'seconds peak_rss_mb baseline_rss_mb' (called in a child process by `bench_merge`)."""
    from ..checkpoint import DEFAULT_MODEL
    from ..fit.stage import empty_fit
    from ..pipeline import RunSettings
    from ..runfolder import RunFolder
    from ..shards import make_plan, plan_shards, run_sharded

    n, size, work = int(n_rows), int(shard_size), Path(workdir)
    catalog = make_catalog(work / f"merge-{n}.fits", n)
    out = work / f"merge-{n}.annotated.fits"
    folder = RunFolder.for_output(out.resolve())
    shards = plan_shards(n, size)
    folder.write_plan(make_plan(catalog, n, size, DEFAULT_MODEL, "sdss_dr18", fit=True))
    rng = np.random.default_rng(0)
    for shard in shards:
        m = shard.stop - shard.start
        folder.write_shard(shard.name, dict(
            start=shard.start, stop=shard.stop, errors=np.array([""] * m), prob=rng.dirichlet(np.ones(3), m),
            z=rng.uniform(0, 3, m), z_err=rng.uniform(0, 0.1, m), teff=rng.uniform(3000, 9000, m),
            logg=rng.uniform(0, 5, m), feh=rng.uniform(-2, 0.5, m), coverage=np.ones(m), status=np.ones(m, np.int8),
            **empty_fit(m)))
    import gc

    gc.collect()
    reset_peak_rss()
    baseline = peak_rss_mb("VmRSS")
    start = time.perf_counter()
    run_sharded(RunSettings(catalog=catalog, out=out, progress=False), size, log=lambda line: None)
    return f"{time.perf_counter() - start} {peak_rss_mb()} {baseline}"


def bench_merge(sizes, workdir: Path) -> Row:
    row = Row("merge of a sharded run", "seconds", baseline_name="the same run's write-back alone is in the write-back row")
    row.extra.update({"rss_mb": [], "baseline_rss_mb": []})
    for n in sizes:
        done = subprocess.run([sys.executable, "-c", "import sys; from annotate.bench.merge import merge_case; "
                               "print(merge_case(*sys.argv[1:]))", str(n), str(workdir)],
                              stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError("merge benchmark failed")
        seconds, rss, baseline = (float(v) for v in done.stdout.split()[-3:])
        row.sizes.append(n)
        row.ours.append(seconds)
        row.baseline.append(float("nan"))
        row.extra["rss_mb"].append(rss)
        row.extra["baseline_rss_mb"].append(baseline)
    return row
