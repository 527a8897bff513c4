"""Catalog formats behind one interface (`registry.Catalog`), recognised by content: FITS
(`fits`, written by `fits_writer`) and HDF5 tables in the pandas and astropy conventions
(`hdf5_pandas`, `hdf5_astropy`, sharing `hdf5`, which registers them as one format: the file
says which convention). `tables` reads the columns a survey needs from any of them."""

from .registry import Catalog, check_catalog_file, check_free_space, format_names, open_catalog  # noqa: F401
from .tables import catalog_rows, read_catalog, read_column  # noqa: F401

# Explicit list of format modules (not a glob): importing them registers the formats.
from . import fits, hdf5_astropy, hdf5_pandas  # noqa: E402,F401
