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
