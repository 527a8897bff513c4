"""Rendered images: an HDF5 image store made from a spectra store with Dask, and contact sheets.

Image store layout:

    /images   (n_rows, S, S, 3) uint8, chunked by rows, LZF-compressed
    /done     (n_rows,) bool, rows already rendered (a rerun renders only the others)
    attrs: render (JSON of RenderSettings), spectra_store, spectra_created (the spectra store's
           creation stamp: a re-ingested or different store is refused), spectra_revision (the
           spectra store's revision the images were rendered at: when rows of the store have been
           written or reset since, every row is rendered again), n_pix, annotate_version,
           writing (1 while a write is under way: an image store left so by a killed render is
           set aside and made anew, `store.writing_to`)

Rows whose spectrum was not ingested OK are rendered from what the store holds for them (all
masked: a black image) and marked done. Tasks receive the store's file name and a row range,
never open h5py objects; only the main process writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from . import __version__
from .errors import ConfigError, StoreError
from .parallel import TASK_ROWS
from .render import ENCODINGS, RenderSettings, render
from .store import STATUS, open_store, read_labels, read_rows, set_aside_if_damaged, store_revision, writing_to

ROWS_PER_CHUNK = 32


def render_rows(task: dict) -> np.ndarray:
    """(stop - start, S, S, 3) uint8 images of rows [start, stop) of a spectra store (on a worker)."""
    rows = read_rows(task["store"], task["start"], task["stop"])
    mask = rows["mask"] | (rows["status"] != STATUS["OK"])[:, None]
    return np.ascontiguousarray(render(rows["flux"], mask, RenderSettings.from_dict(task["render"])))


def spectra_store_stamp(spectra_store: Path) -> str:
    """The spectra store's identity (its id and creation time), new whenever it is made anew."""
    with h5py.File(spectra_store, "r") as h5:
        return f"{h5.attrs.get('store_id', '')} {h5.attrs.get('created', '')}"


def check_image_store(path: Path, n_rows: int, spectra_store: Path, settings: RenderSettings | None = None) -> None:
    """StoreError unless `path` was rendered from this very spectra store (and these settings);
    also for a file that is not an image store at all (a catalog, a spectra store), which is
    left as it is."""
    not_image_store = StoreError(f"{path} exists and is not an image store (its images and their marks are not "
                                 "in it); choose a new --out")
    try:
        with h5py.File(path, "r") as h5:
            if not ("images" in h5 and "done" in h5 and "render" in h5.attrs):
                raise not_image_store
            same_store = (h5["done"].shape[0] == n_rows
                          and str(h5.attrs.get("spectra_created", "")) == spectra_store_stamp(spectra_store))
            same_settings = settings is None or json.loads(h5.attrs["render"]) == settings.to_dict()
    except OSError:
        raise not_image_store from None
    if not same_store:
        raise StoreError(f"{path} was rendered from another spectra store than {spectra_store} "
                         "(or before it was made anew); choose a new --out")
    if not same_settings:
        raise StoreError(f"{path} holds images of other render settings; choose a new --out")


def _open_image_store(path: Path, n_rows: int, settings: RenderSettings, spectra_store: Path, n_pix: int) -> str:
    """The image store at `path`, checked or made; a note (one line, or '') when one that cannot
    be trusted (a render killed while writing it, `store.writing_to`) was set aside for it."""
    note = set_aside_if_damaged(path, "every row is rendered again") or ""
    if path.exists():
        check_image_store(path, n_rows, spectra_store, settings)
        return note
    size = settings.image_size
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.create_dataset("images", shape=(n_rows, size, size, 3), dtype="u1",
                          chunks=(min(ROWS_PER_CHUNK, n_rows), size, size, 3) if n_rows else None,
                          compression="lzf" if n_rows else None)
        h5.create_dataset("done", data=np.zeros(n_rows, bool))
        h5.attrs.update({"render": json.dumps(settings.to_dict()), "spectra_store": str(spectra_store),
                         "spectra_created": spectra_store_stamp(spectra_store),
                         "spectra_revision": store_revision(spectra_store), "n_pix": n_pix,
                         "annotate_version": __version__})
    tmp.replace(path)
    return note


