"""annotate: add Spectromer predictions (class, redshift, stellar parameters) to survey catalogs.

The data flows in one direction, one module per arrow::

    catalog rows (surveys) -> spectrum readers (readers) -> HDF5 spectra store (ingest, store)
    -> renderers (render) -> model (model, checkpoint) -> predictions (predict)
    -> write-back (writeback) -> cross-check (metrics, crosscheck)
"""

__version__ = "0.1.0"

CLASS_NAMES = ("GALAXY", "QSO", "STAR")
"""Object classes, in the order of every class axis (logits, probabilities, one-hot)."""

SPEED_OF_LIGHT_KMS = 299792.458
