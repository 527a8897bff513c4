"""Cross-check: which rows are compared, the metrics on a hand-made catalog, and the report files."""

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from PIL import Image

from annotate.crosscheck import compute, crosscheck, disagreements, pull_summary, pulls
from annotate.flags import PredFlag
from annotate.simulate.writer import write_catalog
from annotate.writeback import prediction_columns, provenance_cards, write_fits


def _annotated(tmp_path):
    """Ten rows with known outcomes (reference first, then what the 'model' said)."""
    ref_class = np.array(["GALAXY", "GALAXY", "QSO", "QSO", "STAR", "STAR", "GALAXY", "GALAXY", "QSO", "STAR"])
    ref_z = np.array([0.1, 0.2, 2.0, 1.0, 0.0, 0.0, 0.3, 0.5, np.nan, 0.0])
    zwarning = np.array([0, 0, 0, 0, 0, 0, 4, 0, 0, 0])
    columns = {
        "SPECOBJID": np.arange(10, dtype=np.int64) + 100, "FIELD": np.full(10, 15143), "MJD": np.full(10, 59205),
        "CATALOGID": np.arange(10, dtype=np.int64) + 27021600000000000, "RUN2D": np.array(["v6_0_4"] * 10),
        "CLASS": ref_class, "Z": ref_z, "Z_ERR": np.full(10, 1e-4), "ZWARNING": zwarning,
        "SN_MEDIAN_ALL": np.array([0.5, 1.5, 3, 6, 8, 15, 25, 35, 45, 60.0]),
        "XCSAO_TEFF": np.where(ref_class == "STAR", [0, 0, 0, 0, 5000, 6000, 0, 0, 0, 7000], np.nan),
        "XCSAO_LOGG": np.where(ref_class == "STAR", 4.0, np.nan), "XCSAO_FEH": np.where(ref_class == "STAR", 0.0, np.nan),
        "OBJTYPE": np.array(["SCIENCE"] * 9 + ["SKY"]),
    }
    catalog = write_catalog(tmp_path / "cat.fits", columns)
    # predictions: row 1 catastrophic z (0.2 -> 0.25), row 3 wrong class, row 5 no spectrum
    prob = np.tile([0.9, 0.05, 0.05], (10, 1))
    prob[2:4] = [0.05, 0.9, 0.05]
    prob[3] = [0.05, 0.05, 0.9]
    prob[4:6] = prob[9] = [0.05, 0.05, 0.9]
    prob[8] = [0.05, 0.9, 0.05]
    pred = {"prob": prob, "z": np.array([0.1001, 0.25, 2.001, 1.0, 0.0, 0.0, 0.3, 0.5, 1.0, 0.0]),
            "z_err": np.full(10, 0.01), "teff": np.array([np.nan] * 4 + [5100.0, 6000.0, np.nan, np.nan, np.nan, 7000.0]),
            "logg": np.full(10, 4.0), "feh": np.full(10, 0.0)}
    flags = np.zeros(10, np.int64)
    flags[5] = int(PredFlag.NO_SPECTRUM)
    reference = {"class": ref_class.astype(object), "z": ref_z}
    out = write_fits(catalog, tmp_path / "cat.annotated.fits", prediction_columns(pred, reference, flags),
                     provenance_cards("m", "0" * 64, "2dmap", "sdss_dr18", 1))
    return out


