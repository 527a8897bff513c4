"""Training data: spectra and labels for a recipe, the split, label normalisation and batches.

Three sources (a recipe's `data`):
- `simulate`: spectra simulated from the template library (the shipped model's training set);
- `store`: a spectra store whose `/labels` group holds the labels (class, z, teff, logg, feh);
- `catalog`: the real workflow. Labels come from the survey catalog's columns (CLASS, Z, and the
  stellar columns the survey file names), optionally joined on the object id with a stellar-parameter
  catalog (LAMOST's A/F/G/K catalogue); spectra from a store ingested from the catalog's files.

Rows without a label are masked out of that task's loss, never filled in; z is masked where the
survey's ZWARNING is set. The split is by object, seeded, and stored with the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import CLASS_NAMES
from ..checkpoint import LabelNorm
from ..errors import CatalogError, ConfigError
from ..grid import WavelengthGrid
from ..model import STELLAR_LABELS
from ..render import RenderSettings, block_values, model_input, to_model_input

LABELS = ("class", "z", "teff", "logg", "feh")
CATALOG_KEYS = {"catalog", "survey", "spectra_root", "store", "stellar_catalog", "object_column", "ingest_workers"}


def load_training_data(data_spec: dict, grid: WavelengthGrid) -> dict:
    """flux, mask (n, n_pix) and labels class (n,) str, z, teff, logg, feh, plus 'object' ids
    (and 'split' when the source fixes it, 'held_out_stars' for simulated sets)."""
    if "simulate" in data_spec:
        from ..simulate.dataset import simulate_training_set

        return simulate_training_set(grid=grid, **data_spec["simulate"])
    if "catalog" in data_spec:
        return catalog_training_data(data_spec, grid)
    return store_training_data(data_spec["store"], grid, data_spec.get("images"))


def store_training_data(store: str | Path, grid: WavelengthGrid, images: str | None = None,
                        labels: dict | None = None) -> dict:
    """The rows ingested OK from a store, with `labels` (default: the store's /labels group)."""
    from ..store import STATUS, open_store, read_labels, read_rows

    info = open_store(store)
    if info.grid != grid:
        raise ConfigError(f"store grid {info.grid} differs from the recipe grid {grid}")
    rows = read_rows(info.path, 0, info.n_rows)
    labels = read_labels(info.path) if labels is None else labels
    ok = rows["status"] == STATUS["OK"]
    data = {"flux": rows["flux"][ok], "mask": rows["mask"][ok]}
    for key in LABELS:
        if key not in labels:
            raise ConfigError(f"store {info.path} has no /labels/{key}")
        data[key] = np.asarray(labels[key])[ok]
    data["object"] = np.asarray(labels.get("object", np.arange(info.n_rows)))[ok]
    data["split"] = np.asarray(labels["split"])[ok] if "split" in labels else None
    if images:
        data["images_path"] = str(images)
        data["image_rows"] = np.flatnonzero(ok)
        _check_image_store(data["images_path"], info.path, info.n_rows, data["image_rows"])
    return data


def catalog_labels(spec: dict) -> tuple[dict, dict, list[str], np.ndarray]:
    """Labels per catalog row from the survey's columns (and the joined stellar catalog), the
    table read, spectrum paths and refused rows. Rows the survey's selection drops get no labels."""
    from ..catalogs import read_catalog
    from ..task import resolve_paths
    from ..surveys import load_survey

    catalog = Path(spec["catalog"])
    survey = load_survey(spec.get("survey", "sdss_dr18"))
    extra = (spec["object_column"],) if spec.get("object_column") else ()
    table = read_catalog(catalog, survey, extra=extra)
    reference = survey.reference(table, roles=("object_id", "class", "z", "zwarning", "teff", "logg", "feh"))
    if spec.get("stellar_catalog"):
        joined = join_stellar(spec["stellar_catalog"], survey, reference["object_id"])
        for key in STELLAR_LABELS:
            reference[key] = np.where(np.isfinite(joined[key]), joined[key], reference[key])
    selected = survey.selected(table)
    labels = {"class": np.where(selected, reference["class"], "").astype(object)}
    with np.errstate(invalid="ignore"):
        z_ok = selected & np.isfinite(reference["z"]) & (np.nan_to_num(reference["zwarning"], nan=0) == 0)
    labels["z"] = np.where(z_ok, reference["z"], np.nan)
    for key in STELLAR_LABELS:
        labels[key] = np.where(selected, reference[key], np.nan)
    if spec.get("object_column"):
        column = next(n for n in table if n.upper() == spec["object_column"].upper())
        labels["object"] = np.asarray(table[column]).astype(str)
    else:
        labels["object"] = reference["object_id"].astype(str)
    root = Path(spec.get("spectra_root") or catalog.parent)
    paths, refused = resolve_paths(survey.spectrum_paths(table), root)
    return labels, {"survey": survey, "catalog": catalog}, paths, refused


def catalog_training_data(spec: dict, grid: WavelengthGrid) -> dict:
    """Spectra from `spec['store']` (ingested from the catalog's files first if it does not
    exist or is incomplete) with labels from the catalog."""
    from ..ingest import ingest
    from ..store import create_store, open_store

    unknown = set(spec) - CATALOG_KEYS
    if unknown:
        raise ConfigError(f"unknown data keys {', '.join(sorted(unknown))}; valid with catalog: "
                          f"{', '.join(sorted(CATALOG_KEYS))}")
    if not spec.get("store"):
        raise ConfigError("data.catalog needs data.store: the spectra store to ingest into (or read)")
    labels, source, paths, refused = catalog_labels(spec)
    store = Path(spec["store"])
    if store.exists():
        if open_store(store).n_rows != len(paths):
            raise ConfigError(f"{store} has {open_store(store).n_rows} rows but {source['catalog']} has {len(paths)}")
    else:
        create_store(store, labels["object"], paths, grid, survey=source["survey"].name,
                     reader=source["survey"].reader, catalog=str(source["catalog"]))
    workers = int(spec.get("ingest_workers", 0))
    ingest(store, paths, refused, reader=source["survey"].reader, bad_bits=source["survey"].bad_pixel_bits,
           scheduler="distributed" if workers > 1 else "sync", n_workers=workers or None)
    return store_training_data(store, grid, labels=labels)


def join_stellar(path: str | Path, survey, object_ids: np.ndarray) -> dict:
    """teff, logg, feh per catalog row from a stellar-parameter table (FITS or CSV) left-joined on
    the survey's object id column; NaN where the object is not in it."""
    from astropy.table import Table

    try:
        table = Table.read(path)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: not a readable stellar-parameter table ({str(exc).splitlines()[0]})") from None
    stellar = survey.reference({name: table[name] for name in table.colnames},
                               roles=("object_id", "teff", "logg", "feh"))
    ids = stellar["object_id"].astype(str)
    if len(np.unique(ids)) != len(ids):
        raise CatalogError(f"{path}: object ids repeat; a stellar-parameter table has one row per object")
    order = np.argsort(ids)
    wanted = np.asarray(object_ids).astype(str)
    where = np.clip(np.searchsorted(ids[order], wanted), 0, max(len(ids) - 1, 0))
    found = (ids[order][where] == wanted) if len(ids) else np.zeros(len(wanted), bool)
    return {key: np.where(found, stellar[key][order][where], np.nan) if len(ids) else np.full(len(wanted), np.nan)
            for key in STELLAR_LABELS}


def image_store_settings(path: str | Path) -> RenderSettings:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return RenderSettings.from_dict(json.loads(h5.attrs["render"]))
    except (OSError, KeyError) as exc:
        raise ConfigError(f"{path}: not an image store made by annotate render ({exc})") from None


def _check_image_store(path: str, spectra_store: str | Path, n_rows: int, rows: np.ndarray) -> None:
    import h5py

    from ..errors import StoreError
    from ..images import check_image_store
    from ..store import store_revision

    image_store_settings(path)
    try:
        check_image_store(Path(path), n_rows, Path(spectra_store))
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    with h5py.File(path, "r") as h5:
        writing, rendered_at = int(h5.attrs.get("writing", 0)), int(h5.attrs.get("spectra_revision", -1))
        done = h5["done"][()]
    if writing:
        raise ConfigError(f"{path}: a render was stopped while writing it; run annotate render again "
                          "(it sets this store aside and renders every row anew)")
    if rendered_at != store_revision(spectra_store):
        raise ConfigError(f"{path}: rows of {spectra_store} were written after these images were rendered; "
                          "run annotate render again")
    if not done[rows].all():
        raise ConfigError(f"{path}: {int((~done[rows]).sum())} rows are not rendered yet; run annotate render again")


# ------------------------------------------------------------------------------------------------
# split, normalisation, targets

def split_by_object(objects: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """(n,) array of 'train'/'val'/'test', all rows of one object in the same split (seeded)."""
    unique, inverse = np.unique(np.asarray(objects), return_inverse=True)
    # a stream of its own: default_rng(seed) would repeat the simulator's draws for the same seed
    rng = np.random.default_rng([seed, 0x53504C54])
    draw = rng.random(len(unique))
    assign = np.where(draw < test_fraction, "test", np.where(draw < test_fraction + val_fraction, "val", "train"))
    return assign[inverse.reshape(-1)]


def fit_label_norm(data: dict, train: np.ndarray) -> dict:
    """Mean and std of each regression target over the labelled training rows (z as log10(1+z))."""
    norms = {}
    z = data["z"][train]
    z = np.log10(1.0 + z[np.isfinite(z)])
    norms["z"] = LabelNorm(float(np.mean(z)) if len(z) else 0.0, float(np.std(z) or 1.0) if len(z) else 1.0,
                           "log1p10")
    for key in STELLAR_LABELS:
        values = data[key][train]
        values = values[np.isfinite(values)]
        norms[key] = LabelNorm(float(values.mean()) if len(values) else 0.0,
                               float(values.std()) if len(values) > 1 and values.std() > 0 else 1.0)
    return norms


def encode_targets(data: dict, norms: dict) -> dict:
    """Normalised targets and masks: class index (-100 = no label), z and its mask, stellar
    (n, 3) and its mask (stars with a finite value only)."""
    class_index = np.array([CLASS_NAMES.index(c) if c in CLASS_NAMES else -100 for c in data["class"]], np.int64)
    stellar = np.stack([norms[k].encode(np.asarray(data[k], float)) for k in STELLAR_LABELS], axis=1)
    stellar = stellar.astype(np.float32)
    is_star = (class_index == CLASS_NAMES.index("STAR"))[:, None]
    stellar_mask = np.isfinite(stellar) & is_star
    with np.errstate(invalid="ignore"):
        z = norms["z"].encode(np.asarray(data["z"], float)).astype(np.float32)
    return {"class": class_index, "z": np.nan_to_num(z), "z_mask": np.isfinite(z),
            "stellar": np.nan_to_num(stellar), "stellar_mask": stellar_mask}


def epoch_batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int, world_size: int = 1) -> list[np.ndarray]:
    """The training batches of one epoch: a permutation of `rows` drawn from (seed, epoch) alone,
    so a resumed run sees the same batches in the same order. With several ranks the list is cut
    to a multiple of `world_size` (every rank takes the same number of steps)."""
    order = np.random.default_rng([seed, epoch, 0x45504F43]).permutation(np.asarray(rows))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if world_size > 1:
        batches = batches[:len(batches) - len(batches) % world_size]
    return batches


class RenderedBatches(torch.utils.data.Dataset):
    """Map-style dataset indexed by a list of row indices: renders the whole batch at once, or
    reads it from an image store when `data` names one (images_path, image_rows). With `blocks`
    (2D Maps made from spectra only) a batch holds the maps' block values ('blocks',
    `render.block_values`) for `blockpatch.model_outputs` instead of their pixels."""

    def __init__(self, data: dict, targets: dict, settings: RenderSettings, mean: float, std: float,
                 blocks: bool = False):
        self.data, self.targets, self.settings, self.mean, self.std = data, targets, settings, mean, std
        self.blocks = bool(blocks) and not data.get("images_path")
        self._images = None  # h5py dataset, opened in the process that reads (DataLoader workers)

    def __len__(self):
        return len(self.data["flux"])

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def _stored_images(self, indices: np.ndarray) -> np.ndarray:
        if self._images is None:
            import h5py

            self._images = h5py.File(self.data["images_path"], "r")["images"]
        return self._images[self.data["image_rows"][indices]]  # increasing rows, as h5py needs

    def __getitem__(self, indices):
        indices = np.sort(np.asarray(indices))
        if self.data.get("images_path"):
            batch = {"pixels": to_model_input(self._stored_images(indices), self.mean, self.std)}
        else:
            flux, mask = self.data["flux"][indices], self.data["mask"][indices]
            batch = ({"blocks": block_values(flux, mask, self.settings, self.mean, self.std)} if self.blocks
                     else {"pixels": model_input(flux, mask, self.settings, self.mean, self.std)})
        for key, values in self.targets.items():
            batch[key] = torch.from_numpy(values[indices])
        return batch


class DeviceBatches:
    """The same batches as `RenderedBatches`, rendered on the training device (`render_torch`, whose
    images are identical to the numpy renderers'): the spectra and targets are moved there once,
    so a GPU is not kept waiting on CPU rendering and on copying float images to it."""

    def __init__(self, data: dict, targets: dict, settings: RenderSettings, mean: float, std: float, device):
        self.settings, self.mean, self.std, self.device = settings, mean, std, torch.device(device)
        self.flux = torch.as_tensor(np.asarray(data["flux"], np.float32)).to(self.device)
        self.mask = torch.as_tensor(np.asarray(data["mask"], bool)).to(self.device)
        self.targets = {key: torch.from_numpy(values).to(self.device) for key, values in targets.items()}

    def __getitem__(self, indices) -> dict:
        from .. import render_torch

        rows = torch.from_numpy(np.sort(np.asarray(indices))).to(self.device)
        images = render_torch.render(self.flux[rows], self.mask[rows], self.settings)
        batch = {"pixels": render_torch.to_model_input(images, self.mean, self.std)}
        for key, values in self.targets.items():
            batch[key] = values[rows]
        return batch

    def loader(self, batches: list):
        return (self[b] for b in batches)


def batch_loader(dataset: RenderedBatches, batches: list, num_workers: int = 0, pin_memory: bool = False):
    """A DataLoader over precomputed batches of row indices (rendering happens in its workers)."""
    return torch.utils.data.DataLoader(dataset, sampler=[b.tolist() for b in batches], batch_size=None,
                                       num_workers=num_workers, pin_memory=pin_memory)
