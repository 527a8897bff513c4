"""Survey definitions: which catalog columns hold ids, labels and spectrum paths.

Each survey is one YAML file in the repository's `catalogs/` folder (or a folder named by the
ANNOTATE_SURVEYS environment variable); adding a survey adds a file, not code. The file's schema is
documented in `catalogs/README.md`.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from . import CLASS_NAMES
from .errors import CatalogError, ConfigError
from .survey_values import DERIVED_FIELDS, PathValueError, as_float, as_integer, path_value, text_array

ROLES = ("object_id", "class", "subclass", "z", "z_err", "zwarning", "snr", "teff", "logg", "feh")
SELECTION_OPS = {
    "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge,
    "<": operator.lt, "<=": operator.le,
    "in": lambda col, values: np.isin(col, values),
    "not_in": lambda col, values: ~np.isin(col, values),
}


@dataclass(frozen=True)
class PathRule:
    name: str
    template: str
    fields: dict
    derived: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Survey:
    """A survey's catalog conventions, loaded from `catalogs/<name>.yaml`."""

    name: str
    reader: str
    columns: dict
    required: tuple
    paths: tuple
    selection: tuple = ()
    class_names: dict = field(default_factory=lambda: {c: c for c in CLASS_NAMES})
    snr_bands: tuple | None = None
    missing_value: float | None = None
    description: str = ""
    bad_pixel_bits: int | None = None  # mask_bits_bad as one integer; None: the reader's own rule

    # -- column lookup ----------------------------------------------------------------------
    def column(self, role: str, colnames) -> str | None:
        """Catalog column name (as spelt in the catalog) for a role, or None if absent."""
        wanted = self.columns.get(role)
        if wanted is None:
            return None
        lookup = {name.upper(): name for name in colnames}
        return lookup.get(str(wanted).upper())

    def path_rule(self, colnames) -> PathRule:
        upper = {name.upper() for name in colnames}
        for rule in self.paths:
            if all(str(col).upper() in upper for col in rule.fields.values()):
                return rule
        options = "; ".join(f"{r.name}: {', '.join(r.fields.values())}" for r in self.paths)
        raise CatalogError(f"catalog has no columns to build spectrum paths from (need one of: {options})")

    def check_catalog(self, colnames, paths: bool = True) -> None:
        """Raise CatalogError naming every required column the catalog lacks (and, with `paths`,
        when it has no columns to build spectrum paths from)."""
        missing = [str(self.columns[r]) for r in self.required
                   if self.columns.get(r) and self.column(r, colnames) is None]
        if self.snr_bands and "snr" in self.required:
            missing += [band for band in self.snr_bands
                        if band.upper() not in {n.upper() for n in colnames}]
        if missing:
            raise CatalogError(f"catalog lacks columns required by survey {self.name}: {', '.join(missing)}")
        if paths:
            self.path_rule(colnames)

    # -- per-row values -----------------------------------------------------------------------
    def spectrum_paths(self, table, reasons: list | None = None) -> list:
        """Relative spectrum path for every row of `table` (a mapping of column name -> array).

        A row whose values cannot make a path (NaN, inf or a masked value in a path column, text
        where a number is needed, bytes that are not UTF-8, a NUL byte) gets None, and when
        `reasons` (a list) is given, the row's reason is appended to it ('' for rows with a path):
        one bad row never stops the others. Floats with integral values and digit strings are
        taken as the integers they spell."""
        colnames = list(table.keys()) if hasattr(table, "keys") else table.colnames
        rule = self.path_rule(colnames)
        lookup = {name.upper(): name for name in colnames}
        names = {var: lookup[str(col).upper()] for var, col in rule.fields.items()}
        columns = {var: table[name] for var, name in names.items()}
        masks = {var: np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) else None for var, col in columns.items()}
        columns = {var: np.asarray(col) for var, col in columns.items()}
        n_rows = len(next(iter(columns.values())))
        paths = []
        for i in range(n_rows):
            try:
                values = {}
                for var, col in columns.items():
                    if masks[var] is not None and masks[var][i]:
                        raise PathValueError(f"{names[var]} is masked (missing)")
                    values[var] = path_value(col[i], names[var])
                for var, func_name in rule.derived.items():
                    values[var] = DERIVED_FIELDS[func_name](values)
                try:
                    path = rule.template.format(**values)
                except (ValueError, TypeError):  # e.g. '{plate:04d}' given a digit string or 3586.0
                    path = rule.template.format(**{k: as_integer(v) for k, v in values.items()})
                if "\0" in path:
                    raise PathValueError("the path would hold a NUL byte")
                reason = ""
            except PathValueError as exc:
                path, reason = None, f"no spectrum path: {exc}"
            except (ValueError, TypeError, KeyError, OverflowError, IndexError) as exc:
                path, reason = None, f"no spectrum path: the row's values do not fit {rule.template!r} ({exc})"
            paths.append(path)
            if reasons is not None:
                reasons.append(reason)
        return paths

    def reference(self, table, roles: tuple = ROLES) -> dict:
        """The survey pipeline's values per row: class (GALAXY/QSO/STAR or ''), z, z_err, zwarning,
        snr, teff, logg, feh, object_id (or only `roles`); missing roles come back as NaN (or ''
        for text). Text roles are numpy str arrays, built without a Python loop over rows."""
        colnames = list(table.keys()) if hasattr(table, "keys") else table.colnames
        n_rows = len(table[colnames[0]]) if colnames else 0
        out = {}
        for role in roles:
            name = self.column(role, colnames)
            if name is None:
                out[role] = np.full(n_rows, np.nan) if role not in ("class", "subclass", "object_id") \
                    else np.array([""] * n_rows, dtype=object)
                continue
            values = np.asanyarray(table[name])  # a masked array keeps its mask: masked means missing
            if role in ("class", "subclass", "object_id"):
                missing = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
                values = text_array(np.ma.getdata(values))
                if missing is not None and missing.any():
                    values = np.where(missing, "", values)
            else:
                values = as_float(values)
                if self.missing_value is not None:
                    values[values == self.missing_value] = np.nan
            out[role] = values
        if self.snr_bands and "snr" in roles:
            out["snr"] = self.band_snr(table, colnames)
        if "class" in out:
            names, index = np.unique(out["class"], return_inverse=True)
            mapped = np.array([self.class_names.get(str(c).upper(), "") for c in names] or [""])
            out["class"] = mapped[index.reshape(-1)] if len(names) else np.array([""] * n_rows)
        return out

    def band_snr(self, table, colnames) -> np.ndarray:
        """LAMOST snMedian = sqrt(snru² + snrg² + snrr² + snri² + snrz²); NaN where a band is missing."""
        lookup = {name.upper(): name for name in colnames}
        bands = [as_float(np.asarray(table[lookup[b.upper()]])) for b in self.snr_bands
                 if b.upper() in lookup]
        if len(bands) != len(self.snr_bands):
            return np.full(len(table[colnames[0]]), np.nan)
        stack = np.stack(bands)
        if self.missing_value is not None:
            stack[stack == self.missing_value] = np.nan
        return np.sqrt(np.sum(stack**2, axis=0))

    def selected(self, table) -> np.ndarray:
        """(n_rows,) bool: rows passing every selection rule (the Spectromer paper's sample)."""
        colnames = list(table.keys()) if hasattr(table, "keys") else table.colnames
        lookup = {name.upper(): name for name in colnames}
        n_rows = len(table[colnames[0]]) if colnames else 0
        keep = np.ones(n_rows, dtype=bool)
        for rule in self.selection:
            name = lookup.get(str(rule["column"]).upper())
            if name is None:
                continue  # the rule's column is absent: it cannot be applied
            column = table[name]
            if np.ma.isMaskedArray(column):  # a masked (missing) value passes no rule
                keep &= ~np.ma.getmaskarray(column)
            values = np.asarray(np.ma.getdata(column))
            if values.dtype.kind in "SUO":
                values = text_array(values)
            keep &= np.asarray(SELECTION_OPS[rule["op"]](values, rule["value"]), dtype=bool)
        if self.missing_value is not None:
            for role in ("z", "z_err"):
                name = self.column(role, colnames)
                if name is not None:
                    keep &= as_float(np.asarray(table[name])) != self.missing_value
            for band in self.snr_bands or ():
                if band.upper() in lookup:
                    keep &= as_float(np.asarray(table[lookup[band.upper()]])) != self.missing_value
        return keep


