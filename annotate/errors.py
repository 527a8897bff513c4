"""Exception hierarchy; each class maps to one exit code and a one-line message in the CLI."""


class AnnotateError(Exception):
    """Base class: a problem the user can act on, reported as one line without a traceback."""

    exit_code = 2


class ConfigError(AnnotateError):
    """A settings file, recipe or survey definition is invalid."""


class CatalogError(AnnotateError):
    """The input catalog cannot be used (missing columns, unreadable, empty)."""


class SpectrumError(AnnotateError):
    """One spectrum file cannot be read or holds no usable data (recorded per row, never fatal)."""


class StoreError(AnnotateError):
    """The HDF5 spectra store is missing, of another layout version, or does not match."""


class CheckpointError(AnnotateError):
    """A model checkpoint is missing, incomplete, or not in the safetensors format."""


class OutputError(AnnotateError):
    """An output cannot be written (directory not writable, disk full, would overwrite the input)."""


class IncompleteRun(AnnotateError):
    """The run finished but some rows got no prediction (they carry NaN and a PRED_FLAGS bit)."""

    exit_code = 3


class JobsFailed(AnnotateError):
    """SLURM jobs of a sharded run or a training run failed, were cancelled or timed out: nothing
    was merged or finished; rerunning redoes only what is missing."""

    exit_code = 4
