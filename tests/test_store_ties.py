"""A reused spectra store never lies: it is tied to the rows it holds (object id and spectrum path
per row), failed rows are read again on a rerun, and spectra with no information are flagged.

Each test is named after a failure seen before the store was tied to its rows; inputs are hashed
before and after."""

import hashlib

import numpy as np
import pytest
from astropy.table import Table

from annotate.errors import StoreError
from annotate.flags import PredFlag
from annotate.grid import WavelengthGrid
from annotate.pipeline import RunSettings, run
from annotate.simulate.writer import write_catalog, write_sdss_spec
from annotate.store import STATUS, create_store, open_store, prepare_store, read_status, set_aside_if_damaged
from annotate.surveys import load_survey


N = 6
LOGLAM = 3.5530 + 1e-4 * np.arange(4640)


def _columns(first_id: int, catalog_ids) -> dict:
    n = len(catalog_ids)
    return {"SPECOBJID": np.arange(first_id, first_id + n, dtype=np.int64), "RUN2D": np.array(["v6_0_4"] * n),
            "FIELD": np.full(n, 15143), "MJD": np.full(n, 59205), "CATALOGID": np.asarray(catalog_ids, np.int64),
            "CLASS": np.array(["GALAXY"] * n), "Z": np.full(n, 0.1), "ZWARNING": np.zeros(n, np.int64)}


def _write_spectra(root, columns, skip=()):
    """One spectrum per row whose noise level is its own (σ = 1 + row), so that its fit's χ²_ν
    says which spectrum a prediction came from."""
    relative = load_survey("sdss_dr18").spectrum_paths(columns)
    for i, catalog_id in enumerate(columns["CATALOGID"]):
        if i in skip:
            continue
        rng = np.random.default_rng(int(catalog_id))
        sigma = 1.0 + (int(catalog_id) % 100)
        flux = (10.0 + sigma * rng.normal(size=len(LOGLAM))).astype(np.float32)
        write_sdss_spec(root / relative[i], LOGLAM, flux, np.ones(len(LOGLAM), np.float32),
                        np.zeros(len(LOGLAM), bool), {"CLASS": "GALAXY"})
    return relative


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _by_id(table) -> dict:
    return {int(cid): (float(r), str(c)) for cid, r, c in zip(table["CATALOGID"], table["PRED_RCHI2"], table["PRED_CLASS"])}


def _run(catalog, root, model, store, out):
    return run(RunSettings(catalog=catalog, spectra_root=root, model=model, scheduler="sync", progress=False,
                           store=store, out=out))


def test_resorted_catalog_with_its_old_store_gets_each_rows_own_predictions(tmp_path, micro_model):
    columns = _columns(1000, np.arange(N) + 4_000_000)
    _write_spectra(tmp_path / "spectra", columns)
    catalog = write_catalog(tmp_path / "cat.fits", columns)
    store = tmp_path / "store.h5"
    first = Table.read(_run(catalog, tmp_path / "spectra", micro_model, store, tmp_path / "a.fits").output, mask_invalid=False)
    resorted = write_catalog(tmp_path / "resorted.fits", {k: v[::-1].copy() for k, v in columns.items()})
    before = _sha(resorted)
    result = _run(resorted, tmp_path / "spectra", micro_model, store, tmp_path / "b.fits")
    assert _sha(resorted) == before
    second = Table.read(result.output, mask_invalid=False)
    assert list(second["CATALOGID"]) == list(columns["CATALOGID"][::-1])
    expected, got = _by_id(first), _by_id(second)
    assert len({round(v[0], 3) for v in expected.values()}) == N  # the rows are distinguishable
    for catalog_id, (rchi2, cls) in expected.items():
        assert got[catalog_id][1] == cls
        assert got[catalog_id][0] == pytest.approx(rchi2, rel=1e-4), catalog_id
    assert any("re-sorted or edited" in line for line in result.notes)


def test_store_of_another_catalog_with_as_many_rows_is_not_taken_for_this_one(tmp_path, micro_model):
    a = _columns(1000, np.arange(N) + 4_000_000)
    b = _columns(2000, np.arange(N) + 4_000_050)
    _write_spectra(tmp_path / "spectra", a)
    _write_spectra(tmp_path / "spectra", b)
    cat_a = write_catalog(tmp_path / "a.fits", a)
    cat_b = write_catalog(tmp_path / "b.fits", b)
    shared = tmp_path / "shared.h5"
    _run(cat_a, tmp_path / "spectra", micro_model, shared, tmp_path / "a.out.fits")
    reused = Table.read(_run(cat_b, tmp_path / "spectra", micro_model, shared, tmp_path / "b.out.fits").output, mask_invalid=False)
    fresh = Table.read(_run(cat_b, tmp_path / "spectra", micro_model, tmp_path / "fresh.h5",
                            tmp_path / "b.fresh.fits").output, mask_invalid=False)
    np.testing.assert_allclose(reused["PRED_RCHI2"], fresh["PRED_RCHI2"], rtol=1e-4)
    assert list(reused["PRED_CLASS"]) == list(fresh["PRED_CLASS"])


def test_row_whose_file_was_missing_is_predicted_after_the_file_is_restored(tmp_path, micro_model):
    columns = _columns(1000, np.arange(N) + 4_000_000)
    _write_spectra(tmp_path / "spectra", columns, skip=(2,))
    catalog = write_catalog(tmp_path / "cat.fits", columns)
    store = tmp_path / "store.h5"
    first = Table.read(_run(catalog, tmp_path / "spectra", micro_model, store, tmp_path / "a.fits").output, mask_invalid=False)
    assert first["PRED_FLAGS"][2] & PredFlag.NO_SPECTRUM and np.isnan(first["PRED_Z"][2])
    _write_spectra(tmp_path / "spectra", columns)  # the file is back
    result = _run(catalog, tmp_path / "spectra", micro_model, store, tmp_path / "b.fits")
    second = Table.read(result.output, mask_invalid=False)
    assert not second["PRED_FLAGS"][2] & PredFlag.NO_SPECTRUM and np.isfinite(second["PRED_Z"][2])
    assert result.n_predicted == N
    assert any("tried again" in line for line in result.notes)


