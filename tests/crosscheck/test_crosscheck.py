"""Cross-check: which rows are compared, the metrics on a hand-made catalog, and the report files."""

import base64
import html
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from PIL import Image

from annotate.crosscheck import crosscheck
from annotate.crosscheck.assess import compute, disagreements, pull_summary, pulls
from annotate.flags import PredFlag
from annotate.simulate.writer import write_catalog
from annotate.catalogs.fits_writer import write_fits
from annotate.writeback import prediction_columns, provenance_cards



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
    from annotate.crosscheck.read import read_annotated

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
    # no compared row carries a flag about its class or redshift (row 3, the QSO called a star
    # without a Teff, has the stellar FEH_NO_SKILL, which is not scored here): all six under 'none'
    assert metrics["flags"] == {"none": {"n": 6, "class_accuracy": pytest.approx(5 / 6),
                                         "catastrophic_rate": pytest.approx(1 / 6)}}


def test_each_quality_flag_is_scored_against_the_pipeline():
    """Rows flagged FIT_VIT_DISAGREE hold the catastrophic redshift and the wrong class; the rows
    without a quality flag are all right; a flag no row carries is left out; NO_SPECTRUM is no
    quality flag, and the stellar FLUX_OFFSET is not scored by class and redshift."""
    from annotate.crosscheck.assess import flag_metrics

    ref_class = np.array(["GALAXY", "GALAXY", "QSO", "STAR", "STAR"])
    z_ref = np.array([0.1, 0.2, 2.0, 0.0, 0.0])
    pred_class = np.array(["GALAXY", "GALAXY", "STAR", "STAR", "STAR"])
    z_pred = np.array([0.1, 0.4, 0.0, 0.0, 0.0])
    disagree, spikes, offset = int(PredFlag.FIT_VIT_DISAGREE), int(PredFlag.SPIKES_LEFT_OUT), int(PredFlag.FLUX_OFFSET)
    flags = np.array([int(PredFlag.NO_SPECTRUM), disagree | spikes, disagree, offset, 0])
    metrics = flag_metrics(flags, ref_class, z_ref, pred_class, z_pred)
    assert list(metrics) == ["FIT_VIT_DISAGREE", "SPIKES_LEFT_OUT", "none"]   # FLUX_OFFSET: a stellar flag
    assert metrics["FIT_VIT_DISAGREE"] == {"n": 2, "class_accuracy": 0.5, "catastrophic_rate": 1.0}
    assert metrics["SPIKES_LEFT_OUT"] == {"n": 1, "class_accuracy": 1.0, "catastrophic_rate": 1.0}
    assert metrics["none"] == {"n": 3, "class_accuracy": 1.0, "catastrophic_rate": 0.0}


def test_feh_is_also_scored_without_the_stars_where_it_has_no_skill():
    from annotate.crosscheck.assess import FEH_WITH_SKILL, stellar_metrics

    reference = {"teff": np.array([5000.0, 3000.0, 6000.0, 20000.0]), "logg": np.full(4, 4.0),
                 "feh": np.array([0.0, -1.0, -0.5, 0.3])}
    pred = {"PRED_Z": np.zeros(4), "PRED_TEFF": reference["teff"], "PRED_LOGG": reference["logg"],
            "PRED_FEH": np.array([0.1, 0.5, -0.4, -0.9]), "PRED_FEH_ERR": np.full(4, 0.2),
            "PRED_FLAGS": np.array([0, int(PredFlag.FEH_NO_SKILL), 0, int(PredFlag.FEH_NO_SKILL) | 1024])}
    everyone = np.ones(4, bool)
    metrics = stellar_metrics(reference, pred, everyone, everyone)
    assert metrics["feh"]["n"] == 4 and metrics["feh"]["rmse"] == pytest.approx(np.sqrt((0.01 + 2.25 + 0.01 + 1.44) / 4))
    kept = metrics[FEH_WITH_SKILL]
    assert kept["n"] == 2 and kept["rmse"] == pytest.approx(0.1) and kept["within_1sigma"] == 1.0


