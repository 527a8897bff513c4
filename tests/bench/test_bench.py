"""`annotate bench` machinery at tiny sizes (the figures themselves come from `annotate bench`)."""

import json

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

import annotate.bench as bench
from annotate.bench.render import matplotlib_2dmap_png, matplotlib_line_png, synthetic_batch
from annotate.bench.writeback import make_catalog
from annotate.cli import main
from annotate.render import RenderSettings, render


def test_matplotlib_reference_draws_the_same_2dmap(tmp_path):
    """The baseline renders what we render: same blocks, same colours (up to PNG/Agg rounding)."""
    import io

    flux, mask = synthetic_batch(1, 4608)
    settings = RenderSettings()
    png = matplotlib_2dmap_png(flux[0], mask[0], settings)
    reference = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    ours = render(flux, mask, settings)[0].astype(int)
    assert reference.shape == ours.shape == (224, 224, 3)
    # compare block centres that hold flux (the reference draws masked pixels white, we draw black)
    centres = [(1 + 3 * (k // 74), 1 + 3 * (k % 74)) for k in range(60, 4608, 97)]
    diffs = [np.abs(reference[r, c] - ours[r, c]).max() for r, c in centres]
    assert np.median(diffs) <= 2


@pytest.mark.parametrize("encoding", ["simple", "overlap"])
def test_matplotlib_line_reference_draws_the_same_lines(encoding):
    """Per column, the lit rows of our rasteriser and of matplotlib's plot agree to a pixel or two."""
    import io

    n = 4608
    # the thirds sit at different heights, so matplotlib's overdrawing never hides a channel
    offset = np.repeat([0.0, 1.2, -1.2], n // 3)
    flux = (2.0 + 0.5 * np.sin(np.linspace(0, 6 * np.pi, n)) + offset).astype(np.float32)[None]
    mask = np.zeros((1, n), bool)
    settings = RenderSettings(encoding=encoding)
    png = matplotlib_line_png(flux[0], mask[0], settings)
    reference = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    ours = render(flux, mask, settings)[0].astype(int)
    for channel in range(3):
        gaps = []
        for column in range(10, 214, 7):
            lit_ours = np.flatnonzero(ours[:, column, channel] > 127)
            lit_ref = np.flatnonzero(reference[:, column, channel] > 127)
            if len(lit_ours) and len(lit_ref):
                gaps.append(abs(lit_ours.mean() - lit_ref.mean()))
        assert len(gaps) > 20 and np.median(gaps) <= 1.5, (channel, gaps)


def test_writeback_rows_measure_time_and_memory(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUICK_SIZES, "writeback", (300, 600, 1200))
    rows = bench.run_bench(quick=True, steps=("writeback",), out=tmp_path / "b.json", workdir=tmp_path,
                           reference=False).rows
    row = rows[0]
    assert row.sizes == [300, 600, 1200]
    assert all(s > 0 for s in row.ours) and all(s > 0 for s in row.baseline)
    assert all(30 < rss < 2000 for rss in row.extra["rss_mb"])
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["rows"][0]["sizes"] == [300, 600, 1200] and "cores" in saved["machine"]
    table = bench.format_table(rows)
    assert "write-back" in table and "peak RSS" in table
    assert not list(tmp_path.glob("annotate-bench-*"))  # temporary files are cleaned up


def test_benchmark_catalog_is_an_spall_like_table(tmp_path):
    path = make_catalog(tmp_path / "c.fits", 50)
    with fits.open(path) as hdul:
        assert hdul[1].name == "SPALL" and len(hdul[1].data) == 50
        assert {"CATALOGID", "CLASS", "Z", "ZWARNING"} <= set(hdul[1].columns.names)


def test_linearity_and_ratio():
    rate = bench.Row("x", "items/s", sizes=[10, 20, 40], ours=[100.0, 100.0, 50.0], baseline=[10.0, 20.0, 25.0])
    assert rate.ratio() == [10.0, 5.0, 2.0]
    assert bench.linearity(rate) == pytest.approx(2.0)  # per-item cost doubled: not linear
    seconds = bench.Row("y", "seconds", sizes=[10, 100, 1000], ours=[1.0, 10.0, 100.0], baseline=[0.5, 5.0, 50.0])
    assert seconds.ratio() == [0.5, 0.5, 0.5] and bench.linearity(seconds) == pytest.approx(1.0)


def test_bench_command_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bench.QUICK_SIZES, "render", (20, 40, 80))
    monkeypatch.setitem(bench.BASELINE_LIMIT, "render", 5)
    assert main(["bench", "--quick", "--steps", "render", "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "render 2D Map" in printed and "render Simple" in printed and "render Overlap" in printed
    assert "machine:" in printed
    saved = json.loads((tmp_path / "r.json").read_text())
    rows = saved["rows"]
    # the speed reference before and after the steps, printed and saved
    line = next(text for text in printed.splitlines() if text.startswith("speed reference"))
    for when in ("before", "after"):
        assert 0.05 < saved["speed_reference"][when]["python"] < 60 and 0.005 < saved["speed_reference"][when]["numpy"] < 30
        assert f"{saved['speed_reference'][when]['python']:.2f}" in line
    assert [r["step"] for r in rows] == ["render Simple (1 core)", "render Overlap (1 core)", "render 2D Map (1 core)"]
    assert all(r["ratio"][0] > 1 for r in rows)  # array rendering beats one matplotlib figure per spectrum


def test_merge_row_measures_a_sharded_merge(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUICK_SIZES, "merge", (300, 600, 900))
    row = bench.run_bench(quick=True, steps=("merge",), workdir=tmp_path, reference=False).rows[0]
    assert row.sizes == [300, 600, 900] and all(s > 0 for s in row.ours)
    assert all(rss >= base > 30 for rss, base in zip(row.extra["rss_mb"], row.extra["baseline_rss_mb"]))
    assert "merge peak RSS" in bench.format_table([row])


def test_fit_row_measures_the_fit_and_says_when_redrock_is_missing(tmp_path, monkeypatch):
    import annotate.fit.redrock_compare as redrock_compare

    def missing():
        raise ImportError("redrock is not installed: pip install -e \".[compare]\"")

    monkeypatch.setattr(redrock_compare, "import_redrock", missing)
    from annotate.bench.fit import bench_fit

    row = bench_fit((6,), tmp_path)
    assert row.sizes == [6] and row.ours[0] > 0 and row.extra["rate_without_prior"][0] > 0
    assert 0.0 <= row.extra["success"][0] <= 1.0
    assert np.isnan(row.baseline[0]) and "compare" in row.extra["baseline_missing"]
    assert "without the prior" in bench.format_table([row])
    # six spectra: their float64 flux and weights are under 1 MB, the caches were built before
    assert -1.0 < row.extra["batch_rss_mb"][0] < 100.0
    assert "fit's peak memory" in bench.format_table([row])


def test_end_to_end_keeps_the_fastest_of_its_runs(tmp_path):
    """Each size is run RUNS times with a fresh output and store; the rate is the fastest run's,
    and every run's seconds are kept."""
    from annotate.bench.end_to_end import RUNS, bench_end_to_end

    row = bench_end_to_end([6], tmp_path)
    runs = row.extra["runs_s"][0]
    assert row.sizes == [6] and len(runs) == RUNS >= 2 and all(s > 0 for s in runs)
    assert row.ours[0] == pytest.approx(6 / min(runs))
    assert row.baseline[0] > 0
    assert not (tmp_path / "e2e-6" / "out.fits").exists()  # outputs removed after each size
