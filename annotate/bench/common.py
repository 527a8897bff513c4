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


def linearity(row: Row) -> float:
    """Cost per item at the largest size over cost per item at the smallest (1.0 = linear)."""
    per_item = [1 / r if row.unit.endswith("/s") else r / n for r, n in zip(row.ours, row.sizes)]
    return per_item[-1] / per_item[0]


def format_table(rows: list[Row]) -> str:
    lines = ["| step | sizes | ours | baseline | ratio | cost/item largest÷smallest |", "|---|---|---|---|---|---|"]
    for row in rows:
        fmt = (lambda v: f"{v:,.0f}") if row.unit.endswith("/s") else (lambda v: f"{v:.3f}")
        lines.append(f"| {row.step} ({row.unit}) | {' / '.join(f'{n:,}' for n in row.sizes)} | "
                     f"{' / '.join(fmt(v) for v in row.ours)} | {' / '.join(fmt(v) for v in row.baseline)} "
                     f"({row.baseline_name}) | {' / '.join(f'{r:.1f}×' for r in row.ratio())} | {linearity(row):.2f} |")
        if row.step.startswith("template fit"):
            e = row.extra
            lines.append(f"| ↳ without the prior (spectra/s); Ross success ours / redrock; median \\|Δv\\| between (km/s) | | "
                         f"{' / '.join(f'{v:,.0f}' for v in e['rate_without_prior'])} | "
                         f"{' / '.join(f'{a:.3f} / {b:.3f}' for a, b in zip(e['success'], e['baseline_success']))} | "
                         f"{' / '.join(f'{v:.1f}' for v in e['median_dv_between_kms'])} | |")
            lines.append(f"| ↳ fit's peak memory above the process's before it, MB | | "
                         f"{' / '.join(f'{v:.0f}' for v in e['batch_rss_mb'])} | | | |")
        if row.step.startswith("merge"):
            lines.append(f"| ↳ merge peak RSS, MB (interpreter and torch before it) | | "
                         f"{' / '.join(f'{v:.0f} ({b:.0f})' for v, b in zip(row.extra['rss_mb'], row.extra['baseline_rss_mb']))} | | | |")
        if row.step.startswith("write-back"):
            e = row.extra
            lines.append(f"| ↳ write-back peak RSS, MB (of which the writer's own) | | "
                         f"{' / '.join(f'{v:.0f} ({w:.0f})' for v, w in zip(e['rss_mb'], e['writer_rss_mb']))} | "
                         f"astropy: {' / '.join(f'{v:.0f}' for v in e['astropy_rss_mb'])} MB, "
                         f"{' / '.join(f'{v:.2f}' for v in e['astropy_seconds'])} s; read/write copy "
                         f"{' / '.join(f'{v:.3f}' for v in e['userspace_copy_seconds'])} s | input "
                         f"{' / '.join(f'{v:.1f}' for v in e['input_mb'])} MB | |")
    return "\n".join(lines)
