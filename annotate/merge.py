"""The merge of a sharded run: shard files -> the annotated catalog, streamed in row chunks.

First pass: every shard file is checked (rows it claims, row count) and its status read, so the
header can carry the number of rows without a prediction. Second pass, inside the streaming
writer (FITS, or HDF5 in slices): for each chunk of rows, the catalog's reference columns are read from a memory map, the
shard's predictions for those rows are read from its file (one shard open at a time), flags and
PRED_* columns are computed, and the chunk is written. Memory is bounded by the chunk and one
shard's predictions, whatever the catalog's length; only the few values the run's cross-check
summary needs are kept per row (compactly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import CLASS_NAMES
from .errors import OutputError
from .flags import PredFlag
from .predict import PREDICTION_KEYS
from .store import STATUS

SUMMARY_ROLES = ("class", "z", "zwarning", "snr", "teff", "logg", "feh")
NO_REFERENCE = int(PredFlag.NO_REFERENCE_Z | PredFlag.UNKNOWN_REFERENCE_CLASS)


def shard_file(folder: Path, shard) -> Path:
    return Path(folder) / "shards" / f"{shard.name}.npz"


def check_shards(folder: Path, shards: list, n_rows: int) -> tuple[dict, list[str]]:
    """Counts per store status over all rows and the rows' error lines; OutputError unless the
    shard files cover rows 0..n_rows once each, in order, each holding the rows the plan says."""
    if sum(s.stop - s.start for s in shards) != n_rows or any(a.stop != b.start for a, b in zip(shards, shards[1:])) \
            or (shards and shards[0].start != 0):
        raise OutputError(f"the plan's shards do not cover the catalog's {n_rows} rows once each")
    counts = {name: 0 for name in STATUS}
    errors: list[str] = []
    for shard in shards:
        with np.load(shard_file(folder, shard), allow_pickle=False) as data:
            status = data["status"]
            if (int(data["start"]), int(data["stop"])) != (shard.start, shard.stop) or \
                    len(status) != shard.stop - shard.start:
                raise OutputError(f"{shard.name} holds rows {int(data['start'])}-{int(data['stop'])}, "
                                  f"the plan says {shard.start}-{shard.stop}")
            for name, code in STATUS.items():
                counts[name] += int((status == code).sum())
            errors.extend(e for e in data["errors"].tolist() if e)
    return counts, errors


class ShardReader:
    """Predictions of any row range, read from the shard files that hold it (the last shard read
    stays open: chunks go through the rows in order)."""

    def __init__(self, folder: Path, shards: list):
        self.folder, self.shards = Path(folder), shards
        self._index, self._data = None, None

    def _load(self, index: int) -> dict:
        if self._index != index:
            with np.load(shard_file(self.folder, self.shards[index]), allow_pickle=False) as data:
                self._data = {key: data[key] for key in PREDICTION_KEYS}
            self._index = index
        return self._data

    def rows(self, start: int, stop: int) -> dict:
        starts = np.array([s.start for s in self.shards])
        first = int(np.searchsorted(starts, start, side="right") - 1)
        parts = []
        index = first
        while index < len(self.shards) and self.shards[index].start < stop:
            shard = self.shards[index]
            data = self._load(index)
            lo, hi = max(start, shard.start) - shard.start, min(stop, shard.stop) - shard.start
            parts.append({key: values[lo:hi] for key, values in data.items()})
            index += 1
        return {key: np.concatenate([p[key] for p in parts]) for key in PREDICTION_KEYS}


class SummaryRows:
    """The values `metrics.summary` needs, kept for usable rows only: class codes (int8) and
    float32/float64 numbers instead of strings and full columns."""

    def __init__(self):
        self.parts: list[dict] = []

    def add(self, reference: dict, columns: dict, usable: np.ndarray) -> None:
        def codes(text: np.ndarray) -> np.ndarray:  # index in CLASS_NAMES; len(CLASS_NAMES) for ''
            out = np.full(len(text), len(CLASS_NAMES), np.int8)
            for i, name in enumerate(CLASS_NAMES):
                out[text == name] = i
            return out

        self.parts.append({
            "ref_class": codes(reference["class"][usable]), "pred_class": codes(columns["PRED_CLASS"][usable]),
            "z": reference["z"][usable], "PRED_Z": columns["PRED_Z"][usable],
            **{role: reference[role][usable].astype(np.float32) for role in ("teff", "logg", "feh")},
            **{f"PRED_{role.upper()}": columns[f"PRED_{role.upper()}"][usable] for role in ("teff", "logg", "feh")},
        })

    def summary(self) -> dict:
        from .metrics import summary

        if not self.parts:
            return summary({r: np.zeros(0) for r in ("class", "z", "teff", "logg", "feh")},
                           {c: np.zeros(0) for c in ("PRED_CLASS", "PRED_Z", "PRED_TEFF", "PRED_LOGG", "PRED_FEH")},
                           np.zeros(0, bool))
        joined = {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}
        self.parts = []
        names = np.array(CLASS_NAMES + ("",))
        reference = {"class": names[joined.pop("ref_class")], "z": joined.pop("z"),
                     **{role: joined.pop(role).astype(float) for role in ("teff", "logg", "feh")}}
        columns = {"PRED_CLASS": names[joined.pop("pred_class")], **joined}
        return summary(reference, columns, np.ones(len(reference["z"]), bool))


def merge_shards(catalog: Path, survey, folder: Path, shards: list, n_rows: int, out: Path, provenance: dict) -> dict:
    """Write the annotated catalog from the shard files, streaming; returns counts, errors, the
    number of rows predicted and the cross-check summary. `provenance` gains ANNNFAIL."""
    from .pipeline import duplicate_mask, read_catalog, read_column, row_flags
    from .writeback import prediction_columns, write_annotated_catalog

    counts, errors = check_shards(folder, shards, n_rows)
    provenance = {**provenance, "ANNNFAIL": (n_rows - counts["OK"], "rows without a prediction")}
    predictions = ShardReader(folder, shards)
    id_column = survey.column("object_id", _colnames(catalog))
    duplicate = duplicate_mask(read_column(catalog, id_column)) if id_column else np.zeros(n_rows, bool)
    kept = SummaryRows()
    predicted = [0]

    def columns_for(start: int, stop: int) -> dict:
        table = read_catalog(catalog, survey, rows=slice(start, stop), paths=False)
        reference = survey.reference(table, roles=SUMMARY_ROLES)
        selected = survey.selected(table)
        pred = predictions.rows(start, stop)
        flags = row_flags(pred["status"], pred["coverage"], reference, selected, duplicate[start:stop])
        columns = prediction_columns(pred, reference, flags)
        ok = pred["status"] == STATUS["OK"]
        predicted[0] += int(ok.sum())
        kept.add(reference, columns, ok & selected & ((flags & NO_REFERENCE) == 0))
        return columns

    write_annotated_catalog(catalog, out, columns_for, provenance)
    return {"counts": counts, "errors": errors, "n_predicted": predicted[0], "summary": kept.summary()}


def _colnames(catalog: Path) -> list:
    from astropy.io import fits

    from .catalogio import HDF5Catalog, is_hdf5

    if is_hdf5(catalog):
        return HDF5Catalog(catalog).colnames
    with fits.open(catalog, memmap=True) as hdul:
        return list(hdul[1].columns.names)
