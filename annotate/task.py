"""One task of `annotate run`: rows [start, stop) of a catalog -> spectra store -> ViT -> fit.

`annotate_task` is the only ingest -> predict -> fit code. A single run is one task of all its
rows (`ShardTask.whole`), run by the calling process (`annotate_task_here`: its ingest and fit in
that process or on one Dask cluster they share, as the run's scheduler says) and written straight
to the annotated catalog; a sharded run plans one task per shard (`shards.py`), runs them where
its executor says, each writing its shard file, and merges them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WHOLE = "all"  # the name of a single run's one task


@dataclass(frozen=True)
class ShardTask:
    """One task's work, as sent to a Dask worker or a SLURM array task: paths, rows, settings.
    `folder` is the run folder its shard file goes to ('' for a single run's task)."""

    name: str
    start: int
    stop: int
    catalog: str
    survey: str  # a survey's name, or the absolute path of its YAML file (surveys.survey_reference)
    spectra_root: str
    model: str
    store: str
    device: str = "cpu"
    batch_size: int = 64
    fit: bool = True
    folder: str = ""
    # where a shard's own ingest and fit run (annotate.parallel; 'auto': by its rows); a single
    # run's task is given its run's scheduler instead
    scheduler: str = "sync"
    n_workers: int | None = None

    @classmethod
    def whole(cls, n_rows: int, catalog, spectra_root, model, store, settings) -> "ShardTask":
        """A single run's task: every row, its store, the survey, batch size, device and fit of
        `settings` (pipeline.RunSettings)."""
        from .surveys import survey_reference

        return cls(WHOLE, 0, n_rows, str(catalog), survey_reference(settings.survey), str(spectra_root), str(model),
                   str(store), settings.device, settings.batch_size, settings.fit)


@dataclass
class TaskResult:
    """What a task computed: the predictions and fit keys per row, the ingest counts, notes about
    the store, the catalog's reference values for its rows, the store's error per row, the model card."""

    pred: dict
    counts: dict
    notes: list
    reference: dict
    errors: list
    card: object = field(repr=False, default=None)


@contextmanager
def _no_progress(stage: str):
    yield None


def annotate_task_here(task: ShardTask, scheduler, n_workers: int | None = None, **kwargs) -> TaskResult:
    """`annotate_task` with `scheduler` decided once for the task's rows ('auto':
    parallel.resolve_scheduler) and, where that is 'distributed', one LocalCluster that its ingest
    and fit share, closed when it returns ('processes': each step forks its own workers)."""
    from .parallel import TASK_ROWS, process_workers, resolve_scheduler, shared_cluster

    scheduler = resolve_scheduler(scheduler, -(-(task.stop - task.start) // TASK_ROWS), n_workers)
    if kwargs.get("log") is not None and scheduler in ("distributed", "processes"):
        kind = "Dask worker processes" if scheduler == "distributed" else "worker processes forked from this one"
        kwargs["log"](f"reading and fitting on {n_workers or process_workers()} {kind}")
    with shared_cluster(scheduler, n_workers) as address:
        return annotate_task(task, scheduler=scheduler, n_workers=n_workers, address=address, **kwargs)


def annotate_task(task: ShardTask, table: dict | None = None, scheduler: str = "sync", n_workers: int | None = None,
                  address: str | None = None, progress=_no_progress, log=None, survey=None) -> TaskResult:
    """Ingest, predict and fit the task's rows: the spectra into its store (created, or resumed
    when it is this catalog's), the ViT's predictions and the template fit's keys. `table` is the
    task's rows of the catalog when the caller has read them already (else they are read here),
    `survey` the task's survey when the caller has loaded it;
    `scheduler`, `n_workers` and `address` (a running Dask cluster) say where ingest and fit run
    (a shard task: in this process); `progress(stage)` is a context manager giving an update
    callable; `log`, when given, gets each note about the store as soon as it is made."""
    from .catalogs import read_catalog
    from .checkpoint import load_checkpoint
    from .predict import predict_store
    from .ingest import ingest
    from .store import prepare_store, read_status
    from .surveys import load_survey

    survey = survey if survey is not None else load_survey(task.survey)
    if table is None:
        table = read_catalog(Path(task.catalog), survey, rows=slice(task.start, task.stop))
    model, card = load_checkpoint(task.model, task.device)
    reference = survey.reference(table)
    reasons: list[str] = []
    paths, refused = resolve_paths(survey.spectrum_paths(table, reasons), Path(task.spectra_root), reasons)
    store = Path(task.store)
    _, notes = prepare_store(store, reference["object_id"], paths, card.grid, survey=survey.name,
                             reader=survey.reader, catalog=task.catalog)
    for line in notes if log is not None else ():
        log(line)
    with progress("ingest") as update:
        counts = ingest(store, paths, refused, reader=survey.reader, scheduler=scheduler, n_workers=n_workers,
                        progress=update, address=address, reasons=reasons, bad_bits=survey.bad_pixel_bits)
    with progress("predict") as update:
        pred = predict_store(model, card, store, batch_size=task.batch_size, device=task.device, progress=update)
    with progress("fit") as update:
        pred.update(fit_predictions(store, pred, card.grid, task.fit, scheduler, n_workers, progress=update,
                                    address=address, reader=survey.reader))
    _, errors = read_status(store)
    return TaskResult(pred, counts, notes, reference, list(errors), card)


def fit_predictions(store_path: Path, pred: dict, grid, enabled: bool, scheduler: str = "sync",
                    n_workers: int | None = None, progress=None, address: str | None = None, reader: str = "") -> dict:
    """The template fit's keys for the store's rows (`annotate.fit`, with the settings for the
    survey's `reader`: `fit.settings.fit_settings`), or empty ones when off."""
    from .fit.settings import fit_settings
    from .fit.stage import empty_fit, fit_store

    if not enabled:
        return empty_fit(len(pred["status"]))
    return fit_store(store_path, pred, grid, fit_settings(reader), scheduler=scheduler, n_workers=n_workers,
                     progress=progress, address=address)


def resolve_paths(relative: list, root: Path, reasons: list | None = None) -> tuple[list[str], np.ndarray]:
    """Absolute paths under `root`, and a (n,) bool of rows refused because their path leaves it.
    A missing `x.fits` is looked for as `x.fits.gz`. A row without a path (None) or whose path
    the file system cannot take (a component longer than it allows, a symlink loop, a NUL byte)
    gets '' and, in `reasons` (a list of one str per row, '' where fine) when given, why."""
    root = root.resolve()
    paths, refused = [], np.zeros(len(relative), bool)
    for i, rel in enumerate(relative):
        if rel is None:
            paths.append("")
            continue
        try:
            candidate = (root / rel).resolve()
            if not candidate.is_relative_to(root):
                refused[i] = True
                paths.append("")
                if reasons is not None and not reasons[i]:
                    reasons[i] = f"spectrum path {str(rel)[:200]!r} leads outside the spectra root {root}; not read"
                continue
            if not candidate.exists() and candidate.with_name(candidate.name + ".gz").exists():
                candidate = candidate.with_name(candidate.name + ".gz")
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            paths.append("")
            if reasons is not None and not reasons[i]:
                reasons[i] = f"spectrum path {str(rel)[:200]!r} unusable: {str(exc).splitlines()[0][:200]}"
            continue
        paths.append(str(candidate))
    return paths, refused
