"""`annotate bench`: the steps asked for, at their sizes, into rows and JSON."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from .common import QUICK_SIZES, SIZES, Row, linearity, machine
from .end_to_end import bench_end_to_end
from .fit import bench_fit
from .ingest import bench_ingest, bench_ingest_desi
from .merge import bench_merge
from .render import bench_render
from .writeback import bench_writeback


# step name -> the rows it measures at its sizes, in a temporary folder
STEPS = {
    "ingest": lambda sizes, tmp: [bench_ingest(sizes, tmp)],
    "render": lambda sizes, tmp: [bench_render(sizes, encoding) for encoding in ("simple", "overlap", "2dmap")],
    "end_to_end": lambda sizes, tmp: [bench_end_to_end(sizes, tmp)],
    "writeback": lambda sizes, tmp: [bench_writeback(sizes, tmp)],
    "merge": lambda sizes, tmp: [bench_merge(sizes, tmp)],
    "fit": lambda sizes, tmp: [bench_fit(sizes, tmp)],
    "ingest_desi": lambda sizes, tmp: [bench_ingest_desi(sizes, tmp)],
}


def run_bench(quick: bool = False, steps: tuple = ("ingest", "render", "end_to_end", "writeback"),
              out: Path | None = None, workdir: Path | None = None) -> list[Row]:
    """The rows of `steps` (STEPS) at their sizes (QUICK_SIZES with `quick`), also written to
    `out` as JSON with the machine and the date."""
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; valid: {', '.join(STEPS)}")
    sizes = QUICK_SIZES if quick else SIZES
    rows = []
    with tempfile.TemporaryDirectory(prefix="annotate-bench-", dir=workdir) as tmp:
        for step in steps:
            rows.extend(STEPS[step](sizes[step], Path(tmp)))
    if out is not None:
        payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "quick": quick,
                   "rows": [row.__dict__ | {"ratio": row.ratio(), "linearity": linearity(row)} for row in rows]}
        out.write_text(json.dumps(payload, indent=1))
    return rows
