import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ppxf_spectra() -> Path:
    """Folder of the real SDSS DR18 spec files shipped by the ppxf package."""
    ppxf = pytest.importorskip("ppxf", reason="ppxf (test extra) ships the real DR18 spec files")
    return Path(ppxf.__file__).parent / "spectra"


@pytest.fixture(scope="session")
def desi_data() -> Path:
    """Folder of the two real DESI coadds (and their redrock files) shipped by fastspecfit 3.6.1,
    installed without its dependencies (`pip install --no-deps fastspecfit==3.6.1`): located, never
    imported."""
    import importlib.util

    spec = importlib.util.find_spec("fastspecfit")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fastspecfit 3.6.1 (pip install --no-deps) ships the real DESI coadds")
    folder = Path(spec.submodule_search_locations[0]) / "test" / "data"
    if not (folder / "coadd-special-dark-27247.fits").is_file():
        pytest.skip(f"no DESI coadds in {folder}")
    return folder
