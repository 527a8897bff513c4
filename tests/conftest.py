import os
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="session")
def lamost_data() -> Path:
    """Folder of the real LAMOST low-resolution spectra shipped by laspec 2021.525.0 (later
    releases ship none), installed without its dependencies (`pip install --no-deps
    laspec==2021.525.0`): located, never imported."""
    import importlib.util

    spec = importlib.util.find_spec("laspec")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("laspec 2021.525.0 (pip install --no-deps) ships real LAMOST spectra")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    for name in ("lamost/spec-58397-EG014118N254444M01_sp03-031.fits",
                 "KIC8098300/DR6_low/spec-57287-KP193637N444141V03_sp10-161.fits.gz"):
        if not (folder / name).is_file():
            pytest.skip(f"no {name} in {folder} (laspec 2021.525.0 ships it)")
    return folder


# -- the small run the end-to-end tests start from -----------------------------------------------

CATALOG_ROWS = 8  # rows of the `catalog` fixture


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """A random-init vit-micro checkpoint (seeded)."""
    import torch

    from annotate.checkpoint import LabelNorm, ModelCard, backbone_dict, save_checkpoint
    from annotate.grid import WavelengthGrid
    from annotate.model import build_model
    from annotate.render import RenderSettings

    torch.manual_seed(0)
    model = build_model("vit-micro")
    norms = {"z": LabelNorm(0.2, 0.2, "log1p10"), "teff": LabelNorm(6000.0, 1500.0),
             "logg": LabelNorm(4.0, 1.0), "feh": LabelNorm(-0.5, 0.5)}
    card = ModelCard(backbone=backbone_dict(model.backbone.config), render=RenderSettings(), grid=WavelengthGrid(),
                     label_norm=norms, name="micro-random")
    return save_checkpoint(model, card, tmp_path_factory.mktemp("model") / "micro")


@pytest.fixture
def catalog(tmp_path):
    """An SDSS-V style catalog of CATALOG_ROWS (8) rows with spec files under tmp_path/spectra;
    row 3's file is missing, row 5's flux is all NaN, row 6 has ZWARNING set, row 7's class is
    unknown."""
    from annotate.simulate.writer import write_catalog, write_sdss_spec
    from annotate.surveys import load_survey

    n = CATALOG_ROWS
    rng = np.random.default_rng(0)
    columns = {
        "SPECOBJID": np.arange(1000, 1000 + n, dtype=np.int64), "RUN2D": np.array(["v6_0_4"] * n),
        "FIELD": np.full(n, 15143), "MJD": np.full(n, 59205), "CATALOGID": np.arange(n, dtype=np.int64) + 4_000_000,
        "CLASS": np.array(["GALAXY", "QSO", "STAR", "GALAXY", "STAR", "QSO", "GALAXY", "SKY"]),
        "Z": np.array([0.1, 2.0, 0.0, 0.3, 0.0001, 1.0, 0.5, 0.0]), "ZWARNING": np.array([0, 0, 0, 0, 0, 0, 4, 0]),
        "XCSAO_TEFF": np.array([np.nan, np.nan, 5800, np.nan, 4500, np.nan, np.nan, np.nan]),
    }
    survey = load_survey("sdss_dr18")
    relative = survey.spectrum_paths(columns)
    loglam = 3.5530 + 1e-4 * np.arange(4640)
    for i in range(n):
        if i == 3:
            continue
        flux = rng.normal(10, 1, 4640).astype(np.float32)
        if i == 5:
            flux[:] = np.nan
        write_sdss_spec(tmp_path / "spectra" / relative[i], loglam, flux, np.ones(4640, np.float32),
                        np.zeros(4640, bool), {"CLASS": columns["CLASS"][i]})
    return write_catalog(tmp_path / "cat.fits", columns)