def test_compared_rows_and_exclusions(tmp_path):
    from annotate.crosscheck import read_annotated

    reference, pred, _, selected, _ = read_annotated(_annotated(tmp_path))
    metrics, compared = compute(reference, pred, selected)
    # row 5 has no prediction, row 6 ZWARNING=4, row 8 no reference z, row 9 a SKY fibre
    assert metrics["excluded"] == {"no_prediction": 1, "zwarning_nonzero": 1, "no_reference": 1, "not_selected": 1}
    assert compared.tolist() == [True, True, True, True, True, False, False, True, False, False]
    c = metrics["classification"]
    assert c["accuracy"] == pytest.approx(5 / 6)
    assert c["confusion_matrix"] == [[3, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert c["recall"] == {"GALAXY": 1.0, "QSO": 0.5, "STAR": 1.0}
    z = metrics["redshift"]
    # catastrophic: row 1 (0.05·c/1.2 = 12,491 km/s); row 2 is 100 km/s for a QSO; 1 of 6
    assert z["catastrophic_rate"] == pytest.approx(1 / 6)
    assert z["catastrophic_rate_by_class"]["GALAXY"] == pytest.approx(1 / 3)
    assert [b["n"] for b in z["success_by_snr"]] == [1, 1, 1, 1, 1, 0, 0, 1, 0, 0]
    assert z["z_err_within_1sigma"] == pytest.approx(5 / 6)
    assert metrics["stellar"]["teff"]["n"] == 1 and metrics["stellar"]["teff"]["bias"] == pytest.approx(100.0)


def test_disagreements_worst_first(tmp_path):
    from annotate.crosscheck import read_annotated

    reference, pred, _, selected, paths = read_annotated(_annotated(tmp_path))
    _, compared = compute(reference, pred, selected)
    table = disagreements(reference, pred, compared, paths)
    # the class mismatch (row 3) comes before the catastrophic redshift (row 1)
    assert table["ROW"].tolist() == [3, 1]
    assert table["CLASS_DIFFERS"].tolist() == [True, False] and table["Z_CATASTROPHIC"].tolist() == [False, True]
    assert table["SPECTRUM"][0].endswith("spec-15143-59205-27021600000000003.fits")


def test_report_files(tmp_path):
    result = crosscheck(_annotated(tmp_path))
    folder = tmp_path / "cat.annotated.crosscheck"
    assert result.out_dir == folder
    metrics = json.loads((folder / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert metrics["compared"] == 6 and metrics["disagreements"] == 2
    csv = pd.read_csv(folder / "disagreements.csv")
    assert csv["ROW"].tolist() == [3, 1]
    assert len(Table.read(folder / "disagreements.fits")) == 2
    page = (folder / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # confusion, redshift, S/N, stellar, pulls (the catalog has the ViT's columns); no store, so no sheet
    assert len(images) == 5
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "not available" in page and "Excluded" in page


def test_lamost_catalog_uses_its_own_columns(tmp_path):
    """LAMOST names (obsid, class, z, snru..snrz, teff) come from catalogs/lamost_dr10.yaml; -9999
    means no value, and snMedian = sqrt of the sum of squared band S/N."""
    n = 4
    columns = {
        "obsid": np.arange(n, dtype=np.int64) + 5000, "class": np.array(["STAR", "GALAXY", "QSO", "STAR"]),
        "subclass": np.array(["G5", "", "", "K0"]), "z": np.array([0.0001, 0.12, -9999.0, 0.0]),
        "z_err": np.full(n, 1e-4), "teff": np.array([5600.0, -9999, -9999, 4800.0]),
        "logg": np.array([4.4, -9999, -9999, 2.5]), "feh": np.array([0.0, -9999, -9999, -0.3]),
        "lmjd": np.full(n, 57000), "planid": np.array(["HD1"] * n), "spid": np.full(n, 3), "fiberid": np.arange(n) + 1,
        **{band: np.full(n, 10.0) for band in ("snru", "snrg", "snrr", "snri", "snrz")},
    }
    catalog = write_catalog(tmp_path / "lamost.fits", columns)
    prob = np.array([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    pred = {"prob": prob, "z": np.array([0.0, 0.12, 2.0, 0.0]), "z_err": np.full(n, 0.001),
            "teff": np.array([5500.0, np.nan, np.nan, 4900.0]), "logg": np.full(n, 4.0), "feh": np.full(n, 0.0)}
    reference = {"class": columns["class"].astype(object), "z": np.where(columns["z"] == -9999, np.nan, columns["z"])}
    out = write_fits(catalog, tmp_path / "lamost.annotated.fits", prediction_columns(pred, reference, np.zeros(n, np.int64)),
                     provenance_cards("m", "0" * 64, "2dmap", "lamost_dr10", 0))
    result = crosscheck(out)
    m = result.metrics
    assert m["survey"] == "lamost_dr10" and m["compared"] == 3 and m["excluded"]["no_reference"] == 1
    assert m["classification"]["accuracy"] == 1.0
    assert m["stellar"]["teff"]["n"] == 2 and m["stellar"]["teff"]["bias"] == pytest.approx(0.0)
    # S/N: sqrt(5 · 10²) = 22.4, in the 20-30 bin
    assert [b["n"] for b in m["redshift"]["success_by_snr"]][6] == 3


def test_a_store_of_another_catalog_is_not_drawn_from(tmp_path):
    from annotate.grid import WavelengthGrid
    from annotate.store import create_store

    catalog = _annotated(tmp_path)
    create_store(tmp_path / "cat.annotated.spectra.h5", np.arange(10) + 900, [""] * 10, WavelengthGrid())
    result = crosscheck(catalog)
    page = result.report.read_text()
    assert "spectra of the first disagreements: not available" in page
    assert json.loads((result.out_dir / "metrics.json").read_text())["disagreements"] == 2


def _vit_and_fit(tmp_path):
    """Four compared rows where the ViT gets two classes wrong and misses every z by a known number
    of its σ_z = 1/64 (pulls 0.5, −1.5, 2.5, −3.5), and the fit gets every class right, within
    (0.5, −0.5, 0.25, −0.25) of its σ_z = 2⁻¹² (both σ exact in float32)."""
    ref_class = np.array(["GALAXY", "GALAXY", "QSO", "STAR"])
    ref_z = np.array([0.1, 0.5, 2.0, 0.0])
    columns = {
        "SPECOBJID": np.arange(4, dtype=np.int64) + 100, "FIELD": np.full(4, 15143), "MJD": np.full(4, 59205),
        "CATALOGID": np.arange(4, dtype=np.int64) + 27021600000000000, "RUN2D": np.array(["v6_0_4"] * 4),
        "CLASS": ref_class, "Z": ref_z, "Z_ERR": np.full(4, 1e-4), "ZWARNING": np.zeros(4, np.int64),
        "SN_MEDIAN_ALL": np.array([3.0, 8.0, 15.0, 25.0]), "XCSAO_TEFF": np.array([np.nan, np.nan, np.nan, 5000.0]),
        "XCSAO_LOGG": np.array([np.nan, np.nan, np.nan, 4.0]), "XCSAO_FEH": np.array([np.nan, np.nan, np.nan, 0.0]),
        "OBJTYPE": np.array(["SCIENCE"] * 4),
    }
    catalog = write_catalog(tmp_path / "fit.fits", columns)
    vit_err, fit_err = 1 / 64, 2.0**-12
    # the ViT says GALAXY, QSO, QSO, GALAXY: rows 1 and 3 wrong
    prob = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.9, 0.05], [0.9, 0.05, 0.05]])
    pred = {"prob": prob, "z": ref_z + np.array([0.5, -1.5, 2.5, -3.5]) * vit_err, "z_err": np.full(4, vit_err),
            "teff": np.array([np.nan, np.nan, np.nan, 5000.0]), "logg": np.full(4, 4.0), "feh": np.full(4, 0.0),
            "fit_class": ref_class.astype("U6"), "fit_z": ref_z + np.array([0.5, -0.5, 0.25, -0.25]) * fit_err,
            "fit_z_err": np.full(4, fit_err), "fit_deltachi2": np.full(4, 100.0), "fit_rchi2": np.full(4, 1.0),
            "fit_spectype": np.array(["", "", "", "G2V"]),
            "fit_flags": np.array([0, int(PredFlag.FIT_VIT_DISAGREE), 0, int(PredFlag.FIT_VIT_DISAGREE)])}
    reference = {"class": ref_class.astype(object), "z": ref_z}
    written = prediction_columns(pred, reference, np.zeros(4, np.int64))
    return write_fits(catalog, tmp_path / "fit.annotated.fits", written, provenance_cards("m", "0" * 64, "2dmap", "sdss_dr18", 1))


def _without_vit_columns(annotated, out):
    """The annotated catalog as one written before the template fit: no PRED_*_VIT columns."""
    with fits.open(annotated) as hdul:
        kept = [c for c in hdul[1].columns if not c.name.endswith("_VIT")]
        table = fits.BinTableHDU.from_columns(kept, header=hdul[1].header)
        fits.HDUList([fits.PrimaryHDU(header=hdul[0].header), table]).writeto(out)
    return out


def test_pull_summary_of_known_pulls():
    pull = pulls(np.array([1.0, 1.0, 1.0, 1.0, 1.0]), np.array([1.5, 0.0, 3.0, 1.0, 9.0]),
                 np.array([1.0, 0.5, 1.0, 0.0, np.nan]))
    assert pull.tolist() == [0.5, -2.0, 2.0]  # a zero or NaN σ gives no pull
    summary = pull_summary(pull)
    # median 0.5; |pull − 0.5| = 0, 2.5, 1.5 -> MAD 1.5
    assert summary == pytest.approx({"n": 3, "median": 0.5, "robust_spread": 1.4826 * 1.5,
                                     "within_1sigma": 1 / 3, "within_2sigma": 1.0})
    assert pull_summary(np.array([]))["n"] == 0 and np.isnan(pull_summary(np.array([]))["robust_spread"])


def test_vit_and_final_side_by_side(tmp_path):
    from annotate.crosscheck import read_annotated

    reference, pred, _, selected, _ = read_annotated(_vit_and_fit(tmp_path))
    metrics, compared = compute(reference, pred, selected)
    assert compared.all()
    vit, final = metrics["vit"], metrics
    assert vit["classification"]["accuracy"] == 0.5 and final["classification"]["accuracy"] == 1.0
    assert vit["classification"]["recall"] == {"GALAXY": 0.5, "QSO": 1.0, "STAR": 0.0}
    assert vit["classification"]["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    # the ViT misses by 2,100-16,000 km/s (catastrophic everywhere), the fit by under 40 km/s
    assert vit["redshift"]["catastrophic_rate"] == 1.0 and final["redshift"]["catastrophic_rate"] == 0.0
    assert vit["redshift"]["bias"] == pytest.approx(-0.5 / 64)
    assert final["redshift"]["bias"] == pytest.approx(0.0, abs=1e-12)
    # ViT pulls 0.5, −1.5, 2.5, −3.5: median −0.5, |pull + 0.5| = 1, 1, 3, 3 -> MAD 2
    assert vit["redshift"]["pulls"] == pytest.approx({"n": 4, "median": -0.5, "robust_spread": 1.4826 * 2.0,
                                                      "within_1sigma": 0.25, "within_2sigma": 0.5})
    # fit pulls 0.5, −0.5, 0.25, −0.25: median 0, MAD 0.375
    assert final["redshift"]["pulls"] == pytest.approx({"n": 4, "median": 0.0, "robust_spread": 1.4826 * 0.375,
                                                        "within_1sigma": 1.0, "within_2sigma": 1.0}, abs=1e-9)
    assert vit["redshift"]["z_err_within_1sigma"] == 0.25 and final["redshift"]["z_err_within_1sigma"] == 1.0

    result = crosscheck(tmp_path / "fit.annotated.fits")
    page = result.report.read_text()
    assert "<tr><th>metric</th><th>ViT</th><th>final (fit)</th></tr>" in page
    assert "<tr><td>class accuracy</td><td>0.5</td><td>1</td></tr>" in page
    assert "<tr><td>recall STAR</td><td>0</td><td>1</td></tr>" in page
    assert f"<tr><td>pull robust spread</td><td>{1.4826 * 2.0:.4g}</td>" in page
    assert 'alt="pull distributions" src="data:image/png;base64,' in page
    written = json.loads((result.out_dir / "metrics.json").read_text())
    assert written["vit"]["classification"]["accuracy"] == 0.5 and written["redshift"]["pulls"]["n"] == 4


def test_catalog_without_vit_columns_keeps_the_old_report(tmp_path):
    from annotate.crosscheck import read_annotated

    old = _without_vit_columns(_vit_and_fit(tmp_path), tmp_path / "old.annotated.fits")
    reference, pred, _, selected, _ = read_annotated(old)
    metrics, _ = compute(reference, pred, selected)
    assert "vit" not in metrics
    assert metrics["classification"]["accuracy"] == 1.0 and metrics["redshift"]["pulls"]["n"] == 4
    page = crosscheck(old).report.read_text()
    assert "final (fit)" not in page and "pull distributions" not in page
    assert page.count('src="data:image/png;base64,') == 4  # confusion, redshift, S/N, stellar
