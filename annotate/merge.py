"""The merge of a sharded run: shard files -> the annotated catalog, streamed in row chunks.

First pass: every shard file is checked (rows it claims, row count) and its status read, so the
header can carry the number of rows without a prediction. Second pass, inside the streaming
writer (FITS, or HDF5 in slices): for each chunk of rows, the catalog's reference columns are read from a memory map, the
shard's predictions for those rows are read from its file (one shard open at a time), flags and
PRED_* columns are computed, and the chunk is written. Memory is bounded by the chunk and one
shard's predictions, whatever the catalog's length; the run's cross-check summary is kept as
sums, plus one number per compared row for its median.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import OutputError
from .flags import PredFlag
from .fit.stage import FIT_KEYS
from .predict import PREDICTION_KEYS
from .runfolder import RunFolder
from .store import STATUS

SHARD_KEYS = PREDICTION_KEYS + FIT_KEYS  # what a shard file holds per row

SUMMARY_ROLES = ("class", "z", "zwarning", "snr", "teff", "logg", "feh")
NO_REFERENCE = int(PredFlag.NO_REFERENCE_Z | PredFlag.UNKNOWN_REFERENCE_CLASS)


def check_shards(folder: RunFolder, shards: list, n_rows: int) -> tuple[dict, list[str], str]:
    """Counts per store status over all rows, the rows' error lines, and the model's arithmetic
    ('fp32' or 'bf16' when every shard was predicted so, else 'mixed'); OutputError unless the
    shard files cover rows 0..n_rows once each, in order, each is the file written (its checksum,
    checked before the file is opened) and holds the rows the plan says."""
    if sum(s.stop - s.start for s in shards) != n_rows or any(a.stop != b.start for a, b in zip(shards, shards[1:])) \
            or (shards and shards[0].start != 0):
        raise OutputError(f"the plan's shards do not cover the catalog's {n_rows} rows once each")
    counts = {name: 0 for name in STATUS}
    errors: list[str] = []
    precisions = set()
    for shard in shards:
        folder.verify_shard(shard.name)
        with np.load(folder.shard_file(shard.name), allow_pickle=False) as data:
            status = data["status"]
            if (int(data["start"]), int(data["stop"])) != (shard.start, shard.stop) or \
                    len(status) != shard.stop - shard.start:
                raise OutputError(f"{shard.name} holds rows {int(data['start'])}-{int(data['stop'])}, "
                                  f"the plan says {shard.start}-{shard.stop}")
            lacking = [key for key in SHARD_KEYS if key not in data.files]
            if lacking:
                raise OutputError(f"{folder.shard_file(shard.name)} lacks {', '.join(lacking)} (written by an earlier "
                                  "annotate); delete the shard file and rerun the same command to recompute it")
            for name, code in STATUS.items():
                counts[name] += int((status == code).sum())
            errors.extend(e for e in data["errors"].tolist() if e)
            precisions.add(str(data["precision"]) if "precision" in data.files else "fp32")
    return counts, errors, precisions.pop() if len(precisions) == 1 else "mixed"


class ShardReader:
    """Predictions of any row range, read from the shard files that hold it (the last shard read
    stays open: chunks go through the rows in order)."""

    def __init__(self, folder: RunFolder, shards: list):
        self.folder, self.shards = folder, shards
        self._index, self._data = None, None

    def _load(self, index: int) -> dict:
        if self._index != index:
            with np.load(self.folder.shard_file(self.shards[index].name), allow_pickle=False) as data:
                self._data = {key: data[key] for key in SHARD_KEYS}
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
        return {key: np.concatenate([p[key] for p in parts]) for key in SHARD_KEYS}


class SummaryRows:
    """`metrics.summary` over a run's rows, added chunk by chunk: sums for accuracy, η, the
    catastrophic rate and the R² scores, and one float64 per compared row for the NMAD's median
    (40 MB for 5 million rows) — no per-row strings are kept."""

    STELLAR = ("teff", "logg", "feh")

    def __init__(self):
        self.n = 0
        self.correct = 0
        self.catastrophic = 0
        self.dz: list[np.ndarray] = []  # |Δz| / (1 + z), finite values
        self.sums = {key: np.zeros(4) for key in ("z", *self.STELLAR)}  # pairs, Σt, Σt², Σ(t - p)²
        self.star_n = dict.fromkeys(self.STELLAR, 0)

    def _pairs(self, key: str, true: np.ndarray, pred: np.ndarray) -> None:
        true, pred = np.asarray(true, float), np.asarray(pred, float)
        ok = np.isfinite(true) & np.isfinite(pred)
        t, p = true[ok], pred[ok]
        self.sums[key] += (len(t), t.sum(), (t * t).sum(), ((t - p) ** 2).sum())

    def add(self, reference: dict, columns: dict, usable: np.ndarray) -> None:
        from .metrics import catastrophic

        ref_class, pred_class = reference["class"][usable], columns["PRED_CLASS"][usable]
        z_ref, z_pred = np.asarray(reference["z"][usable], float), np.asarray(columns["PRED_Z"][usable], float)
        self.n += int(usable.sum())
        self.correct += int((ref_class == pred_class).sum())
        self.catastrophic += int(catastrophic(z_pred, z_ref, ref_class).sum())
        dz = np.abs(z_pred - z_ref) / (1.0 + z_ref)
        self.dz.append(dz[np.isfinite(dz)])
        self._pairs("z", z_ref, z_pred)
        stars = ref_class == "STAR"
        for role in self.STELLAR:
            true = np.asarray(reference[role][usable][stars], float)
            self._pairs(role, true, columns[f"PRED_{role.upper()}"][usable][stars])
            self.star_n[role] += int(np.isfinite(true).sum())

    def _r2(self, key: str) -> float:
        n, total, squares, residual = self.sums[key]
        if n < 2:
            return float("nan")
        spread = squares - total * total / n
        return float(1.0 - residual / spread) if spread > 0 else float("nan")

    def summary(self) -> dict:
        dz = np.concatenate(self.dz) if self.dz else np.zeros(0)
        self.dz = []
        nan = float("nan")
        result = {"rows_compared": self.n,
                  "class_accuracy": self.correct / self.n if self.n else nan,
                  "z_r2": self._r2("z"),
                  "z_nmad": float(1.4826 * np.median(dz)) if len(dz) else nan,
                  "z_eta": float(np.mean(dz > 0.15)) if len(dz) else nan,
                  "z_catastrophic_rate": self.catastrophic / self.n if self.n else nan}
        for role in self.STELLAR:
            result[f"{role}_r2"] = self._r2(role)
            result[f"{role}_n"] = self.star_n[role]
        return result


def merge_shards(catalog: Path, survey, folder: RunFolder, shards: list, n_rows: int, out: Path, provenance: dict) -> dict:
    """Write the annotated catalog from the shard files, streaming; returns counts, errors, the
    number of rows predicted and the cross-check summary. `provenance` gains ANNNFAIL and ANNPREC."""
    from .catalogs import read_catalog, read_column
    from .pipeline import duplicate_mask, row_flags
    from .writeback import prediction_columns, write_annotated_catalog

    counts, errors, precision = check_shards(folder, shards, n_rows)
    provenance = {**provenance, "ANNNFAIL": (n_rows - counts["OK"], "rows without a prediction"),
                  "ANNPREC": (precision, provenance.get("ANNPREC", ("", "model arithmetic"))[1])}
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
    from .catalogs import open_catalog

    return open_catalog(catalog).colnames
