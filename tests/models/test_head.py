"""Chesapeake head and ClaySegmenter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.models.clay import count_parameters
from training.models.head import ChesapeakeHead, ClaySegmenter, build_segmenter

TSV = Path(__file__).resolve().parents[3] / "shared" / "clay_v15_state_dict.tsv"


@pytest.fixture(scope="module")
def seg() -> ClaySegmenter:
    torch.manual_seed(0)
    return build_segmenter("tiny", head_width=32).eval()


def test_large_head_matches_seed_keys_and_size() -> None:
    head = ChesapeakeHead(1024, 7, 512).to("meta")
    ours = {k: list(v.shape) for k, v in head.state_dict().items()}
    if TSV.exists():
        text = TSV.read_text().split("Chesapeake segmentation checkpoint", 1)[1]
        seed = {}
        for line in text.splitlines()[1:]:
            if line and not line.startswith("#"):
                key, shape, _ = line.split("\t")
                seed[key] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
        assert ours == seed
    assert abs(count_parameters(head) - 26e6) / 26e6 < 0.02


def test_segmenter_shapes_and_defaults(seg: ClaySegmenter) -> None:
    assert seg.wavelengths.tolist() == pytest.approx([0.65, 0.56, 0.48, 0.842])
    assert float(seg.gsd) == 1.0
    assert set(k.split(".")[0] for k in seg.state_dict()) == {"encoder", "head"}
    with torch.inference_mode():
        logits = seg(torch.randn(2, 4, 48, 64))
    assert logits.shape == (2, 7, 48, 64)


def test_forward_from_features_grid_and_tokens_agree(seg: ClaySegmenter) -> None:
    x = torch.randn(2, 4, 32, 32)
    with torch.inference_mode():
        direct = seg(x)
        grid = seg.forward_features(x)
        tokens = seg.encoder.forward_features(x, seg.wavelengths, seg.gsd)
        from_grid = seg.forward_from_features(grid)
        from_tokens_cls = seg.forward_from_features(tokens)
        from_tokens = seg.forward_from_features(tokens[:, 1:])
        from_fp16 = seg.forward_from_features(grid.half())
    assert grid.shape == (2, 192, 4, 4)
    torch.testing.assert_close(from_grid, direct, rtol=0, atol=0)
    torch.testing.assert_close(from_tokens_cls, direct)
    torch.testing.assert_close(from_tokens, direct)
    torch.testing.assert_close(from_fp16, direct, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="square"):
        seg.forward_from_features(torch.randn(1, 7, 192))
    with pytest.raises(ValueError, match="features must be"):
        seg.forward_from_features(torch.randn(1, 100, 4, 4))


def test_head_width_is_configurable_and_checked() -> None:
    seg = build_segmenter("tiny", head_width=16, num_classes=5)
    assert seg.head.conv1.out_channels == 16 and seg.num_classes == 5
    with pytest.raises(ValueError, match="head expects"):
        ClaySegmenter(seg.encoder, ChesapeakeHead(384, 7, 16))


def test_predict_logits_rejects_uint8(seg: ClaySegmenter) -> None:
    with pytest.raises(ValueError, match="normalise"):
        seg.predict_logits(torch.zeros(1, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bands"):
        seg.predict_logits(torch.zeros(1, 3, 32, 32))


def test_headless_segmenter_needs_features() -> None:
    head_only = ClaySegmenter(None, ChesapeakeHead(192, 7, 16))
    assert head_only.forward_from_features(torch.randn(1, 192, 2, 2)).shape == (1, 7, 16, 16)
    with pytest.raises(ValueError, match="no encoder"):
        head_only(torch.randn(1, 4, 16, 16))
