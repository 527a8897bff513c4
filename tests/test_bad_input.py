"""Bad input through `annotate run`, end to end. Every case ends either in one clear error line
(exit code 2, no traceback, nothing under the output name) or in flagged rows with NaN
predictions while the run goes on (exit code 3, or 0 where the input is odd but usable); never a
crash, never a partial output. After every case the input catalog and spectra are byte-identical
to before."""

import gzip
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import pytest
from astropy.io import fits

from annotate.cli import main
from helpers import INPUT_BITS, LOGLAM, N_PIX, Case, _columns, _hashes, _interrupt_a_run
from annotate.flags import PredFlag
from annotate.simulate.writer import write_catalog, write_sdss_spec



# ------------------------------------------------------------------------------------------------
# spectra that are bad in one way: row 0 is flagged with NaN predictions, the others are predicted

def _rewrite(case, **arrays):
    values = {"loglam": LOGLAM, "flux": np.full(N_PIX, 10.0, np.float32), "ivar": np.ones(N_PIX, np.float32),
              **arrays}
    write_sdss_spec(case.paths[0], values["loglam"], values["flux"], values["ivar"],
                    np.zeros(len(values["loglam"]), bool), {"CLASS": "GALAXY"})


def truncated(case):
    data = case.paths[0].read_bytes()
    case.paths[0].write_bytes(data[: len(data) // 2])


def no_coadd_hdu(case):
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column("flux", "E", array=np.ones(10, np.float32))], name="OTHER")]).writeto(case.paths[0], overwrite=True)


def wrong_column_types(case):
    coadd = fits.BinTableHDU.from_columns([fits.Column("flux", "10A", array=np.array(["x"] * N_PIX)),
                                           fits.Column("loglam", "E", array=LOGLAM.astype(np.float32)),
                                           fits.Column("ivar", "E", array=np.ones(N_PIX, np.float32))], name="COADD")
    fits.HDUList([fits.PrimaryHDU(), coadd]).writeto(case.paths[0], overwrite=True)


def empty_file(case):
    case.paths[0].write_bytes(b"")


def text_file(case):
    case.paths[0].write_text("this is not a FITS file\n")


def directory_instead_of_file(case):
    case.paths[0].unlink()
    case.paths[0].mkdir()


def missing_file(case):
    case.paths[0].unlink()


SPECTRUM_CASES = {
    # name: (how row 0's spectrum is spoiled, the flag row 0 gets)
    "truncated FITS": (truncated, PredFlag.NO_SPECTRUM),
    "FITS with no COADD HDU": (no_coadd_hdu, PredFlag.NO_SPECTRUM),
    "wrong column types": (wrong_column_types, PredFlag.NO_SPECTRUM),
    "LOGLAM in Angstrom": (lambda c: _rewrite(c, loglam=10**LOGLAM), PredFlag.NO_SPECTRUM),
    "all-NaN flux": (lambda c: _rewrite(c, flux=np.full(N_PIX, np.nan, np.float32)), PredFlag.NO_USABLE_PIXELS),
    "all-inf flux": (lambda c: _rewrite(c, flux=np.full(N_PIX, np.inf, np.float32)), PredFlag.NO_USABLE_PIXELS),
    "zero ivar": (lambda c: _rewrite(c, ivar=np.zeros(N_PIX, np.float32)), PredFlag.NO_USABLE_PIXELS),
    "negative ivar": (lambda c: _rewrite(c, ivar=np.full(N_PIX, -1.0, np.float32)), PredFlag.NO_USABLE_PIXELS),
    "shorter than 100 pixels": (lambda c: _rewrite(c, loglam=LOGLAM[:50], flux=np.ones(50, np.float32),
                                                   ivar=np.ones(50, np.float32)), PredFlag.NO_USABLE_PIXELS),
    "outside the grid": (lambda c: _rewrite(c, loglam=4.5 + 1e-4 * np.arange(N_PIX)), PredFlag.NO_USABLE_PIXELS),
    "empty file": (empty_file, PredFlag.NO_SPECTRUM),
    "not a FITS file": (text_file, PredFlag.NO_SPECTRUM),
    "a directory in its place": (directory_instead_of_file, PredFlag.NO_SPECTRUM),
    "missing file": (missing_file, PredFlag.NO_SPECTRUM),
}


