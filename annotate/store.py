"""The HDF5 spectra store: every spectrum of a catalog resampled onto one wavelength grid.

Layout (version 1), one row per catalog row, in catalog order:

    /flux       (n_rows, n_pix) float32, flux density, 1e-17 erg/s/cm²/Å
    /ivar       (n_rows, n_pix) float32, inverse variance of flux
    /mask       (n_rows, n_pix) uint8, 1 = no usable data in that pixel
    /object_id  (n_rows,) str, the catalog's object id
    /source     (n_rows,) str, the spectrum file the row was read from
    /status     (n_rows,) int8, see STATUS
    /error      (n_rows,) str, why a row could not be ingested
    attrs: layout_version, loglam_start, loglam_step, n_pix, survey, reader, catalog,
           annotate_version, created, store_id, flux_unit, revision (raised before every change,
           so that files made from the rows, such as an image store, can tell they are stale),
           writing (1 from before a change until it has reached the file: a store left so by a
           killed process is set aside and made anew by the next run)

Chunked by rows and compressed with LZF after byte shuffling (h5py's built-in filter, which
PyTables also reads; twice as fast to write as gzip level 1 for 7 % more space). Ingest (`annotate.ingest`)
is resumable: rows whose status is not PENDING are skipped. This is the only module (with the
simulator's writer) that reads and writes the store's HDF5.
"""

from __future__ import annotations

import datetime as _dt
from contextlib import contextmanager
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import StoreError
from .grid import WavelengthGrid

LAYOUT_VERSION = 1
STATUS = {"PENDING": 0, "OK": 1, "NO_SPECTRUM": 2, "NO_USABLE_PIXELS": 3, "PATH_REFUSED": 4}
ROW_CHUNK = 64
COMPARE_CHUNK = 500_000  # rows whose ids and paths are compared at a time when a store is reused


@dataclass(frozen=True)
class StoreInfo:
    path: Path
    n_rows: int
    grid: WavelengthGrid
    survey: str
    reader: str


def _str_dtype():
    return h5py.string_dtype(encoding="utf-8")


def create_store(path: str | Path, object_ids, sources, grid: WavelengthGrid, survey: str = "",
                 reader: str = "", catalog: str = "", labels: dict | None = None) -> StoreInfo:
    """Create an empty store for len(object_ids) rows; `sources` are spectrum paths (or '' for none).

    labels: optional mapping name -> (n_rows,) array stored under /labels (simulated sets carry
    their truth there).
    """
    path = Path(path)
    n_rows = len(object_ids)
    tmp = path.with_name(path.name + ".tmp")
    chunks = (max(1, min(ROW_CHUNK, n_rows)), grid.n_pix)
    with h5py.File(tmp, "w") as h5:
        for name, dtype in (("flux", "f4"), ("ivar", "f4"), ("mask", "u1")):
            h5.create_dataset(name, shape=(n_rows, grid.n_pix), dtype=dtype, chunks=chunks if n_rows else None,
                              compression="lzf" if n_rows else None,
                              shuffle=bool(n_rows), fillvalue=1 if name == "mask" else 0)
        h5.create_dataset("object_id", data=np.array([str(v) for v in object_ids], dtype=object), dtype=_str_dtype())
        h5.create_dataset("source", data=np.array([str(v) for v in sources], dtype=object), dtype=_str_dtype())
        h5.create_dataset("status", data=np.zeros(n_rows, dtype=np.int8))
        h5.create_dataset("error", shape=(n_rows,), dtype=_str_dtype())
        for name, values in (labels or {}).items():
            values = np.asarray(values)
            if values.dtype.kind in "UO":
                h5.create_dataset(f"labels/{name}", data=values.astype(object), dtype=_str_dtype())
            else:
                h5.create_dataset(f"labels/{name}", data=values)
        h5.attrs.update({
            "layout_version": LAYOUT_VERSION, **grid.to_dict(), "survey": survey, "reader": reader,
            "catalog": catalog, "annotate_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "store_id": uuid.uuid4().hex,  # new for every store made, so derived files can tell
            "revision": 0,
        })
    tmp.replace(path)
    return open_store(path)


