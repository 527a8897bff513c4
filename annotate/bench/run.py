"""`annotate bench`: the steps asked for, at their sizes, into rows and JSON."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import QUICK_SIZES, SIZES, Row, linearity, machine, speed_reference
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


@dataclass
class BenchRun:
    """A bench's rows, the machine, and `common.speed_reference` taken before and after them
    ({'before': {...}, 'after': {...}}; empty where not taken)."""

    rows: list
    machine: str
    reference: dict
    quick: bool = False

    def reference_line(self) -> str:
        """One line: the speed references before and after, in seconds."""
        if not self.reference:
            return "speed reference: not taken"
        b, a = self.reference["before"], self.reference["after"]
        return (f"speed reference (one core; s, before / after the steps): sum(range(10**8)) {b['python']:.2f} / "
                f"{a['python']:.2f}, numpy FFT and matrix products {b['numpy']:.3f} / {a['numpy']:.3f}")

    def to_json(self) -> dict:
        return {"machine": self.machine, "date": time.strftime("%Y-%m-%d"), "quick": self.quick,
                "speed_reference": self.reference,
                "rows": [row.__dict__ | {"ratio": row.ratio(), "linearity": linearity(row)} for row in self.rows]}


def run_bench(quick: bool = False, steps: tuple = ("ingest", "render", "end_to_end", "writeback"),
              out: Path | None = None, workdir: Path | None = None, reference: bool = True) -> BenchRun:
    """The rows of `steps` (STEPS) at their sizes (QUICK_SIZES with `quick`), with the machine's
    speed reference before and after them (`reference`), also written to `out` as JSON with
    the machine and the date."""
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; valid: {', '.join(STEPS)}")
    sizes = QUICK_SIZES if quick else SIZES
    rows = []
    before = speed_reference() if reference else None
    with tempfile.TemporaryDirectory(prefix="annotate-bench-", dir=workdir) as tmp:
        for step in steps:
            rows.extend(STEPS[step](sizes[step], Path(tmp)))
    result = BenchRun(rows, machine(), {"before": before, "after": speed_reference()} if reference else {}, quick)
    if out is not None:
        out.write_text(json.dumps(result.to_json(), indent=1))
    return result