@pytest.mark.parametrize("name", list(SPECTRUM_CASES))
def test_a_bad_spectrum_is_a_flagged_row(name, tmp_path, micro_model, capsys):  # noqa: F811
    spoil, flag = SPECTRUM_CASES[name]
    case = Case(tmp_path, micro_model).write()
    spoil(case)
    before = _hashes(case.inputs)
    assert main(case.argv()) == 3
    err = capsys.readouterr().err
    assert err.startswith("annotate: error: 1 of 4 rows got no prediction") and "Traceback" not in err
    with fits.open(case.out) as hdul:
        data = hdul[1].data
        assert data["PRED_FLAGS"][0] & int(flag), data["PRED_FLAGS"]
        assert np.isnan(data["PRED_Z"][0]) and data["PRED_CLASS"][0].strip() == ""
        assert np.isfinite(data["PRED_Z"][1:]).all() and (data["PRED_FLAGS"][1:] & 3 == 0).all()
        assert list(data["SPECOBJID"]) == [1000, 1001, 1002, 1003]
    assert _hashes(case.inputs) == before
    assert [p.name for p in case.out_dir.iterdir() if p.name.startswith(".")] == []  # no temp or lock left


# ------------------------------------------------------------------------------------------------
# odd but usable input: the run goes on and predicts every row

def descending(case):
    _rewrite(case, loglam=LOGLAM[::-1].copy(), flux=np.linspace(5, 15, N_PIX).astype(np.float32)[::-1].copy())


def gzip_compressed(case):
    for path in case.paths:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()


def odd_characters_in_paths(case):
    odd = case.root / "in" / "spéctra dir 'q' \"dq\""
    shutil.move(case.spectra, odd)
    case.spectra = odd
    catalog = case.inputs / "cat ä 'x'.fits"
    case.catalog.rename(catalog)
    case.catalog = catalog
    case.out = case.out_dir / "out ü \"y\".fits"


def duplicate_ids(case):
    columns = _columns()
    columns["SPECOBJID"][1] = columns["SPECOBJID"][0]
    write_catalog(case.catalog, columns)


def nothing_selectable(case):
    columns = _columns()
    columns["ZWARNING"][:] = 4
    write_catalog(case.catalog, columns)


USABLE_CASES = {
    # name: (change, flags each row must carry)
    "descending wavelengths": (descending, [0, 0, 0, 0]),
    "gzip-compressed spectra": (gzip_compressed, [0, 0, 0, 0]),
    "non-ASCII, space and quote characters in paths": (odd_characters_in_paths, [0, 0, 0, 0]),
    "duplicate object ids": (duplicate_ids, [PredFlag.DUPLICATE_ID] * 2 + [0, 0]),
    "a catalog with 0 selectable rows": (nothing_selectable, [PredFlag.NOT_SELECTED | PredFlag.NO_REFERENCE_Z] * 4),
}


@pytest.mark.parametrize("name", list(USABLE_CASES))
def test_odd_but_usable_input_is_predicted(name, tmp_path, micro_model, capsys):  # noqa: F811
    change, flags = USABLE_CASES[name]
    case = Case(tmp_path, micro_model).write()
    change(case)
    before = _hashes(case.inputs)
    assert main(case.argv()) == 0, capsys.readouterr().err
    with fits.open(case.out) as hdul:
        data = hdul[1].data
        assert np.isfinite(data["PRED_Z"]).all()
        # the input's own bits (the template fit's doubts, bits 8-11, are about the science)
        assert [int(f) & INPUT_BITS for f in data["PRED_FLAGS"]] == [int(f) for f in flags]
    assert _hashes(case.inputs) == before


