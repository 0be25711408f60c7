"""Preview PNG of a scene: RGB (percentile stretch) beside its label and, optionally, a prediction.

``python -m training.data.preview --scene <image uri> [--label <uri>] [--prediction <uri>] --out preview.png``

Without ``--scene`` it shows the first test scene under the default synthetic root. Labels are
raw Chesapeake ``lc`` rasters (remapped to ids 0..6); predictions hold model ids 0..6. Both are
coloured by the one class table, with a legend. Large scenes are decimated on read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np

from core import storage
from core.classes import CLASSES, colorize, remap_lc
from core.naip import open_naip, open_raster, stretch_rgb
from core.logs import configure_console

log = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 1024


def _decimated_shape(h: int, w: int, max_side: int) -> tuple[int, int]:
    scale = max(1.0, max(h, w) / max_side)
    return max(1, round(h / scale)), max(1, round(w / scale))


def _read_class_raster(uri: str, shape: tuple[int, int], raw_lc: bool) -> np.ndarray:
    with ExitStack() as stack:
        ds = open_raster(uri, stack)
        # Nearest-neighbour decimation keeps class ids intact.
        data = ds.read(1, out_shape=shape)
    return remap_lc(data) if raw_lc else data


def render_preview(
    scene_uri: str,
    out: str,
    label_uri: str | None = None,
    prediction_uri: str | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    title: str | None = None,
) -> str:
    """Write a PNG with the RGB scene, the label and/or prediction panels and a legend.

    ``out`` may be a local path or a URI. Returns ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with open_naip(scene_uri, max_pixels=None) as scene:
        shape = _decimated_shape(scene.height, scene.width, max_side)
        image = scene.dataset.read(out_shape=(scene.count, *shape))
        valid = scene.dataset.dataset_mask(out_shape=shape) > 0
        full = f"{scene.width}x{scene.height} px, {scene.crs}"
    panels: list[tuple[str, np.ndarray]] = [("NAIP RGB (2-98% stretch)", stretch_rgb(image, valid))]
    if label_uri:
        panels.append(("Label (Chesapeake lc)", colorize(_read_class_raster(label_uri, shape, raw_lc=True))))
    if prediction_uri:
        panels.append(("Prediction", colorize(_read_class_raster(prediction_uri, shape, raw_lc=False))))

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6.6), squeeze=False)
    for ax, (name, data) in zip(axes[0], panels, strict=True):
        ax.imshow(data, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.set_axis_off()
    if len(panels) > 1:
        handles = [
            Patch(facecolor=np.array(c.color) / 255, edgecolor="0.3", label=f"{c.id} {c.name}")
            for c in CLASSES
        ]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title or f"{scene_uri.rsplit('/', 1)[-1]}  ({full})", fontsize=11)
    fig.tight_layout(rect=(0, 0.05 if len(panels) > 1 else 0, 1, 0.96))

    local = storage.local_path(out)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(local, dpi=100)
    else:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        storage.write_bytes(out, buf.getvalue())
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from training.data.chesapeake import LABEL_SUFFIX, find_scenes
    from training.data.synthetic import DEFAULT_SYNTHETIC_ROOT

    parser = argparse.ArgumentParser(description="Render a scene preview PNG (RGB | label | prediction).")
    parser.add_argument("--scene", help="image URI; default: first test scene of the synthetic root")
    parser.add_argument("--label", help="lc label URI (default: the scene's *_lc.tif when it exists)")
    parser.add_argument("--prediction", help="prediction raster URI (class ids 0..6)")
    parser.add_argument(
        "--root", default=DEFAULT_SYNTHETIC_ROOT, help="dataset root used when --scene is omitted"
    )
    parser.add_argument("--out", default="preview.png", help="output PNG path or URI")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="decimate to this many pixels")
    args = parser.parse_args(argv)
    configure_console()

    scene, label = args.scene, args.label
    if scene is None:
        first = find_scenes(args.root, split="test")[0]
        scene, label = first.image_uri, label or first.label_uri
    elif label is None and scene.endswith("_naip-new.tif"):
        guess = scene[: -len("_naip-new.tif")] + LABEL_SUFFIX
        label = guess if storage.exists(guess) else None
    out = render_preview(scene, args.out, label, args.prediction, max_side=args.max_side)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