def test_disagreements_worst_first(tmp_path):
    from annotate.crosscheck.read import read_annotated

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
    assert "<h2>Quality flags</h2>" in page and "<td>no quality flag</td><td>6</td>" in page


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
            "fit_flags": np.array([0, int(PredFlag.FIT_VIT_DISAGREE), 0, int(PredFlag.FIT_VIT_DISAGREE)]),
            # the fit's stellar labels, for the star it found (row 3)
            "fit_teff": np.array([np.nan, np.nan, np.nan, 5800.0]), "fit_logg": np.array([np.nan, np.nan, np.nan, 4.5]),
            "fit_feh": np.array([np.nan, np.nan, np.nan, -0.5]),
            "fit_teff_err": np.array([np.nan, np.nan, np.nan, 900.0]),
            "fit_logg_err": np.array([np.nan, np.nan, np.nan, 0.25]),
            "fit_feh_err": np.array([np.nan, np.nan, np.nan, 0.125])}
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
    from annotate.crosscheck.read import read_annotated

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
    # the star: the ViT's labels are the pipeline's (5000 K, 4.0, 0.0), the fit's 5800 K, 4.5, -0.5
    assert pred["PRED_TEFF"][3] == 5800.0 and pred["PRED_TEFF_VIT"][3] == 5000.0
    assert np.isnan(pred["PRED_TEFF"][0]) and pred["PRED_LOGG"][0] == pred["PRED_LOGG_VIT"][0] == 4.0
    assert [pred[f"PRED_{k}_ERR"][3] for k in ("TEFF", "LOGG", "FEH")] == [900.0, 0.25, 0.125]
    assert np.isnan(pred["PRED_LOGG_ERR"][0])  # the ViT's log g stands there: no σ
    assert [final["stellar"][k]["bias"] for k in ("teff", "logg", "feh")] == pytest.approx([800.0, 0.5, -0.5])
    assert [vit["stellar"][k]["rmse"] for k in ("teff", "logg", "feh")] == [0.0, 0.0, 0.0]
    # |Δ| 800 K within σ 900 K; 0.5 dex beyond 0.25; 0.5 dex beyond 0.125; the ViT gives no σ
    assert [final["stellar"][k]["within_1sigma"] for k in ("teff", "logg", "feh")] == [1.0, 0.0, 0.0]
    assert [final["stellar"][k]["n_sigma"] for k in ("teff", "logg", "feh")] == [1, 1, 1]
    assert vit["stellar"]["teff"]["n_sigma"] == 0 and np.isnan(vit["stellar"]["teff"]["within_1sigma"])

    result = crosscheck(tmp_path / "fit.annotated.fits")
    page = result.report.read_text()
    assert "<tr><th>metric</th><th>ViT</th><th>final (fit)</th></tr>" in page
    assert "<tr><td>class accuracy</td><td>0.5</td><td>1</td></tr>" in page
    assert "<tr><td>recall STAR</td><td>0</td><td>1</td></tr>" in page
    assert f"<tr><td>pull robust spread</td><td>{1.4826 * 2.0:.4g}</td>" in page
    assert 'alt="pull distributions" src="data:image/png;base64,' in page
    assert "<tr><td>Teff RMSE (pipeline stars)</td><td>0</td><td>800</td></tr>" in page
    assert "<th>within 1σ (rows)</th>" in page and "<td>800 K</td><td>1 (1)</td></tr>" in page
    written = json.loads((result.out_dir / "metrics.json").read_text())
    assert written["vit"]["classification"]["accuracy"] == 0.5 and written["redshift"]["pulls"]["n"] == 4


def test_catalog_without_vit_columns_keeps_the_old_report(tmp_path):
    from annotate.crosscheck.read import read_annotated

    old = _without_vit_columns(_vit_and_fit(tmp_path), tmp_path / "old.annotated.fits")
    reference, pred, _, selected, _ = read_annotated(old)
    metrics, _ = compute(reference, pred, selected)
    assert "vit" not in metrics
    assert metrics["classification"]["accuracy"] == 1.0 and metrics["redshift"]["pulls"]["n"] == 4
    page = crosscheck(old).report.read_text()
    assert "final (fit)" not in page and "pull distributions" not in page
    assert page.count('src="data:image/png;base64,') == 4  # confusion, redshift, S/N, stellar


# ------------------------------------------------------------------------------------------------
# readability: provenance, look-first sentences, axis units, no row compared, --all-rows

WEIGHTS_SHA = "3f" * 32
TEMPLATES_SHA = "a1" * 32


