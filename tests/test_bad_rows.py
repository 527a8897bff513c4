"""One bad row never stops a survey run: a row whose path columns cannot make a path (NaN, inf,
text that is no number, bytes that are not UTF-8, a NUL byte, a component longer than the file
system allows, a symlink loop) gets NaN predictions, NO_SPECTRUM and its reason, and the run
goes on to exit 3; a masked value in an astropy-written HDF5 catalog means missing. Each case was
a traceback (or, for the masked Z, a silently wrong reference) before; inputs are hashed before
and after."""

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from annotate.cli import main
from annotate.flags import PredFlag

from helpers import INPUT_BITS, Case, _columns, _hashes


def _float_field(value):
    columns = _columns()
    columns["FIELD"] = np.array([value, 15143.0, 15143.0, 15143.0])
    return columns


def _text(column, first, dtype=None):
    columns = _columns()
    values = [first] + [str(v) for v in columns[column][1:]]
    columns[column] = np.array(values, dtype=dtype) if dtype else np.array(values)
    return columns


ROW_CASES = {
    "nan_field": (lambda: _float_field(np.nan), "FIELD is nan"),
    "inf_field": (lambda: _float_field(np.inf), "FIELD is inf"),
    "text_catalogid": (lambda: _text("CATALOGID", "not-a-number"), "no spectrum path"),
    "non_utf8_run2d": (lambda: _text("RUN2D", b"v6_\xff\xfe", dtype="S8"), "no spectrum path"),
    "nul_in_run2d": (lambda: _text("RUN2D", "v6\x000_4"), "no spectrum path"),
    "component_too_long": (lambda: _text("RUN2D", "v" * 300), "unusable"),
}


@pytest.mark.parametrize("name", sorted(ROW_CASES))
def test_row_whose_path_columns_make_no_path_is_flagged_and_the_run_goes_on(tmp_path, micro_model, name, capsys):
    make, reason = ROW_CASES[name]
    case = Case(tmp_path, micro_model)
    columns = make()
    case.write(_columns())  # spectra for the good rows (rows 1-3 keep their values)
    from annotate.simulate.writer import write_catalog

    write_catalog(case.catalog, columns)
    before = _hashes(case.inputs)
    code = main(case.argv())
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert _hashes(case.inputs) == before
    table = Table.read(case.out, mask_invalid=False)
    flags = np.asarray(table["PRED_FLAGS"])
    assert flags[0] & PredFlag.NO_SPECTRUM and np.isnan(table["PRED_Z"][0]) and table["PRED_CLASS"][0] == ""
    assert all(flags[i] & INPUT_BITS == 0 and np.isfinite(table["PRED_Z"][i]) for i in (1, 2, 3))
    assert reason in captured.out


def test_float_path_columns_with_whole_values_make_the_same_paths(tmp_path, micro_model):
    case = Case(tmp_path, micro_model).write()
    columns = _columns()
    columns["FIELD"] = columns["FIELD"].astype(float)
    columns["MJD"] = columns["MJD"].astype(str)
    from annotate.simulate.writer import write_catalog

    write_catalog(case.catalog, columns)
    assert main(case.argv()) == 0
    assert np.isfinite(Table.read(case.out, mask_invalid=False)["PRED_Z"]).all()


def test_symlink_loop_at_a_spectrum_path_is_one_flagged_row(tmp_path, micro_model, capsys):
    case = Case(tmp_path, micro_model).write()
    case.paths[0].unlink()
    case.paths[0].symlink_to(case.paths[0].name)  # points at itself
    assert main(case.argv()) == 3
    table = Table.read(case.out, mask_invalid=False)
    assert table["PRED_FLAGS"][0] & PredFlag.NO_SPECTRUM and np.isfinite(table["PRED_Z"][1:]).all()
    assert "Traceback" not in capsys.readouterr().err


def test_masked_reference_z_in_an_astropy_hdf5_catalog_is_missing_not_its_fill_value(tmp_path, micro_model):
    case = Case(tmp_path, micro_model).write()
    columns = _columns()
    table = Table(columns)
    table["Z"] = MaskedColumn([0.1, 99.0, 0.0, 0.3], mask=[False, True, False, False])
    table["ZWARNING"] = MaskedColumn([0, 0, 0, 0], mask=[False, False, True, False])  # missing passes no rule
    catalog = case.inputs / "cat.h5"
    table.write(catalog, path="catalog", serialize_meta=True)
    before = _hashes(case.inputs)
    out = case.out_dir / "cat.annotated.h5"
    argv = case.argv()
    argv[argv.index("--catalog") + 1], argv[argv.index("--out") + 1] = str(catalog), str(out)
    assert main(argv) == 0
    assert _hashes(case.inputs) == before
    annotated = Table.read(out, path="catalog")
    flags = np.asarray(annotated["PRED_FLAGS"])
    assert flags[1] & PredFlag.NO_REFERENCE_Z
    assert not annotated["PRED_Z_CATASTROPHIC"][1]  # judged against nothing, not against 99.0
    assert not flags[0] & PredFlag.NO_REFERENCE_Z
    assert flags[2] & PredFlag.NOT_SELECTED and not flags[3] & PredFlag.NOT_SELECTED


@pytest.mark.parametrize("layout", ["sharded FITS", "pandas HDF5", "sharded pandas HDF5"])
def test_row_with_a_nan_path_column_in_sharded_runs_and_hdf5_catalogs_is_one_flagged_row(tmp_path, micro_model,
                                                                                          layout):
    import pandas as pd

    case = Case(tmp_path, micro_model).write(_columns())
    columns = _float_field(np.nan)
    extra = ["--shard-size", "2"] if layout.startswith("sharded") else []
    argv = case.argv(*extra)
    out = case.out
    if "HDF5" in layout:
        catalog = case.inputs / "cat.h5"
        pd.DataFrame(columns).to_hdf(catalog, key="catalog", format="table")
        out = case.out_dir / "cat.annotated.h5"
        argv[argv.index("--catalog") + 1], argv[argv.index("--out") + 1] = str(catalog), str(out)
    else:
        from annotate.simulate.writer import write_catalog

        write_catalog(case.catalog, columns)
    before = _hashes(case.inputs)
    assert main(argv) == 3
    assert _hashes(case.inputs) == before
    table = pd.read_hdf(out) if "HDF5" in layout else Table.read(out, mask_invalid=False).to_pandas()
    assert table["PRED_FLAGS"].iloc[0] & PredFlag.NO_SPECTRUM and np.isnan(table["PRED_Z"].iloc[0])
    assert np.isfinite(table["PRED_Z"].iloc[1:]).all()


def test_integer_fits_column_with_tnull_is_missing_where_null(tmp_path, micro_model, capsys):
    from astropy.io import fits

    case = Case(tmp_path, micro_model).write()
    with fits.open(case.catalog) as hdul:
        table = hdul[1]
        field = table.data["FIELD"].copy()
        field[0] = -1
        cols = [fits.Column(c.name, c.format, array=(field if c.name == "FIELD" else table.data[c.name]),
                            null=(-1 if c.name == "FIELD" else None)) for c in table.columns]
    fits.BinTableHDU.from_columns(cols).writeto(case.catalog, overwrite=True)
    before = _hashes(case.inputs)
    assert main(case.argv()) == 3
    assert "FIELD is masked (missing)" in capsys.readouterr().out
    assert _hashes(case.inputs) == before
    out = Table.read(case.out, mask_invalid=False)
    assert out["PRED_FLAGS"][0] & PredFlag.NO_SPECTRUM and np.isfinite(out["PRED_Z"][1:]).all()