def test_store_left_unreadable_by_a_killed_run_is_set_aside_and_made_anew(tmp_path, micro_model):
    """A run killed while HDF5 wrote the store's metadata can leave a file HDF5 no longer opens
    ('truncated file'); the resumed run (or requeued shard) must go on, not stop on it."""
    columns = _columns(1000, np.arange(N) + 4_000_000)
    _write_spectra(tmp_path / "spectra", columns)
    catalog = write_catalog(tmp_path / "cat.fits", columns)
    store = tmp_path / "store.h5"
    first = Table.read(_run(catalog, tmp_path / "spectra", micro_model, store, tmp_path / "a.fits").output, mask_invalid=False)
    size = store.stat().st_size
    with open(store, "r+b") as handle:   # what is left when the file's end never reached the disk
        handle.truncate(size // 2)
    with pytest.raises(StoreError, match="truncated file"):
        open_store(store)
    result = _run(catalog, tmp_path / "spectra", micro_model, store, tmp_path / "b.fits")
    second = Table.read(result.output, mask_invalid=False)
    assert result.n_predicted == N
    for catalog_id, (rchi2, cls) in _by_id(first).items():
        assert _by_id(second)[catalog_id][1] == cls
        assert _by_id(second)[catalog_id][0] == pytest.approx(rchi2, rel=1e-4), catalog_id
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("store.h5.set-aside-")]
    assert len(aside) == 1 and aside[0].stat().st_size == size // 2   # kept as it was, never deleted
    assert any("moved to store.h5.set-aside-" in line and "truncated file" in line for line in result.notes)
    assert open_store(store).n_rows == N


def test_a_store_path_holding_something_else_is_refused_and_left_alone(tmp_path):
    """Only an HDF5 file is ever moved: a catalog given as --store by mistake is refused as it was."""
    path = tmp_path / "cat.fits"
    path.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    before = _sha(path)
    with pytest.raises(StoreError, match="not a readable HDF5 store"):
        prepare_store(path, ["a"], [""], WavelengthGrid())
    assert _sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["cat.fits"]


def test_a_store_another_process_is_writing_is_never_moved(tmp_path):
    import subprocess
    import sys

    store = tmp_path / "store.h5"
    create_store(store, ["a"], [""], WavelengthGrid())
    writer = subprocess.Popen([sys.executable, "-c", f"import h5py, time; h = h5py.File({str(store)!r}, 'r+'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="is open in another process"):
            set_aside_if_damaged(store)
    finally:
        writer.kill()
        writer.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.h5"]


def test_store_made_for_another_grid_is_refused_in_one_line(tmp_path):
    store = tmp_path / "store.h5"
    create_store(store, ["a", "b"], ["", ""], WavelengthGrid(3.6, 1e-4, 300))
    with pytest.raises(StoreError, match="made for the grid 300 pixels"):
        prepare_store(store, ["a", "b"], ["", ""], WavelengthGrid())


def test_unchanged_store_is_reused_without_reading_its_rows_again(tmp_path):
    store = tmp_path / "store.h5"
    create_store(store, ["a", "b"], ["/x/a.fits", "/x/b.fits"], WavelengthGrid(3.6, 1e-4, 300))
    with __import__("h5py").File(store, "r+") as h5:
        h5["status"][:] = [STATUS["OK"], STATUS["OK"]]
    _, notes = prepare_store(store, ["a", "b"], ["/x/a.fits", "/x/b.fits"], WavelengthGrid(3.6, 1e-4, 300))
    assert notes == []
    assert list(read_status(store)[0]) == [STATUS["OK"], STATUS["OK"]]
    _, notes = prepare_store(store, ["a", "c"], ["/x/a.fits", "/x/c.fits"], WavelengthGrid(3.6, 1e-4, 300))
    assert list(read_status(store)[0]) == [STATUS["OK"], STATUS["PENDING"]] and len(notes) == 1


@pytest.mark.parametrize("value, reason", [(0.0, "flux is 0 at every usable pixel"), (3e38, "usable pixels")])
def test_spectrum_without_information_is_flagged_not_predicted(tmp_path, micro_model, value, reason):
    columns = _columns(1000, np.arange(3) + 4_000_000)
    relative = _write_spectra(tmp_path / "spectra", columns)
    write_sdss_spec(tmp_path / "spectra" / relative[1], LOGLAM, np.full(len(LOGLAM), value, np.float32),
                    np.ones(len(LOGLAM), np.float32), np.zeros(len(LOGLAM), bool), {"CLASS": "GALAXY"})
    catalog = write_catalog(tmp_path / "cat.fits", columns)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error", RuntimeWarning)  # nothing leaks to the terminal
        result = _run(catalog, tmp_path / "spectra", micro_model, tmp_path / "store.h5", tmp_path / "out.fits")
    table = Table.read(result.output, mask_invalid=False)
    assert table["PRED_FLAGS"][1] & PredFlag.NO_USABLE_PIXELS
    assert table["PRED_CLASS"][1] == "" and np.isnan(table["PRED_Z"][1])
    assert np.isfinite(table["PRED_Z"][0]) and np.isfinite(table["PRED_Z"][2])
    assert any(reason in line for line in result.errors)
