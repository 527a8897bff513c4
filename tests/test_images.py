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
from annotate.store import STATUS, create_store, prepare_store, write_rows
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
    assert counts == {"rendered": 40, "skipped": 0, "n_rows": 40, "stale": 0, "set_aside": ""}
    images = read_images(tmp_path / "images.h5", 0, 40)
    expected = render(sample["flux"], sample["mask"], settings)
    ok = np.arange(40) != 5
    np.testing.assert_array_equal(images[ok], expected[ok])
    assert not images[5].any()  # a row without a spectrum is a black image


def test_images_rendered_on_forked_workers_equal_those_rendered_here(tmp_path, spectra_store):
    """`annotate render` under 'auto' renders 2 to 40 tasks on workers forked from its process."""
    from annotate.parallel import can_fork

    if not can_fork():
        pytest.skip("workers are forked on Linux only")
    path, _ = spectra_store
    settings = RenderSettings(encoding="overlap")
    render_store(path, tmp_path / "here.h5", settings, scheduler="sync", rows_per_task=16)
    counts = render_store(path, tmp_path / "forked.h5", settings, scheduler="processes", n_workers=2, rows_per_task=16)
    assert counts == {"rendered": 40, "skipped": 0, "n_rows": 40, "stale": 0, "set_aside": ""}
    np.testing.assert_array_equal(read_images(tmp_path / "forked.h5", 0, 40), read_images(tmp_path / "here.h5", 0, 40))


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


def test_rows_written_again_after_rendering_are_rendered_again(tmp_path, spectra_store, capsys):
    """A row read again into the spectra store (a failed file restored, a resumed ingest) must
    not keep the image drawn from what the row held before: training would read a black image
    under the row's label, and a rerun of render would report the store complete."""
    path, sample = spectra_store
    out = tmp_path / "images.h5"
    render_store(path, out, RenderSettings(), scheduler="sync", rows_per_task=16)
    assert not read_images(out, 5, 6).any()   # row 5: no spectrum yet, a black image
    write_rows(path, 5, {"flux": sample["flux"][5:6], "ivar": sample["ivar"][5:6],   # its file is back
                         "mask": sample["mask"][5:6].astype(np.uint8), "status": np.array([STATUS["OK"]], np.int8)})
    code = main(["render", "--store", str(path), "--out", str(out), "--scheduler", "sync", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "written after its images were made: all 40 done rows are rendered again" in printed and "rendered 40 rows, 0 already done" in printed
    np.testing.assert_array_equal(read_images(out, 0, 40), render(sample["flux"], sample["mask"], RenderSettings()))
    counts = render_store(path, out, RenderSettings(), scheduler="sync")   # nothing changed since: all kept
    assert counts == {"rendered": 0, "skipped": 40, "n_rows": 40, "stale": 0, "set_aside": ""}


def test_rows_reset_to_another_object_make_the_images_stale(tmp_path, spectra_store):
    """prepare_store resets rows whose object id changed (a re-sorted catalog) before they are read
    again; the images of the old objects must not pass for current in between."""
    from annotate.errors import ConfigError
    from annotate.training.data import _check_image_store

    path, _ = spectra_store
    out = tmp_path / "images.h5"
    render_store(path, out, RenderSettings(), scheduler="sync")
    rows = np.arange(40)
    _check_image_store(str(out), path, 40, rows)   # current: accepted
    ids = [str(i) for i in range(40)]
    ids[7] = "another"
    prepare_store(path, ids, [""] * 40, WavelengthGrid())
    with pytest.raises(ConfigError, match="written after these images were rendered; run annotate render again"):
        _check_image_store(str(out), path, 40, rows)
    assert render_store(path, out, RenderSettings(), scheduler="sync")["stale"] == 40
    _check_image_store(str(out), path, 40, rows)


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


def test_render_refuses_an_out_that_is_not_an_image_store_or_cannot_be_made(tmp_path, spectra_store, capsys):
    """--out naming an existing file that is not an image store (a spectra store, a catalog) is
    refused in one line and left as it is; so is an --out in a folder that is not there (here a
    path under a regular file), not a traceback."""
    import hashlib

    path, _ = spectra_store
    other_store = tmp_path / "other.h5"
    create_store(other_store, np.arange(3), [""] * 3, WavelengthGrid())
    catalog = tmp_path / "cat.fits"
    catalog.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, message in ((other_store, "is not an image store"), (catalog, "is not an image store"),
                         (blocker / "img.h5", "--out's folder is missing or not writable"),
                         (blocker / "sheet.png", "--out's folder is missing or not writable")):
        before = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None
        preview = ["--preview", "2"] if out.suffix == ".png" else []
        code = main(["render", "--store", str(path), "--out", str(out), *preview, "--scheduler", "sync", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("annotate: error: ") and message in err[0], err
        assert str(out) in err[0] or str(blocker) in err[0]
        if before is not None:
            assert hashlib.sha256(out.read_bytes()).hexdigest() == before


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


def test_an_image_store_left_mid_write_is_refused_by_training_and_set_aside_by_the_next_render(tmp_path, spectra_store):
    """HDF5 is not crash-safe (see store.writing_to): an image store whose writer was killed keeps
    its `writing` mark; training refuses it, and the next render moves it aside and starts over."""
    from annotate.errors import ConfigError
    from annotate.training.data import _check_image_store

    path, sample = spectra_store
    out = tmp_path / "images.h5"
    run_dying_once_written("/done", _RENDERS, path, out)
    with pytest.raises(ConfigError, match="a render was stopped while writing it"):
        _check_image_store(str(out), path, 40, np.arange(40))
    counts = render_store(path, out, RenderSettings(), scheduler="sync", rows_per_task=16)
    assert counts["rendered"] == 40 and counts["skipped"] == 0
    assert "a run stopped while writing it" in counts["set_aside"] and "every row is rendered again" in counts["set_aside"]
    drawn = np.arange(40) != 5
    np.testing.assert_array_equal(read_images(out, 0, 40)[drawn], render(sample["flux"], sample["mask"], RenderSettings())[drawn])
    _check_image_store(str(out), path, 40, np.arange(40))   # whole again
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("images.h5.set-aside-")]) == 1
