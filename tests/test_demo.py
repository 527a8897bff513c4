"""`annotate demo` end to end at a small size, with the shipped default model."""

import json
import hashlib
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from annotate.checkpoint import DEFAULT_MODEL, load_checkpoint
from annotate.cli import main
from annotate.surveys import load_survey
from annotate.columns import OUTPUT_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out


def test_shipped_model_loads_offline():
    model, card = load_checkpoint(DEFAULT_MODEL, "cpu")
    assert card.name == "spectromer-tiny"
    assert tuple(card.class_names) == ("GALAXY", "QSO", "STAR")
    # vit-mini-p32: 2 layers, 128 wide, 32-px patches (0.8 M), with the class and stellar heads and a
    # binned z head (a 512-unit MLP onto 768 bins, 0.46 M)
    assert model.z_kind == "bins" and card.z_head["n_bins"] == 768
    assert 1.2e6 < sum(p.numel() for p in model.parameters()) < 1.3e6
    # its last stage trained with each object's realism effects drawn between 1 and 2 times the
    # first stages', star-forming galaxies with young populations, starbursts among them, the
    # weaker nebular lines, and quasar lines off their systemic velocity (training/README.md)
    assert card.training["recipe"]["data"]["simulate"]["realism"] == {
        "strength": 1.0, "strength_max": 2.0, "star_forming_continuum": True, "qso_line_scatter": 1.0,
        "starburst_share": 0.15, "weak_nebular_lines": True}
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.iterdir())
    assert size < 10e6


def test_demo_command_writes_sample_annotates_and_prints_paths(demo, capsys):
    code = main(["demo", "--out", str(demo), "--n-objects", "90", "--scheduler", "sync", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    catalog = demo / "dr18.fits"
    annotated = demo / "dr18.annotated.fits"
    assert f"annotated catalog: {annotated}" in printed and "class accuracy" in printed
    report = demo / "dr18.annotated.crosscheck" / "report.html"
    assert f"cross-check report: {report}" in printed
    page = report.read_text()
    found = json.loads((demo / "dr18.annotated.crosscheck" / "metrics.json").read_text())["disagreements"]
    # the five plots (the pulls among them), and the disagreement sheet when there is a disagreement to draw
    assert page.count('src="data:image/png;base64,') == 5 + (found > 0)
    assert (demo / "dr18.annotated.crosscheck" / "disagreements.png").is_file() == (found > 0)
    assert found <= 2  # of 90 rows: the template fit rarely disagrees with the simulation's truth
    survey = load_survey("sdss_dr18")
    with fits.open(catalog) as hdul:
        n = len(hdul[1].data)
        paths = survey.spectrum_paths({name: hdul[1].data[name] for name in hdul[1].columns.names})
    assert n == 90
    # the spectra are in the DR18 layout the survey file describes, and are real spec files
    first = demo / paths[0]
    assert first.is_file() and "/spectra/full/151" in str(first)
    with fits.open(first) as spec:
        assert spec[1].name == "COADD" and {"flux", "loglam", "ivar", "and_mask"} <= set(spec[1].columns.names)
    table = Table.read(annotated, hdu=1, mask_invalid=False)
    assert len(table) == n
    for column in OUTPUT_COLUMNS:
        assert column.name in table.colnames
    assert str(table["PRED_TEFF"].unit) == "K"
    # every row got a prediction, probabilities sum to one, and the model beats chance clearly
    assert (table["PRED_FLAGS"] & 1 == 0).all()
    prob = np.stack([table["PRED_PROB_GALAXY"], table["PRED_PROB_QSO"], table["PRED_PROB_STAR"]], axis=1)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    good = table["ZWARNING"] == 0
    accuracy = np.mean(table["PRED_CLASS"][good] == table["CLASS"][good])
    assert accuracy > 0.7
    stars = (table["PRED_CLASS"] == "STAR") & good
    assert 3000 < np.median(table["PRED_TEFF"][stars]) < 9000
    assert np.isfinite(table["PRED_Z"]).all() and (table["PRED_Z_ERR"] > 0).all()


def test_rerunning_the_demo_leaves_the_input_byte_identical(demo, capsys):
    catalog = demo / "dr18.fits"
    if not catalog.exists():
        pytest.skip("needs the demo written by the test above")
    before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    code = main(["demo", "--out", str(demo), "--scheduler", "sync", "--no-progress"])
    assert code == 0
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before
    assert "rows: 90" in capsys.readouterr().out


def test_report_opens_in_headless_chromium_with_every_plot(demo):
    """A browser loads the demo's report and decodes every embedded plot."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    report = demo / "dr18.annotated.crosscheck" / "report.html"
    if not report.exists():
        pytest.skip("needs the demo written by the test above")
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.title='images '+i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>")
    page = demo / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    drawn = report.read_text().count("<img ")  # confusion, redshift, S/N, stellar, pulls (+ the sheet)
    assert drawn >= 5 and f"<title>images {drawn}/{drawn}</title>" in dom, re.findall("<title>.*?</title>", dom)


def test_a_demo_folder_that_cannot_be_made_is_one_error_line(tmp_path, capsys):
    """--out under a regular file: refused in one line before any sample is written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "demo"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"annotate: error: cannot make the demo's folder {blocker / 'demo'}: Not a directory"]
