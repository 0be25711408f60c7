"""Preview PNG rendering."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.data.builders import write_class_ids, write_scene_pair
from core.classes import colorize
from core.naip import stretch_rgb
from training.data.preview import main, render_preview


def test_preview_png_with_prediction(tmp_path):
    image, label = write_scene_pair(tmp_path / "test", "synth-test-000", size=128, seed=4)
    # A "prediction" in model ids 0..6.
    pred = write_class_ids(tmp_path / "pred.tif", np.tile(np.arange(128, dtype=np.uint8) % 7, (128, 1)))
    out = render_preview(str(image), str(tmp_path / "p.png"), str(label), str(pred))
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] * 2  # three panels side by side


def test_cli_default_scene(tmp_path, capsys):
    write_scene_pair(tmp_path / "test", "synth-test-000", size=96, seed=1)
    out = tmp_path / "out" / "preview.png"
    assert main(["--root", str(tmp_path), "--out", str(out)]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out


def test_helpers():
    img = np.zeros((4, 4, 4), dtype=np.uint8)
    img[:, 1:, 1:] = np.arange(9, dtype=np.uint8).reshape(3, 3) * 20 + 10
    valid = img.any(axis=0)
    rgb = stretch_rgb(img, valid)
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[0, 0] == 1).all()  # nodata is white
    assert tuple(colorize(np.array([[0, 6]], dtype=np.uint8))[0, 0]) == (0, 112, 255)
