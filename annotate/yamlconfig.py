"""Settings files: a YAML mapping whose keys must be a dataclass's fields (recipes, SLURM profiles)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ConfigError


def read_fields(path: str | Path, cls, kind: str, empty_ok: bool = False) -> dict:
    """The mapping in YAML file `path`, checked against the fields of dataclass `cls`; one-line
    ConfigErrors name the file and, for a misspelt key, list the valid ones."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {kind} {path}: {str(exc).splitlines()[0]}") from None
    if raw is None and empty_ok:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} is a mapping")
    unknown = set(raw) - set(cls.__dataclass_fields__)
    if unknown:
        keys = kind.split()[-1]  # "recipe keys", "profile keys"
        raise ConfigError(f"{path}: unknown {keys} keys {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(cls.__dataclass_fields__)}")
    return raw
