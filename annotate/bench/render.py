"""Rendering, each encoding against matplotlib drawing and saving the same image as a PNG."""

from __future__ import annotations

import io

import numpy as np

from .common import BASELINE_LIMIT, Row, timed


def synthetic_batch(n: int, n_pix: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    flux = (1.0 + 0.3 * np.sin(np.linspace(0, 20, n_pix))[None, :] + rng.normal(0, 0.2, (n, n_pix))).astype(np.float32)
    mask = np.zeros((n, n_pix), bool)
    mask[:, :50] = True
    return flux, mask


def matplotlib_2dmap_png(flux: np.ndarray, mask: np.ndarray, settings) -> bytes:
    """The reference rendering of one spectrum: the 2D Map drawn and saved by matplotlib, as
    Spectromer renders (figure 2.24 in, 100 dpi, no axes, savefig PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..normalise import normalise_flux

    m, b = settings.blocks_per_side, settings.block_size
    values = np.full(m * m, np.nan)
    norm = normalise_flux(flux[None], mask[None], settings.normalise)[0]
    values[: flux.size] = np.where(mask, np.nan, norm)
    image = np.kron(values.reshape(m, m), np.ones((b, b)))
    fig = plt.figure(figsize=(settings.image_size / 100, settings.image_size / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(image, cmap=settings.colormap, vmin=settings.flux_min, vmax=settings.flux_max, interpolation="nearest")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def matplotlib_line_png(flux: np.ndarray, mask: np.ndarray, settings) -> bytes:
    """The reference Simple / Overlap rendering of one spectrum: matplotlib line plots (one line,
    or the three thirds in red, green and blue) on black, figure 2.24 in at 100 dpi, savefig PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..normalise import normalise_flux
    from ..render_lines import segment_bounds

    norm = np.where(mask, np.nan, normalise_flux(flux[None], mask[None], settings.normalise)[0])
    fig = plt.figure(figsize=(settings.image_size / 100, settings.image_size / 100), dpi=100, facecolor="black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_ylim(settings.flux_min, settings.flux_max)
    if settings.encoding == "simple":
        ax.plot(norm, color="white", linewidth=1.5)
        ax.set_xlim(0, len(norm) - 1)
    else:
        for colour, (start, stop) in zip(("red", "lime", "blue"), segment_bounds(len(norm), 3)):
            ax.plot(norm[start:stop], color=colour, linewidth=1.5)
        ax.set_xlim(0, len(norm) // 3 - 1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="black")
    plt.close(fig)
    return buffer.getvalue()


REFERENCES = {"2dmap": ("matplotlib imshow + savefig PNG per spectrum", matplotlib_2dmap_png),
              "simple": ("matplotlib plot + savefig PNG per spectrum", matplotlib_line_png),
              "overlap": ("matplotlib 3 × plot + savefig PNG per spectrum", matplotlib_line_png)}


ENCODING_NAMES = {"2dmap": "2D Map", "simple": "Simple", "overlap": "Overlap"}


def bench_render(sizes, encoding: str = "2dmap") -> Row:
    from ..grid import WavelengthGrid
    from ..render import RenderSettings, render

    settings = RenderSettings(encoding=encoding)
    n_pix = WavelengthGrid().n_pix
    reference_name, reference = REFERENCES[encoding]
    row = Row(f"render {ENCODING_NAMES[encoding]} (1 core)", "spectra/s", baseline_name=reference_name)
    for n in sizes:
        flux, mask = synthetic_batch(n, n_pix)
        render(flux[:256], mask[:256], settings)  # warm-up: LUTs, allocator
        seconds, _ = timed(lambda: [render(flux[i:i + 256], mask[i:i + 256], settings) for i in range(0, n, 256)],
                            repeat=3)
        m = min(n, BASELINE_LIMIT["render"])
        reference(flux[0], mask[0], settings)
        base, _ = timed(lambda: [reference(flux[i], mask[i], settings) for i in range(m)])
        row.sizes.append(n)
        row.ours.append(n / seconds)
        row.baseline.append(m / base)
    return row
