import h5py
import numpy as np
import pytest
from astropy.io import fits

from annotate.errors import StoreError
from annotate.grid import WavelengthGrid
from annotate.simulate.writer import write_sdss_spec
from annotate.ingest import ingest
from annotate.store import STATUS, create_store, open_store, read_rows, read_status, write_rows
from helpers import run_dying_once_written

GRID = WavelengthGrid(3.6, 1e-4, 300)


def _files(tmp_path, n=6):
    loglam = 3.595 + 1e-4 * np.arange(420)
    paths = []
    for i in range(n):
        flux = np.full(420, 10.0 + i, np.float32)
        paths.append(str(write_sdss_spec(tmp_path / f"spec-{i}.fits", loglam, flux, np.ones(420, np.float32),
                                         np.zeros(420, bool), {"CLASS": "GALAXY", "Z": 0.1})))
    return paths


def test_ingest_resamples_every_row_and_reports_bad_ones(tmp_path):
    paths = _files(tmp_path)
    paths[2] = str(tmp_path / "missing.fits")
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = not fits")
    paths[4] = str(tmp_path / "broken.fits")
    store = tmp_path / "store.h5"
    create_store(store, [f"id{i}" for i in range(6)], paths, GRID, survey="sdss_dr18")
    counts = ingest(store, paths, scheduler="sync", rows_per_task=4)
    assert counts == {"PENDING": 0, "OK": 4, "NO_SPECTRUM": 2, "NO_USABLE_PIXELS": 0, "PATH_REFUSED": 0}
    rows = read_rows(store, 0, 6)
    assert rows["flux"].shape == (6, 300)
    np.testing.assert_allclose(rows["flux"][3], 13.0, rtol=1e-5)
    assert rows["mask"][2].all() and not rows["mask"][0].any()
    status, errors = read_status(store)
    assert "not found" in errors[2] and "unreadable" in errors[4]


@pytest.mark.parametrize("scheduler", ["distributed", "processes"])
def test_ingest_on_worker_processes_matches_sync(tmp_path, scheduler):
    paths = _files(tmp_path, n=5)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for store in (a, b):
        create_store(store, list(range(5)), paths, GRID)
    ingest(a, paths, scheduler="sync")
    ingest(b, paths, scheduler=scheduler, n_workers=2, rows_per_task=2)
    for key in ("flux", "ivar", "mask", "status"):
        np.testing.assert_array_equal(read_rows(a, 0, 5)[key], read_rows(b, 0, 5)[key])
    assert read_status(a)[1] == read_status(b)[1]


def test_ingest_is_resumable(tmp_path):
    paths = _files(tmp_path, n=4)
    store = tmp_path / "store.h5"
    create_store(store, list(range(4)), paths, GRID)
    ingest(store, paths[:2] + ["", ""], scheduler="sync")  # first pass: rows 2, 3 have no path
    with h5py.File(store, "r+") as h5:  # mark rows 2, 3 as not yet done (an interrupted ingest)
        h5["status"][2:] = STATUS["PENDING"]
        h5["flux"][0] = -1.0  # a done row that must not be read again
    ingest(store, paths, scheduler="sync")
    rows = read_rows(store, 0, 4)
    assert (rows["status"] == STATUS["OK"]).all()
    assert (rows["flux"][0] == -1.0).all()


def test_store_attributes_and_layout_version(tmp_path):
    store = tmp_path / "s.h5"
    create_store(store, ["a"], ["x"], GRID, survey="lamost_dr10")
    info = open_store(store)
    assert info.grid == GRID and info.n_rows == 1 and info.survey == "lamost_dr10"
    with h5py.File(store, "r+") as h5:
        h5.attrs["layout_version"] = 0
    with pytest.raises(StoreError, match="layout version 0"):
        open_store(store)


def test_not_hdf5(tmp_path):
    path = tmp_path / "x.h5"
    path.write_text("hello")
    with pytest.raises(StoreError, match="not a readable HDF5 .*killed while writing it, delete it and rerun"):
        open_store(path)


def test_zero_ivar_everywhere_is_no_usable_pixels(tmp_path):
    loglam = 3.595 + 1e-4 * np.arange(420)
    path = write_sdss_spec(tmp_path / "zero.fits", loglam, np.ones(420, np.float32), np.zeros(420, np.float32),
                           np.zeros(420, bool), {"CLASS": "STAR"})
    store = tmp_path / "s.h5"
    create_store(store, ["a"], [str(path)], GRID)
    counts = ingest(store, [str(path)], scheduler="sync")
    assert counts["NO_USABLE_PIXELS"] == 1
    assert "0 usable pixels" in read_status(store)[1][0]


def test_ingest_applies_the_survey_mask_bits_and_records_the_flux_unit(tmp_path):
    """A pixel flagged only BRIGHTSKY (SPPIXMASK 23) is usable by the reader's own bits and
    unusable when the survey's bits include it; the store says what its flux is."""
    from annotate.readers import FLUX_UNIT

    paths = _files(tmp_path, n=1)
    with fits.open(paths[0], mode="update") as hdul:
        hdul["COADD"].data["and_mask"][100:110] = 1 << 23
    stores = {}
    for bits in (None, 1 << 23):
        store = tmp_path / f"store-{bits}.h5"
        create_store(store, ["a"], paths, GRID, survey="sdss_dr18")
        ingest(store, paths, scheduler="sync", bad_bits=bits)
        stores[bits] = read_rows(store, 0, 1)["mask"][0].astype(bool)
        with h5py.File(store) as h5:
            assert h5.attrs["flux_unit"] == FLUX_UNIT
    assert not stores[None].any()
    assert 8 <= stores[1 << 23].sum() <= 12  # the ten flagged pixels, resampled onto the grid