def _twenty_rows(tmp_path, zwarning=None, objtype=None, provenance=None, name="look"):
    """Twenty compared rows with known outcomes (the fit's class, z and Δχ² beside the ViT's):
    rows 0-9 GALAXY, right; 10-13 QSO at z 2 that the fit and the ViT both put at z 2.5 with
    Δχ² 100 (catastrophic); 14 QSO both put at 1.5 from 1.0, Δχ² 10; 15 GALAXY the fit puts at 0.5
    from 0.3, the ViT right; 16-18 GALAXY at z 0.0005 both call STAR at z 0, Δχ² 100; 19 STAR the
    fit calls QSO, the ViT right. Catastrophic: 10-15 (QSO 5 of 6); class errors: 16-19 (GALAXY
    called STAR 3 of 4); likely pipeline failures: 10-13 and 16-18."""
    n = 20
    ref_class = np.array(["GALAXY"] * 10 + ["QSO"] * 5 + ["GALAXY"] * 4 + ["STAR"])
    ref_z = np.array([0.1] * 10 + [2.0] * 4 + [1.0, 0.3] + [0.0005] * 3 + [0.0])
    fit_class = ref_class.copy().astype("U6")
    fit_class[16:19], fit_class[19] = "STAR", "QSO"
    fit_z = ref_z.copy()
    fit_z[10:14], fit_z[14], fit_z[15], fit_z[16:19] = 2.5, 1.5, 0.5, 0.0
    vit_class = fit_class.copy()
    vit_class[19] = "STAR"
    vit_z = fit_z.copy()
    vit_z[15] = 0.3
    deltachi2 = np.full(n, 100.0)
    deltachi2[14] = 10.0
    columns = {
        "SPECOBJID": np.arange(n, dtype=np.int64) + 100, "FIELD": np.full(n, 15143), "MJD": np.full(n, 59205),
        "CATALOGID": np.arange(n, dtype=np.int64) + 27021600000000000, "RUN2D": np.array(["v6_0_4"] * n),
        "CLASS": ref_class, "Z": ref_z, "Z_ERR": np.full(n, 1e-4),
        "ZWARNING": np.zeros(n, np.int64) if zwarning is None else zwarning,
        "SN_MEDIAN_ALL": np.full(n, 12.0), "XCSAO_TEFF": np.where(ref_class == "STAR", 5000.0, np.nan),
        "XCSAO_LOGG": np.where(ref_class == "STAR", 4.0, np.nan), "XCSAO_FEH": np.where(ref_class == "STAR", 0.0, np.nan),
        "OBJTYPE": np.array(["SCIENCE"] * n) if objtype is None else objtype,
    }
    catalog = write_catalog(tmp_path / f"{name}.fits", columns)
    prob = np.array([{"GALAXY": [0.9, 0.05, 0.05], "QSO": [0.05, 0.9, 0.05], "STAR": [0.05, 0.05, 0.9]}[c]
                     for c in vit_class])
    pred = {"prob": prob, "z": vit_z, "z_err": np.full(n, 1e-3), "teff": np.where(ref_class == "STAR", 5100.0, np.nan),
            "logg": np.full(n, 4.0), "feh": np.full(n, 0.0), "fit_class": fit_class, "fit_z": fit_z,
            "fit_z_err": np.full(n, 1e-4), "fit_deltachi2": deltachi2, "fit_rchi2": np.full(n, 1.0),
            "fit_spectype": np.full(n, ""), "fit_flags": np.zeros(n, np.int64),
            **{f"fit_{key}{part}": np.full(n, np.nan) for key in ("teff", "logg", "feh") for part in ("", "_err")}}
    reference = {"class": ref_class.astype(object), "z": ref_z}
    cards = provenance or provenance_cards("spectromer-tiny", WEIGHTS_SHA, "2dmap", "sdss_dr18", 0, "bf16",
                                           fit={"settings": "classes GALAXY QSO STAR", "sha256": TEMPLATES_SHA})
    return write_fits(catalog, tmp_path / f"{name}.annotated.fits",
                      prediction_columns(pred, reference, np.zeros(n, np.int64)), cards)


def _store_for(catalog):
    """A spectra store beside the annotated catalog, with its rows' ids and flat spectra."""
    from annotate.crosscheck.read import read_annotated
    from annotate.grid import WavelengthGrid
    from annotate.pipeline import default_store_path
    from annotate.store import create_store, write_rows

    reference, pred, _, _, _ = read_annotated(catalog)
    n, grid = len(pred["PRED_Z"]), WavelengthGrid()
    store = default_store_path(catalog)
    create_store(store, reference["object_id"], [""] * n, grid, reader="sdss")
    flux = np.random.default_rng(0).normal(10.0, 1.0, (n, grid.n_pix)).astype(np.float32)
    write_rows(store, 0, {"flux": flux, "ivar": np.ones_like(flux), "mask": np.zeros(flux.shape, np.uint8),
                          "status": np.ones(n, np.int8)})
    return store