def test_a_path_leaving_the_spectra_root_is_refused_per_row(tmp_path, micro_model, capsys):  # noqa: F811
    case = Case(tmp_path, micro_model).write()
    columns = _columns()
    columns["RUN2D"][0] = "../../../../../../../../etc/passwd#"
    write_catalog(case.catalog, columns)
    before = _hashes(case.inputs)
    assert main(case.argv()) == 3
    with fits.open(case.out) as hdul:
        assert hdul[1].data["PRED_FLAGS"][0] & int(PredFlag.PATH_REFUSED)
        assert np.isnan(hdul[1].data["PRED_Z"][0])
    assert _hashes(case.inputs) == before


# ------------------------------------------------------------------------------------------------
# input the run cannot use at all: one line, exit code 2, no output file

def _catalog_without(column):
    def change(case):
        columns = _columns()
        del columns[column]
        write_catalog(case.catalog, columns)
    return change


def _empty_catalog(case):
    write_catalog(case.catalog, {k: v[:0] for k, v in _columns().items()})


def _truncated_catalog(case):
    data = case.catalog.read_bytes()
    case.catalog.write_bytes(data[:3000])


def _old_store(case):
    import h5py

    store = case.out_dir / "old.h5"
    with h5py.File(store, "w") as h5:
        h5.attrs["layout_version"] = 0
    case.extra = ["--store", str(store)]


def _store_of_another_catalog(case):
    from annotate.grid import WavelengthGrid
    from annotate.store import create_store

    store = case.out_dir / "other.h5"
    create_store(store, np.arange(7), [""] * 7, WavelengthGrid())
    case.extra = ["--store", str(store)]


def _model_copy(case):
    folder = case.root / "model"
    shutil.copytree(case.model, folder)
    case.model = folder
    return folder


def _model_with_another_grid(case):
    """The store exists, made by a run with the right model; the new model wants another grid."""
    import json

    store = case.out_dir / "made-before.h5"
    assert main(case.argv("--store", str(store), "--out", str(case.root / "first.fits"))) == 0
    case.extra = ["--store", str(store)]
    folder = _model_copy(case)
    config = json.loads((folder / "config.json").read_text())
    config["grid"]["n_pix"] = 3000
    (folder / "config.json").write_text(json.dumps(config))


def _model_with_missing_tensors(case):
    from safetensors.torch import load_file, save_file

    folder = _model_copy(case)
    state = load_file(folder / "model.safetensors")
    del state["class_head.weight"]
    save_file(state, folder / "model.safetensors")


def _pickle_as_checkpoint(case):
    path = case.root / "model.pt"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    case.model = path


def _pickle_inside_checkpoint_folder(case):
    folder = _model_copy(case)
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


def _checkpoint_without_config(case):
    folder = _model_copy(case)
    (folder / "config.json").unlink()


def _unwritable_output_dir(case):
    case.out = case.root / "missing-dir" / "out.fits"


def _output_is_the_input(case):
    case.out = case.catalog


def _hdf5_with_two_tables(case):
    import pandas as pd

    h5 = case.inputs / "cat.h5"
    pd.DataFrame({"SPECOBJID": [1], "Z": [0.1]}).to_hdf(h5, key="a", format="table")
    pd.DataFrame({"SPECOBJID": [1], "Z": [0.1]}).to_hdf(h5, key="b", format="table")
    case.catalog = h5


