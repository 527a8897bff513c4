"""Synthetic survey spectra built from real template spectra (the only training material).

`templates` loads the committed compact template library (`data/templates.npz`, built by
`data/build_templates.py` from the MILES, MaStar, M11 and BC03 sets shipped in sdss-mangadap);
`spectra` turns templates into observed spectra (pure numpy); `writer` writes them as survey files.
"""
