"""Image stores rendered from spectra stores (resumable), and contact sheets."""

import h5py
import numpy as np
import pytest
from PIL import Image

from annotate.cli import main
from annotate.errors import StoreError
from annotate.grid import WavelengthGrid
from annotate.images import contact_sheet, read_images, render_store
from annotate.render import RenderSettings, render
from annotate.simulate.spectra import draw_sample
from annotate.simulate.templates import load_library
from annotate.store import STATUS, create_store, write_rows
from helpers import run_dying_once_written


@pytest.fixture()
def spectra_store(tmp_path):
    grid = WavelengthGrid()
    sample = draw_sample(40, load_library(), grid, seed=3)
    status = np.full(40, STATUS["OK"], np.int8)
    status[5] = STATUS["NO_SPECTRUM"]
    path = tmp_path / "spectra.h5"
    create_store(path, np.arange(40), [""] * 40, grid, labels={"class": sample["class"], "z": sample["z"]})
    write_rows(path, 0, {"flux": sample["flux"], "ivar": sample["ivar"], "mask": sample["mask"].astype(np.uint8),
                         "status": status})
    return path, sample


@pytest.mark.parametrize("encoding", ["2dmap", "simple", "overlap"])
def test_image_store_holds_what_render_draws(tmp_path, spectra_store, encoding):
    path, sample = spectra_store
    settings = RenderSettings(encoding=encoding)
    counts = render_store(path, tmp_path / "images.h5", settings, scheduler="sync", rows_per_task=16)
    assert counts == {"rendered": 40, "skipped": 0, "n_rows": 40}
    images = read_images(tmp_path / "images.h5", 0, 40)
    expected = render(sample["flux"], sample["mask"], settings)
    ok = np.arange(40) != 5
    np.testing.assert_array_equal(images[ok], expected[ok])
    assert not images[5].any()  # a row without a spectrum is a black image


def test_rendering_resumes_and_refuses_other_settings(tmp_path, spectra_store):
    path, _ = spectra_store
    out = tmp_path / "images.h5"
    settings = RenderSettings(encoding="simple")
    render_store(path, out, settings, scheduler="sync", rows_per_task=16)
    with h5py.File(out, "r+") as h5:  # as if the run had stopped after the first task
        h5["done"][16:] = False
        h5["images"][16:] = 0
    counts = render_store(path, out, settings, scheduler="threads", rows_per_task=16)
    assert counts["rendered"] == 24 and counts["skipped"] == 16
    assert read_images(out, 39, 40).any()
    with pytest.raises(StoreError, match="other render settings"):
        render_store(path, out, RenderSettings(encoding="overlap"), scheduler="sync")


def test_an_image_store_of_another_spectra_store_is_refused(tmp_path, spectra_store):
    path, sample = spectra_store
    out = tmp_path / "images.h5"
    render_store(path, out, RenderSettings(), scheduler="sync")
    other = tmp_path / "other.h5"  # same number of rows, other spectra
    create_store(other, np.arange(40), [""] * 40, WavelengthGrid())
    with pytest.raises(StoreError, match="another spectra store"):
        render_store(other, out, RenderSettings(), scheduler="sync")


def test_empty_store_renders_to_an_empty_image_store(tmp_path):
    empty = tmp_path / "empty.h5"
    create_store(empty, [], [], WavelengthGrid())
    assert render_store(empty, tmp_path / "img.h5", RenderSettings(), scheduler="sync")["n_rows"] == 0


def test_contact_sheet_shows_every_encoding_with_labels(tmp_path, spectra_store, capsys):
    path, _ = spectra_store
    assert main(["render", "--store", str(path), "--preview", "3", "--out", str(tmp_path / "sheet.png")]) == 0
    assert "contact sheet" in capsys.readouterr().out
    sheet = Image.open(tmp_path / "sheet.png")
    # three 224-px columns with 6-px gaps; three rows of 224 px plus captions
    assert sheet.size == (3 * 230 + 6, 3 * (224 + 40 + 6) + 24)


def test_render_command_writes_an_image_store(tmp_path, spectra_store, capsys):
    path, _ = spectra_store
    out = tmp_path / "img.h5"
    code = main(["render", "--store", str(path), "--out", str(out), "--encoding", "overlap", "--scheduler", "sync",
                 "--no-progress"])
    assert code == 0 and "rendered 40 rows" in capsys.readouterr().out
    with h5py.File(out, "r") as h5:
        assert h5["images"].shape == (40, 224, 224, 3) and h5["done"][()].all()
        assert '"encoding": "overlap"' in h5.attrs["render"]


_RENDERS = r"""
import sys
from annotate.images import render_store
from annotate.render import RenderSettings

render_store(sys.argv[1], sys.argv[2], RenderSettings(), scheduler="sync", rows_per_task=16)
"""


def test_rows_marked_done_have_their_images_even_when_the_renderer_dies_right_after(tmp_path, spectra_store):
    """Killed while writing (a preempted job), the image store never marks rows done whose images
    did not reach the file: a resumed render would skip them and training would read black images."""
    path, sample = spectra_store
    out = tmp_path / "images.h5"
    run_dying_once_written("/done", _RENDERS, path, out)   # after the first task's rows are marked done
    with h5py.File(out, "r") as h5:
        marked = h5["done"][()]
    assert marked[:16].all() and not marked[16:].any()
    expected = render(sample["flux"][:16], sample["mask"][:16], RenderSettings())
    images = read_images(out, 0, 16)
    drawn = np.arange(16) != 5   # row 5 has no spectrum: black
    np.testing.assert_array_equal(images[drawn], expected[drawn])
    assert images[drawn].any(axis=(1, 2, 3)).all() and not images[5].any()
