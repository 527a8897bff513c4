"""`annotate run`: catalog -> spectra store -> predictions -> annotated catalog -> summary.

Plain functions over a frozen `RunSettings`; the CLI and the demo are thin clients. A single run
checks its outputs, takes their locks and runs one task of every row (`task.annotate_task_here`:
in this process, or on a Dask cluster that ingest and fit share), then writes the annotated
catalog; the checks, locks, flags and write-back here are also those of a sharded run
(`shards.py`, `merge.py`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalogs import read_catalog
from .catalogs.registry import writable_folder  # noqa: F401  (the commands' check of their output folders)
from .errors import OutputError
from .flags import PredFlag
from .store import STATUS
from .surveys import Survey, load_survey
from .task import ShardTask, annotate_task_here
from .writeback import (catalog_stem, default_output_path, prediction_columns, provenance_cards,
                        write_annotated_catalog)

LOW_COVERAGE = 0.5
SINGLE_SHARD = {"ANNSHRDS": (1, "shards the run was split into")}  # the cards of a sharded run's header


@dataclass(frozen=True)
class RunSettings:
    """What `annotate run` does. Paths may be str or Path; None means the default beside the catalog."""

    catalog: Path
    survey: str = "sdss_dr18"
    spectra_root: Path | None = None
    store: Path | None = None
    model: Path | None = None
    out: Path | None = None
    scheduler: str = "auto"  # annotate.parallel.resolve_scheduler: by the run's rows
    n_workers: int | None = None
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True
    fit: bool = True  # the template fit seeded by the ViT (False: the ViT's class and z alone)

    def output(self) -> Path:
        """The annotated catalog: `out`, or `x.annotated.fits` beside the catalog `x.fits`."""
        return Path(self.out) if self.out else default_output_path(Path(self.catalog))

    def spectra_folder(self) -> Path:
        """Where the catalog's spectrum paths start: `spectra_root`, or the catalog's folder.
        CatalogError when a `spectra_root` given is not a folder (a mistyped path would otherwise
        leave every row without its spectrum)."""
        if self.spectra_root and not Path(self.spectra_root).is_dir():
            from .errors import CatalogError

            raise CatalogError(f"--spectra-root {self.spectra_root}: no such folder")
        return Path(self.spectra_root) if self.spectra_root else Path(self.catalog).parent


@dataclass
class RunResult:
    output: Path
    store: Path
    n_rows: int
    n_predicted: int
    counts: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # what was done to an existing store (prepare_store)

    @property
    def n_failed(self) -> int:
        return self.n_rows - self.n_predicted


def default_store_path(output: Path) -> Path:
    """The spectra store beside an annotated catalog: `x.annotated.fits` -> `x.annotated.spectra.h5`."""
    return Path(output).with_name(catalog_stem(output) + ".spectra.h5")


def duplicate_mask(ids) -> np.ndarray:
    """(n,) bool: rows whose id occurs more than once."""
    ids = np.asarray(ids)
    if len(ids) == 0:
        return np.zeros(0, bool)
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)] > 1


@contextmanager
def output_lock(out: Path, doing: str = "writing", notes: list | None = None):
    """Hold an exclusive lock on `out` for the duration (a hidden `.<name>.lock` beside it, which
    names the holder: pid and host); a second run on the same file is refused with OutputError
    instead of interleaving. A lock file whose run ended without removing it (killed) is not
    held (the kernel drops a dead process's lock): it is taken over, and `notes` says whose it
    was."""
    import fcntl
    import socket

    lock = Path(out).with_name(f".{Path(out).name}.lock")
    try:
        handle = open(lock, "a+")
    except OSError as exc:
        raise OutputError(f"cannot create the lock {lock}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise OutputError(f"another annotate run{f' ({holder})' if holder else ''} is {doing} {out} "
                              f"(lock {lock} is held); wait for it to finish or choose another file") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous and notes is not None:
            notes.append(f"took over the lock {lock} of a run that ended without removing it ({previous})")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def remove_stale_temporaries(out: Path, notes: list | None = None) -> None:
    """Remove `.<name>.<pid>.tmp` files beside `out` (write-backs of runs that were killed): only
    called while the output's lock is held, so no live run is writing any of them."""
    out = Path(out)
    prefix = f".{out.name}."
    with os.scandir(out.parent) as entries:  # not glob: a name may hold glob's own characters
        stale = [Path(e.path) for e in entries if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    for tmp in stale:
        try:
            tmp.unlink()
        except OSError:
            continue
        if notes is not None:
            notes.append(f"removed {tmp}, left by a run that was stopped while writing {out.name}")


def check_outputs(out: Path, catalog: Path, store: Path | None, model: Path | None) -> None:
    """Refuse, before anything is read, an output that names an input, the spectra store or the
    model, a store that names the catalog or the model, and an output that exists but is not a
    regular file (a device, a FIFO, a folder: write-back replaces the file by renaming)."""
    out = Path(out)
    inputs = {Path(catalog).resolve(): "the input catalog"}
    if model is not None and Path(model).exists():
        inputs[Path(model).resolve()] = "the model"
    if out.resolve() == Path(catalog).resolve():
        raise OutputError(f"refusing to overwrite the input catalog {catalog}")
    if store is not None and out.resolve() == Path(store).resolve():
        raise OutputError(f"--out {out} is the spectra store; choose another --out (or --store)")
    written = [(out, "--out")] + ([(Path(store), "--store")] if store is not None else [])
    for path, what in inputs.items():
        for target, flag in written:
            if target.resolve() == path or path in target.resolve().parents:
                raise OutputError(f"{flag} {target} would overwrite {what} ({path})")
    for path, flag in written:
        refuse_non_regular(path, flag)


def refuse_non_regular(path: Path, flag: str) -> None:
    """OutputError when `path` exists but is not a regular file (a folder, a device, a FIFO): the
    write-back replaces an output by renaming, which would replace such a thing."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise OutputError(f"{flag} {path} is {kind}; annotate writes a regular file there")


def row_flags(status: np.ndarray, coverage: np.ndarray, reference: dict, selected: np.ndarray,
              duplicate: np.ndarray | None = None) -> np.ndarray:
    """PRED_FLAGS per row from the store status, pixel coverage, the catalog's reference values
    and (when given) the rows whose object id repeats."""
    flags = np.zeros(len(status), np.int64)
    if duplicate is not None:
        flags[duplicate] |= int(PredFlag.DUPLICATE_ID)
    flags[status == STATUS["NO_SPECTRUM"]] |= int(PredFlag.NO_SPECTRUM)
    flags[status == STATUS["NO_USABLE_PIXELS"]] |= int(PredFlag.NO_USABLE_PIXELS)
    flags[status == STATUS["PATH_REFUSED"]] |= int(PredFlag.PATH_REFUSED)
    flags[(status == STATUS["OK"]) & (coverage < LOW_COVERAGE)] |= int(PredFlag.LOW_COVERAGE)
    with np.errstate(invalid="ignore"):
        no_ref_z = ~np.isfinite(reference["z"]) | (np.nan_to_num(reference["zwarning"], nan=0) != 0)
    flags[no_ref_z] |= int(PredFlag.NO_REFERENCE_Z)
    flags[reference["class"] == ""] |= int(PredFlag.UNKNOWN_REFERENCE_CLASS)
    flags[~selected] |= int(PredFlag.NOT_SELECTED)
    return flags


@contextmanager
def _progress(enabled: bool, total: int, desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="spec", disable=not enabled, leave=True, mininterval=0.5)
    try:
        yield bar.update
    finally:
        bar.close()


def run(settings: RunSettings) -> RunResult:
    """Annotate one catalog; returns counts, paths and the cross-check summary."""
    from .checkpoint import model_folder

    catalog = Path(settings.catalog)
    survey = load_survey(settings.survey)
    table = read_catalog(catalog, survey)
    out = settings.output()
    store = Path(settings.store) if settings.store else default_store_path(out)
    model_dir = model_folder(settings.model)
    check_outputs(out, catalog, store, model_dir)
    spectra_root = settings.spectra_folder()
    writable_folder(out.parent, "output directory")
    if not store.parent.is_dir():
        raise OutputError(f"the spectra store's folder does not exist: {store.parent}")
    n_rows = len(next(iter(table.values())))
    check_output_room(out, catalog, n_rows)
    task = ShardTask.whole(n_rows, catalog, spectra_root, model_dir, store, settings)
    notes: list[str] = []
    with output_lock(out, notes=notes), output_lock(store, "using the spectra store", notes):
        remove_stale_temporaries(out, notes)
        result = _run_locked(settings, task, survey, table, out)
    result.notes[:0] = notes
    return result


def check_output_room(out: Path, catalog: Path, n_rows: int) -> None:
    """Refuse before any spectrum is read when the output's file system has no room for the
    annotated copy (the input's size plus the PRED_* columns)."""
    from .catalogs.registry import PRED_BYTES_PER_ROW, check_free_space

    check_free_space(Path(out).parent, Path(catalog).stat().st_size + n_rows * PRED_BYTES_PER_ROW)


def _run_locked(settings: RunSettings, task: ShardTask, survey: Survey, table: dict, out: Path) -> RunResult:
    """The single run's one task, on a Dask cluster shared by ingest and fit, then the write-back."""
    from .checkpoint import weights_sha256
    from .metrics import summary
    from .predict import precision

    catalog, model_dir, n_rows = Path(task.catalog), Path(task.model), task.stop
    selected = survey.selected(table)  # a selection rule's error comes before any spectrum is read
    done = annotate_task_here(task, settings.scheduler, settings.n_workers, table=table, survey=survey,
                              progress=lambda stage: _progress(settings.progress and (stage != "fit" or settings.fit),
                                                               n_rows, stage))
    pred, reference, card = done.pred, done.reference, done.card
    columns, predicted, usable = write_annotated(
        catalog, out, pred, reference, selected, duplicate_mask(reference["object_id"]),
        provenance_cards(card.name or model_dir.name, weights_sha256(model_dir), card.render.encoding, survey.name,
                         int((pred["status"] != STATUS["OK"]).sum()), precision(settings.device),
                         fit_provenance(settings.fit, survey.reader), catalog=catalog, model_dir=model_dir) | SINGLE_SHARD)
    return RunResult(output=out, store=Path(task.store), n_rows=n_rows, n_predicted=int(predicted.sum()), counts=done.counts,
                     summary=summary(reference, columns, usable),
                     errors=[e for e in done.errors if e], notes=done.notes)


def fit_provenance(enabled: bool, reader: str = "") -> dict | None:
    """{'settings', 'sha256'} of the fit for spectra of `reader` for the header, None when it is off."""
    if not enabled:
        return None
    from .digest import file_sha256
    from .fit.bases import BASES_PATH
    from .fit.settings import fit_settings

    # the file's digest, which is what BasisSet.sha256 holds: the fit ran in the workers, and
    # loading the bases here only for it took 0.1-0.2 s of the run
    return {"settings": fit_settings(reader).describe(), "sha256": file_sha256(BASES_PATH)}


def write_annotated(catalog: Path, out: Path, pred: dict, reference: dict, selected: np.ndarray,
                    duplicate: np.ndarray, provenance: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Flags, PRED_* columns and the write-back of one run's predictions.
    Returns the columns, the rows predicted, and the rows a cross-check may use."""
    flags = row_flags(pred["status"], pred["coverage"], reference, selected, duplicate)
    columns = prediction_columns(pred, reference, flags)
    predicted = pred["status"] == STATUS["OK"]
    write_annotated_catalog(catalog, out, columns, provenance)
    no_reference = int(PredFlag.NO_REFERENCE_Z | PredFlag.UNKNOWN_REFERENCE_CLASS)
    return columns, predicted, predicted & selected & ((flags & no_reference) == 0)