def test_report_names_the_model_weights_and_fit_that_made_the_catalog(tmp_path):
    result = crosscheck(_twenty_rows(tmp_path))
    page = result.report.read_text()
    top = page[:page.index("<h2>Classification</h2>")]
    for shown in ("spectromer-tiny", WEIGHTS_SHA, TEMPLATES_SHA, "bf16", "2dmap", "classes GALAXY QSO STAR"):
        assert f"<code>{shown}</code>" in top, shown
    assert "<tr><td>template fit</td><td><code>on</code></td><td>ANNFIT</td></tr>" in top
    provenance = json.loads((result.out_dir / "metrics.json").read_text())["provenance"]
    assert provenance["model"] == "spectromer-tiny" and provenance["weights_sha256"] == WEIGHTS_SHA
    assert provenance["template_fit"] == "on" and provenance["template_set_sha256"] == TEMPLATES_SHA
    assert provenance["precision"] == "bf16" and provenance["encoding"] == "2dmap"


def test_missing_provenance_cards_read_not_recorded(tmp_path):
    catalog = _annotated(tmp_path)
    with fits.open(catalog, mode="update") as hdul:
        for card in ("ANNMODEL", "ANNWSHA", "ANNPREC"):
            del hdul[1].header[card]
    result = crosscheck(catalog)
    page = result.report.read_text()
    assert "<tr><td>model</td><td><code>not recorded</code></td><td>ANNMODEL</td></tr>" in page
    assert "<tr><td>model weights (sha256)</td><td><code>not recorded</code></td><td>ANNWSHA</td></tr>" in page
    # the fit did not run (ANNFIT off): no template set, and the report says why
    assert "<tr><td>template set (sha256)</td><td><code>none: the template fit did not run</code></td>" in page
    provenance = json.loads((result.out_dir / "metrics.json").read_text())["provenance"]
    assert provenance["model"] is None and provenance["template_fit"] == "off" and provenance["encoding"] == "2dmap"


@pytest.mark.parametrize("convention", ["pandas", "astropy"])
def test_provenance_of_an_hdf5_catalog(tmp_path, convention):
    from annotate.writeback import write_annotated_catalog

    fits_catalog = _twenty_rows(tmp_path)  # its input, cat look.fits, becomes an HDF5 table
    table = Table.read(tmp_path / "look.fits")
    h5 = tmp_path / "look.h5"
    if convention == "astropy":
        table.write(h5, path="catalog", serialize_meta=True)
    else:
        frame = table.to_pandas()
        for name in frame.columns:
            if frame[name].dtype == object:
                frame[name] = frame[name].str.decode("ascii")
        frame.to_hdf(h5, key="catalog", format="table")
    with fits.open(fits_catalog) as hdul:
        columns = {name: np.array(hdul[1].data[name]) for name in hdul[1].columns.names if name.startswith("PRED_")}
    cards = provenance_cards("spectromer-tiny", WEIGHTS_SHA, "2dmap", "sdss_dr18", 0)
    out = write_annotated_catalog(h5, tmp_path / "look.annotated.h5", columns, cards)
    result = crosscheck(out)
    assert result.metrics["compared"] == 20
    assert result.metrics["provenance"]["model"] == "spectromer-tiny"
    assert result.metrics["provenance"]["weights_sha256"] == WEIGHTS_SHA
    assert result.metrics["provenance"]["template_fit"] == "off"
    assert f"<code>{WEIGHTS_SHA}</code>" in result.report.read_text()


def test_look_first_names_the_class_the_cell_and_the_likely_pipeline_failures(tmp_path):
    result = crosscheck(_twenty_rows(tmp_path))
    m = result.metrics
    assert m["redshift"]["catastrophic_rate"] == pytest.approx(6 / 20, abs=1e-12)
    assert m["likely_pipeline_failures"] == 7
    assert m["look_first"] == [
        "The catastrophic rate (30.0 %) is driven by QSO rows: 5 of the 6 catastrophic rows "
        "(100.0 % of the pipeline's QSO rows).",
        "7 rows where the template fit and the ViT agree with each other (same class, |Δv| < 1000 km/s) but not "
        "with the pipeline, with Δχ² > 25: likely pipeline failures — the first 7 of disagreements.csv "
        "(LIKELY_PIPELINE_FAILURE).",
        "Class accuracy is 80.0 %: most errors are pipeline GALAXY called STAR: 3 of the 4 misclassified rows.",
    ]
    page = result.report.read_text()
    assert html.escape(m["look_first"][0]) in page[:page.index("<h2>Classification</h2>")]
    csv = pd.read_csv(result.out_dir / "disagreements.csv")
    # the likely pipeline failures first (class mismatches among them first), then the rest worst first
    assert csv["ROW"].tolist() == [16, 17, 18, 10, 11, 12, 13, 19, 14, 15]
    assert csv["LIKELY_PIPELINE_FAILURE"].tolist() == [True] * 7 + [False] * 3
    assert csv["PRED_DELTACHI2"].tolist()[7:] == pytest.approx([100.0, 10.0, 100.0], abs=1e-6)