ERROR_CASES = {
    # name: (change, extra arguments, the error line's pattern)
    "a catalog missing a required column": (_catalog_without("Z"), [], r"lacks columns required by survey sdss_dr18: Z"),
    "an empty catalog": (_empty_catalog, [], r"the catalog has no rows"),
    "a truncated catalog": (_truncated_catalog, [], r"truncated or damaged FITS file \(3000 bytes"),
    "a catalog that does not exist": (lambda c: c.catalog.unlink(), [], r"catalog not found"),
    "an HDF5 catalog with two tables": (_hdf5_with_two_tables, [], r"exactly one table; found /a \(pandas\), /b"),
    "an unknown survey": (None, ["--survey", "nosuchsurvey"], r"nosuchsurvey"),
    "an HDF5 store of an older layout": (_old_store, [], r"store layout version 0"),
    "a store made for another catalog": (_store_of_another_catalog, [], r"has 7 rows but the catalog has 4"),
    "a checkpoint of another grid than the store": (_model_with_another_grid, [], r"trained on grid"),
    "a checkpoint with missing tensors": (_model_with_missing_tensors, [], r"missing: class_head.weight"),
    "a pickle file passed as a checkpoint": (_pickle_as_checkpoint, [], r"never from pickle files"),
    "a pickle inside a checkpoint folder": (_pickle_inside_checkpoint_folder, [], r"not a readable safetensors file"),
    "a checkpoint folder without config.json": (_checkpoint_without_config, [], r"no config.json"),
    "an unwritable output directory": (_unwritable_output_dir, [], r"output directory is missing or not writable"),
    "the output is the input": (_output_is_the_input, [], r"refusing to overwrite the input catalog"),
    "--shard-size 0": (None, ["--shard-size", "0"], r"--shard-size must be at least 1"),
    "--shard outside the plan": (None, ["--shard-size", "2", "--shard", "5"], r"--shard 5: the plan has shards 0-1"),
    "a spectra root that does not exist": (None, ["--spectra-root", "no-such-folder"], r"--spectra-root no-such-folder: no such folder"),
    "a sharded run's spectra root that does not exist": (None, ["--shard-size", "2", "--spectra-root", "no-such-folder"],
                                                         r"--spectra-root no-such-folder: no such folder"),
}


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_unusable_input_is_one_error_line(name, tmp_path, micro_model, capsys):  # noqa: F811
    change, extra, pattern = ERROR_CASES[name]
    case = Case(tmp_path, micro_model).write()
    case.extra = []
    if change is not None:
        change(case)
    before = _hashes(case.inputs)
    code = main(case.argv(*case.extra, *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("annotate: error: "), err
    assert __import__("re").search(pattern, lines[0]), lines[0]
    if case.out != case.catalog:
        assert not case.out.exists()
        assert not case.out.with_name(case.out.name + ".run").exists()   # no run folder tied to a plan
    assert _hashes(case.inputs) == before
    assert not [p for p in case.out_dir.iterdir() if ".tmp" in p.name or p.name.endswith(".lock")]


def test_debug_shows_the_traceback(tmp_path, micro_model):  # noqa: F811
    case = Case(tmp_path, micro_model).write()
    _catalog_without("Z")(case)
    from annotate.errors import CatalogError

    with pytest.raises(CatalogError):
        main(case.argv("--debug"))


# ------------------------------------------------------------------------------------------------
# faults while writing: a full disk, Ctrl-C, a second run on the same output

def test_a_full_disk_leaves_no_partial_output(tmp_path, micro_model):  # noqa: F811
    """The output may grow to 8 kB only (RLIMIT_FSIZE, as a full disk would stop it)."""
    case = Case(tmp_path, micro_model).write()
    before = _hashes(case.inputs)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from annotate.cli import main
        from annotate.pipeline import RunSettings, run
        from annotate.store import create_store
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (8_000, 8_000))
        sys.exit(main({case.argv("--store", str(tmp_path / "store-elsewhere.h5"))!r}))
    """)
    # the store (written first, larger than the limit) is made beforehand without the limit
    assert main(case.argv("--store", str(tmp_path / "store-elsewhere.h5"), "--out", str(tmp_path / "x.fits"))) == 0
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "File too large" in lines[0], done.stderr
    assert not case.out.exists() and not [p for p in case.out_dir.iterdir()]
    assert _hashes(case.inputs) == before


@pytest.mark.parametrize("sharded", [False, True])
def test_no_room_for_the_output_is_refused_before_any_spectrum_is_read(tmp_path, micro_model, monkeypatch, capsys,  # noqa: F811
                                                                       sharded):
    from types import SimpleNamespace

    case = Case(tmp_path, micro_model).write()
    before = _hashes(case.inputs)
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=2, f_frsize=4096)
                        if Path(path) == case.out_dir else real(path))
    assert main(case.argv(*(["--shard-size", "2"] if sharded else []))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"not enough free space in {case.out_dir}" in err[0] and "0 MB free" in err[0]
    assert list(case.out_dir.iterdir()) == []  # no store, no run folder: nothing was read or written
    assert _hashes(case.inputs) == before


def test_ctrl_c_during_a_run_keeps_the_previous_output(tmp_path, micro_model, monkeypatch, capsys):  # noqa: F811
    import annotate.predict

    case = Case(tmp_path, micro_model).write()
    assert main(case.argv()) == 0
    previous = case.out.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(annotate.predict, "predict_store", interrupted)
    assert main(case.argv("--store", str(tmp_path / "new-store.h5"))) == 130
    assert "interrupted; outputs were not replaced" in capsys.readouterr().err
    assert case.out.read_bytes() == previous
    assert [p.name for p in case.out_dir.iterdir() if p.name.startswith(".")] == []


def _sigint_a_300_row_run(tmp_path, micro_model, group: bool, extra: tuple = (), min_workers: int = 0) -> None:
    """A real SIGINT to `annotate run` on 300 rows (with batches of 2, a second or more of run after
    its store appears): exit 130, one line, no output, the inputs untouched. Where the signal lands
    is a race (the run may have finished), so a second try is allowed; neither may leave an output."""
    n = 300
    case = Case(tmp_path, micro_model).write(columns={k: np.resize(v, n) for k, v in _columns().items()} | {
        "SPECOBJID": np.arange(2000, 2000 + n), "CATALOGID": np.arange(n) + 5_000_000})
    before = _hashes(case.inputs)
    outcomes = []
    for attempt in range(2):
        code, err = _interrupt_a_run(case, group=group, extra=extra, min_workers=min_workers)
        outcomes.append((code, err.strip().splitlines()[-1:] if err.strip() else []))
        assert not case.out.exists(), outcomes
        if code == 130:
            break
        shutil.rmtree(case.out_dir)
        case.out_dir.mkdir()
    assert outcomes[-1] == (130, ["annotate: interrupted; outputs were not replaced (rerun to resume)"]), outcomes
    assert _hashes(case.inputs) == before


def test_sigint_to_a_running_process_exits_130(tmp_path, micro_model):  # noqa: F811
    """SIGINT to the command's process alone (`kill -INT`)."""
    _sigint_a_300_row_run(tmp_path, micro_model, group=False)


def test_ctrl_c_at_a_terminal_stops_a_run_on_forked_workers_and_leaves_no_process(tmp_path, micro_model):  # noqa: F811
    """Ctrl-C at a terminal reaches the whole process group: the 300-row run, whose ingest and fit
    run on workers forked from it, ends as above, its workers leave the interrupt to it, and none
    of them outlives it (`_interrupt_a_run` checks the group)."""
    from annotate.parallel import can_fork

    if not can_fork():
        pytest.skip("workers are forked on Linux only")
    _sigint_a_300_row_run(tmp_path, micro_model, group=True, extra=("--scheduler", "processes", "--workers", "2"),
                          min_workers=2)


def test_a_second_run_on_the_same_output_is_refused(tmp_path, micro_model, capsys):  # noqa: F811
    import fcntl

    case = Case(tmp_path, micro_model).write()
    lock = case.out.with_name(f".{case.out.name}.lock")
    with open(lock, "a+") as held:  # another process's run holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(case.argv()) == 2
        assert "another annotate run is writing" in capsys.readouterr().err
        assert main(case.argv("--shard-size", "2")) == 2
        fcntl.flock(held, fcntl.LOCK_UN)
    assert main(case.argv()) == 0