def open_store(path: str | Path) -> StoreInfo:
    """Read a store's description; StoreError if it is missing or of another layout version."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"spectra store not found: {path}")
    try:
        with h5py.File(path, "r") as h5:
            version = int(h5.attrs.get("layout_version", -1))
            if version != LAYOUT_VERSION:
                raise StoreError(f"{path}: store layout version {version}, this annotate reads version "
                                 f"{LAYOUT_VERSION}; re-ingest the catalog into a new store")
            grid = WavelengthGrid(float(h5.attrs["loglam_start"]), float(h5.attrs["loglam_step"]),
                                  int(h5.attrs["n_pix"]))
            return StoreInfo(path, int(h5["status"].shape[0]), grid, str(h5.attrs.get("survey", "")),
                             str(h5.attrs.get("reader", "")))
    except OSError as exc:
        raise StoreError(f"{path}: not a readable HDF5 store ({str(exc).splitlines()[0]}); if a run was killed "
                         "while writing it, delete it and rerun") from None


def prepare_store(path: str | Path, object_ids, sources, grid: WavelengthGrid, survey: str = "",
                  reader: str = "", catalog: str = "") -> tuple[StoreInfo, list[str]]:
    """The store for a catalog's rows, made when missing; an existing one is tied to the rows it
    holds. Returns its description and notes (one line each) on what was reset.

    A store made for another grid or another number of rows is refused. Otherwise every row's
    object id and spectrum path are compared with the catalog's: a row that no longer matches
    (the catalog re-sorted, edited, or another catalog of the same length) is reset to PENDING
    under its new id and path, so that it is read again and never carries another row's
    spectrum; so is every row that failed before (a missing file may have been restored).

    A store HDF5 can no longer open or read (a run killed while HDF5 wrote its metadata) is moved
    aside (`set_aside_if_damaged`) and made anew, so that a resumed run or a requeued shard goes
    on by reading its spectra again."""
    path = Path(path)
    aside = set_aside_if_damaged(path)   # None where there is no file, or it can be trusted
    if not path.exists():
        info = create_store(path, object_ids, sources, grid, survey=survey, reader=reader, catalog=catalog)
        return info, [aside] if aside else []
    info = open_store(path)
    if not _same_grid(info.grid, grid):
        raise StoreError(f"{path} was made for the grid {_describe(info.grid)}, but the model was trained on grid "
                         f"{_describe(grid)}; use a new --store")
    if info.n_rows != len(object_ids):
        raise StoreError(f"{path} has {info.n_rows} rows but the catalog has {len(object_ids)}; use a new --store")
    n_changed = n_failed = 0
    for start in range(0, info.n_rows, COMPARE_CHUNK):  # a chunk of strings at a time: memory stays bounded
        stop = min(start + COMPARE_CHUNK, info.n_rows)
        ids = np.array([str(v) for v in object_ids[start:stop]], dtype=object)
        srcs = np.array([str(v) for v in sources[start:stop]], dtype=object)
        with h5py.File(path, "r") as h5:   # opened to write only where rows change (that raises the revision)
            stored_ids = np.array([_text(v) for v in h5["object_id"][start:stop]], dtype=object)
            stored_src = np.array([_text(v) for v in h5["source"][start:stop]], dtype=object)
            status = h5["status"][start:stop]
        changed = (stored_ids != ids) | (stored_src != srcs)
        failed = ~changed & (status != STATUS["PENDING"]) & (status != STATUS["OK"])
        reset = changed | failed
        if reset.any():
            with writing_to(path) as h5:   # pending in the file before a row takes its new id: killed in
                status[reset] = STATUS["PENDING"]   # between, a row never holds another row's spectrum as OK
                h5["status"][start:stop] = status
                errors = h5["error"][start:stop]
                errors[reset] = ""
                h5["error"][start:stop] = errors
                h5.flush()
                if changed.any():
                    h5["object_id"][start:stop] = ids
                    h5["source"][start:stop] = srcs
        n_changed += int(changed.sum())
        n_failed += int(failed.sum())
    notes = []
    if n_changed:
        notes.append(f"{path}: {n_changed} of {info.n_rows} rows hold another object id or spectrum path than the "
                     "catalog's (re-sorted or edited?); they are read again")
    if n_failed:
        notes.append(f"{path}: {n_failed} rows that could not be read before are tried again")
    return info, notes


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _unreadable(path: Path) -> str | None:
    """Why the store at `path` cannot be trusted: HDF5's error (its first line), or a change to it
    that never finished (`writing_to`); None when it opens, is not marked mid-change, and its rows'
    statuses and the first and last row's id and path read (all of them are read a chunk at a
    time when the store is tied to the catalog)."""
    try:
        with h5py.File(path, "r") as h5:
            if int(h5.attrs.get("writing", 0)):
                return "a run stopped while writing it"
            for name in ("status", "done"):   # a spectra store's statuses, an image store's marks
                if name in h5:
                    h5[name][()]
            for name in ("object_id", "source"):
                if name in h5 and h5[name].shape[0]:
                    h5[name][0], h5[name][-1]
    except OSError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def set_aside_if_damaged(path: str | Path, redo: str = "every row is read again") -> str | None:
    """Move a store at `path` that cannot be trusted (HDF5 cannot open or read it, or a change to it
    never finished: `_unreadable`) to `<name>.set-aside-<UTC time>` beside it, and say so in one
    line (None: nothing moved). Only files that begin with the HDF5
    signature are touched: anything else (a catalog given as --store by mistake) is left for
    `open_store` to refuse. A file another process holds open for writing (HDF5's file lock) is
    refused, never moved."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if handle.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
                return None
    except OSError:
        return None
    reason = _unreadable(path)
    if reason is None:
        return None
    if "unable to lock" in reason.lower():   # HDF5: another process holds the file open for writing
        raise StoreError(f"{path} is open in another process ({reason}); wait for that run to finish or "
                         "use another --store")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.set-aside-{stamp}")
    path.replace(aside)
    return f"{path}: not usable ({reason}); moved to {aside.name} and made anew, so {redo}"


def _same_grid(a: WavelengthGrid, b: WavelengthGrid) -> bool:
    return a.n_pix == b.n_pix and abs(a.loglam_start - b.loglam_start) < 1e-9 and abs(a.loglam_step - b.loglam_step) < 1e-12


def _describe(grid: WavelengthGrid) -> str:
    return f"{grid.n_pix} pixels of {grid.loglam_step:g} dex from {10 ** grid.loglam_start:.1f} Å"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_rows(path: str | Path, start: int, stop: int) -> dict:
    """Rows [start, stop) as arrays: flux, ivar (float32), mask (bool), status (int8)."""
    with h5py.File(path, "r") as h5:
        return {
            "flux": h5["flux"][start:stop], "ivar": h5["ivar"][start:stop],
            "mask": h5["mask"][start:stop].astype(bool), "status": h5["status"][start:stop],
        }


def read_labels(path: str | Path) -> dict:
    """The /labels group as name -> array (strings decoded)."""
    with h5py.File(path, "r") as h5:
        if "labels" not in h5:
            return {}
        out = {}
        for name, dataset in h5["labels"].items():
            values = dataset[()]
            if dataset.dtype.kind == "O":
                values = np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)
            out[name] = values
        return out