def test_look_first_without_the_fit_or_catastrophic_rows(tmp_path):
    old = _without_vit_columns(_vit_and_fit(tmp_path), tmp_path / "old.annotated.fits")
    result = crosscheck(old)
    assert "likely_pipeline_failures" not in result.metrics
    assert result.metrics["look_first"] == ["No compared row has a catastrophic redshift."]
    # the ten rows: the fit did not run (no Δχ²), one catastrophic z and one class error in six rows
    result = crosscheck(_annotated(tmp_path))
    assert result.metrics["likely_pipeline_failures"] == 0
    assert result.metrics["look_first"] == ["The catastrophic rate (16.7 %) is one row, a pipeline GALAXY.",
                                            "Class accuracy is 83.3 %: the one misclassified row is pipeline QSO called STAR."]


def test_every_axis_label_has_its_quantity_and_unit(tmp_path, monkeypatch):
    import matplotlib.axes

    catalog = _twenty_rows(tmp_path)
    _store_for(catalog)
    labels, texts = [], []
    for name, into in (("set_xlabel", labels), ("set_ylabel", labels), ("text", texts)):
        original = getattr(matplotlib.axes.Axes, name)

        def wrapper(self, *args, _original=original, _into=into, _name=name, **kwargs):
            _into.append(args[2] if _name == "text" else args[0])
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, wrapper)
    result = crosscheck(catalog)
    assert (result.out_dir / "disagreements.png").is_file()
    assert labels and all(str(label).strip() for label in labels)
    for unit in ("predicted Teff (K)", "pipeline Teff (K)", "predicted log g (dex)", "predicted [Fe/H] (dex)",
                 "pipeline redshift z", "predicted redshift z", "observed wavelength (Å)",
                 "flux (10⁻¹⁷ erg/s/cm²/Å)"):
        assert unit in labels, unit
    # the marked lines are named: the first sheet row is a pipeline GALAXY at z 0.0005
    assert {"Hα", "Hβ", "[OIII]", "CaK", "CaH"} <= set(texts)


def test_flux_unit_from_the_store_or_the_survey():
    from annotate.crosscheck.figures import flux_unit

    assert flux_unit({}, "sdss") == "10⁻¹⁷ erg/s/cm²/Å"
    assert flux_unit({}, "lamost_lrs") == "survey units"
    assert flux_unit({"flux_unit": b"ADU"}, "sdss") == "ADU"
    assert flux_unit({"flux_unit": "1e-17 erg / (s cm2 Angstrom)"}, "sdss_spec") == "10⁻¹⁷ erg/s/cm²/Å"
    assert flux_unit({"flux_unit": "relative flux (survey calibration)"}, "lamost_lrs") == \
        "relative flux (survey calibration)"


