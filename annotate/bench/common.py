"""The rows' shape, the sizes, timing and memory helpers, and the table every step prints into."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path


SIZES = {"ingest": (250, 500, 1000), "render": (1000, 2000, 4000), "end_to_end": (500, 1000, 2000),
         "writeback": (10_000, 1_000_000, 5_000_000), "merge": (100_000, 1_000_000, 5_000_000),
         "fit": (100, 200, 400), "ingest_desi": (250, 500, 1000)}


QUICK_SIZES = {"ingest": (20, 40, 80), "render": (100, 200, 400), "end_to_end": (30, 60, 120),
               "writeback": (1_000, 2_000, 4_000), "merge": (1_000, 2_000, 4_000), "fit": (10, 20, 40),
               "ingest_desi": (20, 40, 80)}


BASELINE_LIMIT = {"render": 200, "end_to_end": 60, "fit": 40}  # the slow baselines run on at most this many items


@dataclass


class Row:
    step: str
    unit: str
    sizes: list = field(default_factory=list)
    ours: list = field(default_factory=list)  # rate (items/s) or seconds, per size
    baseline: list = field(default_factory=list)
    baseline_name: str = ""
    extra: dict = field(default_factory=dict)

    def ratio(self) -> list:
        if self.unit.endswith("/s"):
            return [o / b if b else float("nan") for o, b in zip(self.ours, self.baseline)]
        return [b / o if o else float("nan") for o, b in zip(self.ours, self.baseline)]


def timed(func, *args, repeat: int = 1):
    best = float("inf")
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory in MB. Unlike getrusage's
    ru_maxrss, VmHWM does not count the memory of the parent that forked it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs), so the peak is that of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def machine() -> str:
    import torch

    return (f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def speed_reference(repeat: int = 3) -> dict:
    """Seconds of two fixed workloads on one core, so that rates taken on other machines, or on
    the same virtual machine at another hour (a shared host's speed can move by 15-30 % within
    minutes), can be set side by side: 'python', the interpreter alone (`sum(range(10**8))`, once),
    and 'numpy', best of `repeat`, what the template fit spends most of its time on: real FFT
    correlations of 8 spectra of 3,000 bins with 64 template products, and 2,000 products of a
    10 × 4,608 matrix with its transpose (float64, one BLAS thread)."""
    import numpy as np
    import scipy.fft as sfft
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    sum(range(10**8))
    python_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    data, templates, matrix = rng.standard_normal((8, 3000)), rng.standard_normal((64, 3000)), rng.standard_normal((10, 4608))
    template_ft = sfft.rfft(templates, axis=-1)
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(10):
                sfft.irfft(sfft.rfft(data, axis=-1)[:, None, :] * template_ft[None], 3000, axis=-1, workers=1)
            for _ in range(2000):
                matrix @ matrix.T
            best = min(best, time.perf_counter() - start)
    return {"python": python_s, "numpy": best}


def linearity(row: Row) -> float:
    """Cost per item at the largest size over cost per item at the smallest (1.0 = linear)."""
    per_item = [1 / r if row.unit.endswith("/s") else r / n for r, n in zip(row.ours, row.sizes)]
    return per_item[-1] / per_item[0]


def _slashed(values, spec: str) -> str:
    """'a / b / c' with each value formatted by `spec` (a format string of one or more fields)."""
    return " / ".join(spec.format(*(v if isinstance(v, tuple) else (v,))) for v in values)


def _extra_lines(row: Row) -> list[str]:
    """The ↳ lines some steps add under their row: memory, and what their baselines measured."""
    e = row.extra
    if row.step.startswith("template fit"):
        return [f"| ↳ without the prior (spectra/s); Ross success ours / redrock; median \\|Δv\\| between (km/s) | | "
                f"{_slashed(e['rate_without_prior'], '{:,.0f}')} | "
                f"{_slashed(zip(e['success'], e['baseline_success']), '{:.3f} / {:.3f}')} | "
                f"{_slashed(e['median_dv_between_kms'], '{:.1f}')} | |",
                f"| ↳ fit's peak memory above the process's before it, MB | | {_slashed(e['batch_rss_mb'], '{:.0f}')} | | | |"]
    if row.step.startswith("merge"):
        return [f"| ↳ merge peak RSS, MB (interpreter and torch before it) | | "
                f"{_slashed(zip(e['rss_mb'], e['baseline_rss_mb']), '{:.0f} ({:.0f})')} | | | |"]
    if row.step.startswith("write-back"):
        return [f"| ↳ write-back peak RSS, MB (of which the writer's own) | | "
                f"{_slashed(zip(e['rss_mb'], e['writer_rss_mb']), '{:.0f} ({:.0f})')} | "
                f"astropy: {_slashed(e['astropy_rss_mb'], '{:.0f}')} MB, {_slashed(e['astropy_seconds'], '{:.2f}')} s; "
                f"read/write copy {_slashed(e['userspace_copy_seconds'], '{:.3f}')} s | input "
                f"{_slashed(e['input_mb'], '{:.1f}')} MB | |"]
    return []


def format_table(rows: list[Row]) -> str:
    lines = ["| step | sizes | ours | baseline | ratio | cost/item largest÷smallest |", "|---|---|---|---|---|---|"]
    for row in rows:
        spec = "{:,.0f}" if row.unit.endswith("/s") else "{:.3f}"
        lines.append(f"| {row.step} ({row.unit}) | {_slashed(row.sizes, '{:,}')} | {_slashed(row.ours, spec)} | "
                     f"{_slashed(row.baseline, spec)} ({row.baseline_name}) | {_slashed(row.ratio(), '{:.1f}×')} | "
                     f"{linearity(row):.2f} |")
        lines += _extra_lines(row)
    return "\n".join(lines)
