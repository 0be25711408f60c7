"""A quicklook PNG per predicted scene: the NAIP RGB beside the predicted classes, coloured by
the class table, with a legend giving each class's share of the valid pixels.

Written next to the scene's class COG (``artifacts.QUICKLOOK_NAME``) and linked from its STAC
item as the ``thumbnail`` asset; the static report shows the latest ones. Rendering works on a
decimated copy (longest side ``max_side``), so it costs well under a second per scene.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from core import storage
from core.classes import CLASSES, NODATA_CLASS_ID

__all__ = [
    "QUICKLOOK_MAX_SIDE",
    "QUICKLOOK_MEDIA_TYPE",
    "legend_entries",
    "render_quicklook",
    "write_quicklook",
]

QUICKLOOK_MEDIA_TYPE = "image/png"
#: Longest side of each panel, in pixels (the PNG is two panels wide plus the legend).
QUICKLOOK_MAX_SIDE = 512


def _decimation(shape: tuple[int, int], max_side: int) -> int:
    return max(1, int(np.ceil(max(shape) / max_side)))


def legend_entries(classes: np.ndarray) -> list[tuple[str, tuple[float, float, float], float]]:
    """``(label, rgb 0..1, share)`` per class of the table, shares over valid (non No Data) pixels;
    No Data is listed only when present (its share is then of all pixels)."""
    counts = np.bincount(classes.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
    valid = counts.sum() - counts[NODATA_CLASS_ID]
    entries = []
    for c in CLASSES:
        if c.id == NODATA_CLASS_ID:
            if counts[c.id]:
                entries.append((f"{c.name}  {counts[c.id] / counts.sum():.0%} of scene", _rgb(c.color), 0.0))
            continue
        share = float(counts[c.id] / valid) if valid else 0.0
        entries.append((f"{c.name}  {share:.1%}", _rgb(c.color), share))
    return entries


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)


def render_quicklook(
    image: np.ndarray, classes: np.ndarray, valid: np.ndarray | None = None, title: str | None = None
) -> bytes:
    """PNG bytes: ``image`` (uint8 ``(>=3, H, W)``, red/green/blue first) beside ``classes``
    (``(H, W)`` model ids). Both are expected already decimated to quicklook size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from core.classes import colorize
    from core.naip import stretch_rgb

    if image.shape[1:] != classes.shape:
        raise ValueError(f"image is {image.shape[1:]} but classes are {classes.shape}")
    height, width = classes.shape
    aspect = width / max(height, 1)
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.2 * aspect + 2.6, 4.6), squeeze=False)
    for ax, data, name in (
        (axes[0][0], stretch_rgb(image, valid), "NAIP RGB (2-98% stretch)"),
        (axes[0][1], colorize(classes), "Predicted land cover"),
    ):
        ax.imshow(data, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a thin frame: No Data (white) still shows the extent
            spine.set_edgecolor("0.7")
    handles = [
        Patch(facecolor=rgb, edgecolor="0.35", label=label) for label, rgb, _ in legend_entries(classes)
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8.5, frameon=False, title="class  share")
    if title:
        fig.suptitle(title, fontsize=9.5)
    fig.subplots_adjust(left=0.01, right=0.78, top=0.86 if title else 0.92, bottom=0.02, wspace=0.04)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_quicklook(
    pred: Any, image_uri: str, uri: str, *, title: str | None = None, max_side: int = QUICKLOOK_MAX_SIDE
) -> str:
    """Render the quicklook of prediction ``pred`` (a ``ScenePrediction``) of the scene at
    ``image_uri`` and write it to ``uri`` (path, ``file://`` or ``s3://``); returns ``uri``.

    The RGB is read decimated from the scene (GDAL picks overviews where the file has them);
    the classes are decimated by nearest neighbour, so class ids stay exact.
    """
    from contextlib import ExitStack

    from core.naip import open_raster

    step = _decimation(pred.classes.shape, max_side)
    classes = pred.classes[::step, ::step]
    with ExitStack() as stack:
        ds = open_raster(image_uri, stack)
        if (ds.height, ds.width) != pred.classes.shape:
            raise ValueError(
                f"{image_uri} is {ds.height}x{ds.width} but the prediction is "
                f"{pred.classes.shape[0]}x{pred.classes.shape[1]}: not this scene's prediction"
            )
        image = ds.read(indexes=[1, 2, 3], out_shape=(3, *classes.shape))
    valid = pred.valid[::step, ::step]
    storage.write_bytes(uri, render_quicklook(image, classes, valid, title))
    return uri