def render_store(spectra_store: str | Path, out: str | Path, settings: RenderSettings,
                 scheduler: str = "auto", n_workers: int | None = None, rows_per_task: int = TASK_ROWS,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Render every row of `spectra_store` into the image store `out` (created or resumed).
    Returns {'rendered': rows rendered now, 'skipped': rows already done, 'n_rows': total,
    'stale': rows that were done but are rendered again because rows of the spectra store have
    been written or reset since (a resumed or repeated ingest): then all of them are,
    'set_aside': a note when an image store left mid-write by a killed render was moved aside
    and made anew, else ''}. Every write marks the image store `writing` until it has reached
    the file, as the spectra store's do (`store.writing_to`)."""
    from .parallel import map_unordered

    info = open_store(spectra_store)
    settings.check_grid(info.grid.n_pix)
    out = Path(out)
    set_aside = _open_image_store(out, info.n_rows, settings, info.path, info.grid.n_pix)
    revision = store_revision(info.path)
    with h5py.File(out, "r") as h5:
        done = h5["done"][()]
        rendered_at = int(h5.attrs.get("spectra_revision", -1))
    stale = 0
    if rendered_at != revision:
        with writing_to(out, count=False) as h5:
            stale = int(done.sum())   # which rows changed is not recorded: all are rendered again,
            done[:] = False           # marked not done on the file before the new revision is
            h5["done"][:] = done
            h5.flush()
            h5.attrs["spectra_revision"] = revision
    tasks = [{"store": str(info.path), "start": start, "stop": min(start + rows_per_task, info.n_rows),
              "render": settings.to_dict()}
             for start in range(0, info.n_rows, rows_per_task)
             if not done[start:start + rows_per_task].all()]
    rendered = 0
    already = int(done.sum())
    for index, images in map_unordered(render_rows, tasks, scheduler=scheduler, n_workers=n_workers):
        task = tasks[index]
        with writing_to(out, count=False) as h5:  # the images reach the file before they are marked done
            h5["images"][task["start"]:task["stop"]] = images   # (as store.write_rows does)
            h5.flush()
            h5["done"][task["start"]:task["stop"]] = True
        rendered += int((~done[task["start"]:task["stop"]]).sum())
        if progress is not None:
            progress(task["stop"] - task["start"])
    return {"rendered": rendered, "skipped": already, "n_rows": info.n_rows, "stale": stale, "set_aside": set_aside}


def read_images(path: str | Path, start: int, stop: int) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5["images"][start:stop]


def _catalog_labels(store: Path) -> dict:
    """Class and z from the catalog the store was ingested from (its survey's columns), if readable."""
    from .errors import AnnotateError
    from .catalogs import read_catalog
    from .surveys import load_survey

    with h5py.File(store, "r") as h5:
        catalog, survey = str(h5.attrs.get("catalog", "")), str(h5.attrs.get("survey", ""))
    if not catalog or not survey or not Path(catalog).is_file():
        return {}
    try:
        definition = load_survey(survey)
        reference = definition.reference(read_catalog(Path(catalog), definition))
    except AnnotateError:
        return {}
    return {"class": reference["class"], "z": reference["z"]}


def contact_sheet(spectra_store: str | Path, out: str | Path, n: int = 8, seed: int = 0,
                  encodings: tuple = ENCODINGS) -> Path:
    """A PNG of `n` spectra of the store (drawn at random, seeded, among rows ingested OK), one row
    each, one column per encoding, with the object id and, where the store has labels, class and z."""
    from PIL import Image, ImageDraw

    info = open_store(spectra_store)
    with h5py.File(info.path, "r") as h5:
        status = h5["status"][()]
        object_ids = h5["object_id"][()]
    candidates = np.flatnonzero(status == STATUS["OK"])
    if len(candidates) == 0:
        raise StoreError(f"{info.path}: no ingested spectra to preview")
    rows = np.sort(np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False))
    labels = read_labels(info.path) or _catalog_labels(info.path)
    settings = []
    for encoding in encodings:  # encodings this grid cannot show (too long, too short) are left out
        try:
            RenderSettings(encoding=encoding).check_grid(info.grid.n_pix)
            settings.append(RenderSettings(encoding=encoding))
        except ConfigError:
            continue
    if not settings:
        raise StoreError(f"{info.path}: no encoding can show a grid of {info.grid.n_pix} pixels")
    encodings = tuple(s.encoding for s in settings)
    size, caption, gap = settings[0].image_size, 40, 6
    sheet = Image.new("RGB", (len(encodings) * (size + gap) + gap, len(rows) * (size + caption + gap) + 24),
                      (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for j, encoding in enumerate(encodings):
        draw.text((gap + j * (size + gap), 6), encoding, fill=(255, 255, 255))
    for i, row in enumerate(rows):
        data = read_rows(info.path, int(row), int(row) + 1)
        top = 24 + i * (size + caption + gap)
        for j, setting in enumerate(settings):
            image = render(data["flux"], data["mask"], setting)[0]
            sheet.paste(Image.fromarray(np.ascontiguousarray(image)), (gap + j * (size + gap), top))
        object_id = object_ids[row].decode() if isinstance(object_ids[row], bytes) else str(object_ids[row])
        text = f"row {row}  id {object_id}"
        if "class" in labels:
            text += f"  {labels['class'][row]}"
        if "z" in labels:
            text += f"  z={float(labels['z'][row]):.4f}"
        draw.text((gap, top + size + 4), text, fill=(230, 230, 230))
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(out)
    return out