def survey_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("ANNOTATE_SURVEYS"):
        dirs.append(Path(os.environ["ANNOTATE_SURVEYS"]))
    dirs.append(Path(__file__).resolve().parent.parent / "catalogs")
    return dirs


def available_surveys() -> list[str]:
    names = set()
    for folder in survey_dirs():
        names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def survey_reference(name_or_path: str) -> str:
    """What `load_survey` takes, fit to travel to another process or node: a YAML path made
    absolute, a name as it is."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.suffix in (".yaml", ".yml") else str(name_or_path)


def load_survey(name_or_path: str) -> Survey:
    """Load a survey definition by name (searched in `survey_dirs()`) or by YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = next((d / f"{name_or_path}.yaml" for d in survey_dirs() if (d / f"{name_or_path}.yaml").is_file()),
                    None)
        if path is None:
            raise ConfigError(f"unknown survey {name_or_path!r}; known: {', '.join(available_surveys())}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read survey file {path}: {str(exc).splitlines()[0]}") from None
    return survey_from_dict(raw, source=str(path))


def _check_shapes(raw: dict, source: str) -> None:
    """ConfigError naming the first key whose value has the wrong shape (a string where a list or
    mapping belongs, ...), so that a survey file is checked whole when it is loaded."""
    expected = {"name": str, "reader": str, "description": str, "columns": dict, "paths": list, "selection": list,
                "required": list, "class_names": dict, "snr_bands": list, "mask_bits_bad": (list, dict, int)}
    for key, kind in expected.items():
        value = raw.get(key)
        if value is not None and not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join({str: "text", dict: "a mapping", list: "a list", int: "an integer"}[k] for k in kinds)
            raise ConfigError(f"{source}: {key!r} must be {wanted}, got {type(value).__name__} {value!r:.60}")
    for key, items, kind in (("paths", raw.get("paths") or [], dict), ("selection", raw.get("selection") or [], dict)):
        for index, item in enumerate(items):
            if not isinstance(item, kind):
                raise ConfigError(f"{source}: {key} entry {index + 1} must be a mapping, got {item!r:.60}")
    bad_required = [r for r in raw.get("required") or () if r not in ROLES]
    if bad_required:
        raise ConfigError(f"{source}: unknown required roles {', '.join(map(str, bad_required))}; valid: {', '.join(ROLES)}")
    missing = raw.get("missing_value")
    if missing is not None and (isinstance(missing, bool) or not isinstance(missing, (int, float))):
        raise ConfigError(f"{source}: 'missing_value' must be a number, got {missing!r}")