def test_no_row_compared_says_why_in_one_line_then_all_rows_compares_them(tmp_path, capsys):
    from annotate.cli import main

    zwarning = np.array([4] * 15 + [0] * 5)
    catalog = _twenty_rows(tmp_path, zwarning=zwarning, objtype=np.array(["SCIENCE"] * 15 + ["SKY"] * 5))
    assert main(["crosscheck", "--catalog", str(catalog)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert out.splitlines()[0] == (
        "cross-check: no row compared: 20 of 20 rows fail the survey's selection (ZWARNING ≠ 0: 15, other "
        f"selection rules: 5); `annotate crosscheck --catalog {catalog} --all-rows` compares them anyway")
    folder = tmp_path / "look.annotated.crosscheck"
    assert json.loads((folder / "metrics.json").read_text())["all_rows"] is False
    assert "no row compared: 20 of 20 rows fail" in (folder / "report.html").read_text()

    assert main(["crosscheck", "--catalog", str(catalog), "--all-rows"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cross-check: 20 of 20 rows compared (--all-rows: ZWARNING and the survey's selection ignored)")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["all_rows"] is True and metrics["compared"] == 20
    assert metrics["included_anyway"] == {"zwarning_nonzero": 15, "not_selected": 5}
    assert metrics["classification"]["accuracy"] == pytest.approx(0.8, abs=1e-12)
    assert "<strong>All rows compared (--all-rows)</strong>" in (folder / "report.html").read_text()


def test_run_summary_without_compared_rows_says_why(tmp_path, micro_model, capsys):  # noqa: F811
    from annotate.cli import main
    from annotate.simulate.writer import write_sdss_spec
    from annotate.surveys import load_survey

    n = 3
    columns = {"SPECOBJID": np.arange(n, dtype=np.int64) + 7, "RUN2D": np.array(["v6_0_4"] * n),
               "FIELD": np.full(n, 15143), "MJD": np.full(n, 59205), "CATALOGID": np.arange(n, dtype=np.int64) + 5_000_000,
               "CLASS": np.array(["GALAXY", "QSO", "STAR"]), "Z": np.array([0.1, 2.0, 0.0]), "ZWARNING": np.full(n, 4)}
    loglam = 3.5530 + 1e-4 * np.arange(4640)
    for path in load_survey("sdss_dr18").spectrum_paths(columns):
        write_sdss_spec(tmp_path / "spectra" / path, loglam, np.full(4640, 10.0, np.float32), np.ones(4640, np.float32),
                        np.zeros(4640, bool), {})
    catalog = write_catalog(tmp_path / "warned.fits", columns)
    assert main(["run", "--catalog", str(catalog), "--spectra-root", str(tmp_path / "spectra"), "--model",
                 str(micro_model), "--scheduler", "sync", "--no-progress", "--no-fit"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "class accuracy" not in out
    assert (f"cross-check: no row compared: 3 of 3 rows fail the survey's selection (ZWARNING ≠ 0: 3); "
            f"`annotate crosscheck --catalog {tmp_path / 'warned.annotated.fits'} --all-rows` compares them anyway") in out


def test_disagreement_line_says_what_they_are_and_where(tmp_path, capsys):
    from annotate.cli import main

    catalog = _twenty_rows(tmp_path)
    store = _store_for(catalog)
    folder = tmp_path / "look.annotated.crosscheck"
    assert main(["crosscheck", "--catalog", str(catalog)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ("10 disagreements (rows whose class differs from the pipeline's or whose redshift is catastrophic): "
            f"{folder / 'disagreements.csv'}, spectra of the first in disagreements.png") in lines
    assert "  Class accuracy is 80.0 %: most errors are pipeline GALAXY called STAR: 3 of the 4 misclassified rows." in lines
    # a store named that is not there is refused (a mistyped path), and the report is left as it was
    assert main(["crosscheck", "--catalog", str(catalog), "--store", str(tmp_path / "none.h5")]) == 2
    assert capsys.readouterr().err.strip() == f"annotate: error: --store {tmp_path / 'none.h5'}: no such spectra store"
    assert (folder / "disagreements.png").exists()
    # without the run's store the sheet of the earlier cross-check is removed, and the line no longer names it
    store.unlink()
    assert main(["crosscheck", "--catalog", str(catalog)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"10 disagreements (rows whose class differs from the pipeline's or whose redshift is catastrophic): {folder / 'disagreements.csv'}" in lines
    assert not (folder / "disagreements.png").exists()


def test_a_catalog_of_another_survey_is_refused_in_one_line(tmp_path, capsys):
    """--survey naming another survey than the catalog's: refused as `annotate run` refuses it,
    not a report of no compared rows."""
    from annotate.cli import main

    catalog = _twenty_rows(tmp_path)
    assert main(["crosscheck", "--catalog", str(catalog), "--survey", "desi_dr1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("annotate: error: catalog lacks columns required by survey desi_dr1: ")
    assert not (tmp_path / "look.annotated.crosscheck").exists()


def test_a_report_folder_that_cannot_be_made_is_one_error_line(tmp_path, capsys):
    """--out under a regular file: the system cannot make the folder; one line, exit 2."""
    from annotate.cli import main

    catalog = _twenty_rows(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["crosscheck", "--catalog", str(catalog), "--out", str(blocker / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"annotate: error: cannot make the report's folder {blocker / 'report'}: Not a directory"]