def read_status(path: str | Path) -> tuple[np.ndarray, list[str]]:
    with h5py.File(path, "r") as h5:
        errors = [e.decode() if isinstance(e, bytes) else e for e in h5["error"][()]]
        return h5["status"][()], errors


def store_revision(path: str | Path) -> int:
    """How many times rows of the store were written or reset (0 for a store made by a version
    that did not count)."""
    with h5py.File(path, "r") as h5:
        return int(h5.attrs.get("revision", 0))


@contextmanager
def writing_to(path: str | Path, count: bool = True):
    """The store (or an image store) open to change it. Before any change, `revision` is raised
    (with `count`: files made from a spectra store's rows, such as an image store, then know they
    are stale) and `writing` is set, both flushed to the file; `writing` is cleared once the change
    has reached it. HDF5 is not crash-safe: a
    process killed while it writes (a preempted job, kill -9) can leave metadata that points past
    the file's end, which may open and read but fails at the next write. A store found with
    `writing` set is therefore set aside and made anew (`set_aside_if_damaged`). An exception
    raised in the block other than HDF5's own (an interrupt: the file is still closed in order)
    clears the mark too."""
    with h5py.File(path, "r+") as h5:
        if count:
            h5.attrs["revision"] = int(h5.attrs.get("revision", 0)) + 1
        h5.attrs["writing"] = 1
        h5.flush()
        try:
            yield h5
        except BaseException as exc:
            if not isinstance(exc, OSError):   # HDF5's own failure keeps the mark
                _finished(h5)
            raise
        _finished(h5)


def _finished(h5) -> None:
    h5.flush()
    h5.attrs["writing"] = 0


def write_rows(path: str | Path, start: int, rows: dict) -> None:
    """Write arrays for rows [start, start + len) (keys flux, ivar, mask, status, error).

    The rows' data and errors are flushed to the file before their status is written: HDF5 writes
    its cached chunks in no set order when a file is closed, so a process killed then (a preempted
    SLURM job, a kill -9) could leave a row marked OK over data that never reached the file, and a
    resumed run would predict on zeros. Killed at any point now, a row is either still PENDING (and
    read again on resume) or OK with its data."""
    stop = start + len(rows["status"])
    with writing_to(path) as h5:
        for name in ("flux", "ivar", "mask"):
            h5[name][start:stop] = rows[name]
        if "error" in rows:
            h5["error"][start:stop] = np.array(rows["error"], dtype=object)
        h5.flush()
        h5["status"][start:stop] = rows["status"]


def read_object_ids(path: str | Path) -> list[str]:
    """The store's object ids, as text, in row order."""
    with h5py.File(path, "r") as h5:
        return [_text(v) for v in h5["object_id"][()]]


def record_flux_units(store_path, units: list[str]) -> None:
    """The store's `flux_unit` attribute: the units of its spectra, the ones of earlier ingests kept."""
    with writing_to(store_path) as h5:
        before = _text(h5.attrs.get("flux_unit", ""))
        known = [unit for unit in before.split("; ") if unit] if before else []
        h5.attrs["flux_unit"] = "; ".join(known + [unit for unit in units if unit not in known])