def _check_template(item: dict, source: str) -> None:
    """ConfigError for a path template that does not parse (an unbalanced brace) or uses a field
    neither its `fields` nor its `derived` define."""
    import string

    template, fields = item["template"], item["fields"]
    if not isinstance(template, str) or not isinstance(fields, dict) or not isinstance(item.get("derived") or {}, dict):
        raise ConfigError(f"{source}: path rule {item.get('name')!r}: template must be text, fields and derived mappings")
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{source}: path rule {item['name']!r}: template {template!r} does not parse ({exc})") from None
    known = set(fields) | set(item.get("derived") or {})
    unknown = sorted(n for n in used if n.split(".")[0].split("[")[0] not in known)
    if unknown or "" in used:
        raise ConfigError(f"{source}: path rule {item['name']!r}: template {template!r} uses "
                          f"{', '.join(unknown) or 'a positional field {}'}, which neither fields nor derived define")


def survey_from_dict(raw: dict, source: str = "<dict>") -> Survey:
    known = {"name", "description", "reader", "columns", "required", "paths", "selection",
             "class_names", "snr_bands", "missing_value", "mask_bits_bad"}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a survey file must be a mapping")
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{source}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(sorted(known))}")
    for key in ("name", "reader", "columns", "paths"):
        if key not in raw:
            raise ConfigError(f"{source}: missing key {key!r}")
    _check_shapes(raw, source)
    bad_roles = set(raw["columns"]) - set(ROLES)
    if bad_roles:
        raise ConfigError(f"{source}: unknown column roles {', '.join(sorted(bad_roles))}; valid: {', '.join(ROLES)}")
    for rule in raw.get("selection") or ():
        if rule.get("op") not in SELECTION_OPS:
            raise ConfigError(f"{source}: selection op {rule.get('op')!r} not one of {', '.join(SELECTION_OPS)}")
        if "column" not in rule:
            raise ConfigError(f"{source}: a selection rule needs a 'column' ({rule})")
    paths = []
    for index, item in enumerate(raw["paths"]):
        for key in ("name", "template", "fields"):
            if key not in item:
                raise ConfigError(f"{source}: path rule {index + 1} has no {key!r}")
        for func in (item.get("derived") or {}).values():
            if func not in DERIVED_FIELDS:
                raise ConfigError(f"{source}: unknown derived field {func!r}; known: {', '.join(DERIVED_FIELDS)}")
        _check_template(item, source)
        paths.append(PathRule(item["name"], item["template"], dict(item["fields"]), dict(item.get("derived") or {})))
    class_names = {str(k).upper(): str(v).upper() for k, v in (raw.get("class_names") or {}).items()} \
        or {c: c for c in CLASS_NAMES}
    return Survey(
        name=raw["name"], reader=raw["reader"], columns=dict(raw["columns"]),
        required=tuple(raw.get("required") or ("object_id", "class", "z")), paths=tuple(paths),
        selection=tuple(raw.get("selection") or ()), class_names=class_names,
        snr_bands=tuple(raw["snr_bands"]) if raw.get("snr_bands") else None,
        missing_value=raw.get("missing_value"), description=raw.get("description", ""),
        bad_pixel_bits=_mask_bits(raw.get("mask_bits_bad"), source),
    )


def _mask_bits(value, source: str) -> int | None:
    """`mask_bits_bad` as one integer: a list of {name, bit}, a mapping name -> bit, or the
    integer itself; None (the key absent or null) leaves each reader's own rule."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{source}: 'mask_bits_bad' must be a list of {{name, bit}}, a mapping or an integer")
    if isinstance(value, int):
        if not 0 <= value < 2**63:
            raise ConfigError(f"{source}: 'mask_bits_bad' as an integer must lie in 0 … 2**63 - 1, got {value}")
        return value
    items = list(value.items()) if isinstance(value, dict) else \
        [(item.get("name"), item.get("bit")) if isinstance(item, dict) else (None, item) for item in value]
    bits = 0
    for name, bit in items:
        if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit < 63:
            raise ConfigError(f"{source}: 'mask_bits_bad' entry {name or bit!r}: the bit must be an integer 0-62, "
                              f"got {bit!r}")
        bits |= 1 << bit
    return bits