_WRITES_ROWS = r"""
import sys
import numpy as np
from annotate.store import write_rows

path, n_pix = sys.argv[1], int(sys.argv[2])
rows = {"flux": np.full((3, n_pix), 2.5, np.float32), "ivar": np.ones((3, n_pix), np.float32),
        "mask": np.zeros((3, n_pix), np.uint8), "status": np.ones(3, np.int8), "error": ["", "", ""]}
write_rows(path, 1, rows)
"""


def test_a_row_marked_ok_has_its_data_even_when_the_writer_dies_right_after(tmp_path):
    """A process killed while writing rows (a preempted SLURM job) must not leave a row whose
    status is OK over data that never reached the file: resuming would predict on zeros. The data
    are flushed to the file before the status is written."""
    grid = WavelengthGrid()
    path = tmp_path / "s.h5"
    create_store(path, [f"id{i}" for i in range(6)], [""] * 6, grid)
    run_dying_once_written("/status", _WRITES_ROWS, path, grid.n_pix)
    status, _ = read_status(path)
    rows = read_rows(path, 0, 6)
    ok = status == STATUS["OK"]
    assert ok[1:4].all() and not ok[[0, 4, 5]].any()
    np.testing.assert_array_equal(rows["flux"][1:4], 2.5)
    np.testing.assert_array_equal(rows["mask"][1:4], 0)


def test_a_store_killed_while_writing_is_set_aside_by_the_next_run_and_a_finished_write_is_not(tmp_path):
    """HDF5 is not crash-safe: killed mid-write, a store may open and read yet fail at its next
    write (metadata that points past the file's end: 'addr overflow', seen in the fault trials).
    Every change marks the store `writing` first and clears the mark once done; a marked store is
    moved aside and made anew, never reused."""
    from annotate.store import prepare_store

    grid = WavelengthGrid()
    path = tmp_path / "s.h5"
    ids = [f"id{i}" for i in range(6)]
    create_store(path, ids, [""] * 6, grid)
    write_rows(path, 0, {"flux": np.ones((1, grid.n_pix), np.float32), "ivar": np.ones((1, grid.n_pix), np.float32),
                         "mask": np.zeros((1, grid.n_pix), np.uint8), "status": np.ones(1, np.int8)})
    _, notes = prepare_store(path, ids, [""] * 6, grid)   # finished writes: reused as it is
    assert notes == [] and read_status(path)[0][0] == STATUS["OK"]
    run_dying_once_written("/status", _WRITES_ROWS, path, grid.n_pix)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["writing"] == 1
    _, notes = prepare_store(path, ids, [""] * 6, grid)
    assert len(notes) == 1 and "a run stopped while writing it" in notes[0] and "made anew" in notes[0]
    assert (read_status(path)[0] == STATUS["PENDING"]).all()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("s.h5.set-aside-")]
    assert len(aside) == 1 and (read_status(aside[0])[0][1:4] == STATUS["OK"]).all()   # kept as it was


def test_an_ingest_stopped_after_its_first_task_has_recorded_that_tasks_flux_unit(tmp_path, monkeypatch):
    """The unit goes into the store before the rows are marked read: a rerun skips those rows, so
    it could not add the unit afterwards (the cross-check's plots label their axes with it)."""
    import annotate.ingest as ingest_module
    from annotate.readers import FLUX_UNIT

    paths = _files(tmp_path, n=6)
    store = tmp_path / "s.h5"
    create_store(store, [f"id{i}" for i in range(6)], paths, GRID, survey="sdss_dr18")
    write_rows = ingest_module.write_rows

    def stopped_after_the_first(*args):
        write_rows(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest_module, "write_rows", stopped_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        ingest(store, paths, scheduler="sync", rows_per_task=2)
    status, _ = read_status(store)
    assert (status[:2] == STATUS["OK"]).all() and (status[2:] == STATUS["PENDING"]).all()
    with h5py.File(store) as h5:
        assert h5.attrs["flux_unit"] == FLUX_UNIT


_RESORTS = r"""
import sys
from annotate.grid import WavelengthGrid
from annotate.store import prepare_store

ids = [f"id{i}" for i in (1, 0, 2, 3)]          # the catalog re-sorted: rows 0 and 1 swapped
prepare_store(sys.argv[1], ids, [f"spec-{i}.fits" for i in (1, 0, 2, 3)], WavelengthGrid(3.6, 1e-4, 300))
"""


def test_a_row_given_a_new_id_is_pending_even_when_the_process_dies_right_after(tmp_path):
    """A store reused with a re-sorted catalog: rows whose id changed are reset to PENDING before
    they take their new ids, so a process killed in between never leaves row 0 marked OK under the
    id of the object in row 1 while it still holds row 0's spectrum."""
    path = tmp_path / "s.h5"
    create_store(path, [f"id{i}" for i in range(4)], [f"spec-{i}.fits" for i in range(4)], GRID)
    rows = {"flux": np.arange(4, dtype=np.float32)[:, None] + np.zeros((4, GRID.n_pix), np.float32),
            "ivar": np.ones((4, GRID.n_pix), np.float32), "mask": np.zeros((4, GRID.n_pix), np.uint8),
            "status": np.full(4, STATUS["OK"], np.int8)}
    write_rows(path, 0, rows)
    run_dying_once_written("/object_id", _RESORTS, path)
    status, _ = read_status(path)
    with h5py.File(path) as h5:
        stored = [v.decode() if isinstance(v, bytes) else v for v in h5["object_id"][()]]
    assert stored == ["id1", "id0", "id2", "id3"]
    assert (status[:2] == STATUS["PENDING"]).all() and (status[2:] == STATUS["OK"]).all()
