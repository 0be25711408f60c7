"""Chesapeake head and ClaySegmenter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.models.clay import count_parameters
from training.models.head import (
    ChesapeakeHead,
    ClaySegmenter,
    build_head,
    build_segmenter,
    head_spec,
    make_head,
)

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


# -- the fusion head (the training default) ------------------------------------------------------


@pytest.fixture(scope="module")
def fusion() -> ClaySegmenter:
    torch.manual_seed(0)
    return build_segmenter("tiny", head="fusion").eval()


def test_build_segmenter_keeps_the_seed_head_unless_asked(seg: ClaySegmenter) -> None:
    assert seg.head.kind == "seed" and not seg.needs_pixels
    assert set(k.split(".")[1] for k in seg.state_dict() if k.startswith("head.")) == {
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv_ps",
        "conv_out",
    }


def test_fusion_head_shapes_pixels_and_features_agree(fusion: ClaySegmenter) -> None:
    assert fusion.head.kind == "fusion" and fusion.needs_pixels
    x = torch.randn(2, 4, 48, 64)
    with torch.inference_mode():
        direct = fusion(x)
        grid = fusion.forward_features(x)
        cached = fusion.forward_from_features(grid, x)
        from_fp16 = fusion.forward_from_features(grid.half(), x)
    assert direct.shape == (2, 7, 48, 64) and grid.shape == (2, 192, 6, 8)
    torch.testing.assert_close(cached, direct, rtol=0, atol=0)
    torch.testing.assert_close(from_fp16, direct, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="needs the normalised pixels"):
        fusion.forward_from_features(grid)


def test_fusion_head_sees_single_pixels(fusion: ClaySegmenter) -> None:
    """A 1-px change moves the logits at that pixel: the full-resolution branch keeps fine detail."""
    x = torch.randn(1, 4, 32, 32)
    y = x.clone()
    y[0, :, 16, 16] += 3.0
    with torch.inference_mode():
        delta = (fusion(y) - fusion(x)).abs().amax(1)[0]  # (H, W)
    assert float(delta[16, 16]) > 10 * float(delta[0, 0]) and float(delta[16, 16]) > 1e-3


def test_fusion_head_reads_several_depths_in_its_order() -> None:
    torch.manual_seed(0)
    seg = build_segmenter("tiny", head="fusion", head_options={"feature_layers": [-1, 1]}).eval()
    assert seg.head.in_dim == 2 * 192
    x = torch.randn(1, 4, 32, 32)
    with torch.inference_mode():
        grid = seg.forward_features(x)
        last, second = seg.encoder.forward_intermediates(
            x, seg.wavelengths, seg.gsd, indices=[1, 5], norm=True, intermediates_only=True
        )[::-1]
    torch.testing.assert_close(grid, torch.cat([last, second], 1))
    assert seg(x).shape == (1, 7, 32, 32)


def test_fusion_head_pyramid_levels() -> None:
    """Pyramid levels add stride-2 stages and a U-Net decoder; sizes that halve unevenly still
    come back to full resolution, fine detail still reaches the output, and a config written
    before levels existed rebuilds the head without them."""
    torch.manual_seed(0)
    seg = build_segmenter("tiny", head="fusion", head_options={"levels": [8, 12]}).eval()
    keys = {k.split(".")[1] for k in seg.state_dict() if k.startswith("head.")}
    assert keys == {"stem", "context", "down", "up", "fuse", "classifier"}
    assert seg.head.config()["levels"] == [8, 12]
    x = torch.randn(2, 4, 40, 56)  # 40 -> 20 -> 10, 56 -> 28 -> 14; patch grid 5 x 7
    with torch.inference_mode():
        out = seg(x)
        cached = seg.forward_from_features(seg.forward_features(x), x)
    assert out.shape == (2, 7, 40, 56)
    torch.testing.assert_close(cached, out, rtol=0, atol=0)
    y = x.clone()
    y[0, :, 20, 20] += 3.0
    with torch.inference_mode():
        delta = (seg(y) - out).abs().amax(1)[0]
    assert float(delta[20, 20]) > 10 * float(delta[0, 0])
    rebuilt = build_head(seg.head.config())
    rebuilt.load_state_dict(seg.head.state_dict())
    older = {k: v for k, v in seg.head.config().items() if k != "levels"}
    assert build_head(older).levels == ()
    with pytest.raises(ValueError, match="levels"):
        make_head("fusion", 192, options={"levels": [8, 0]})


def _assert_cached_features_give_the_same_logits(model: ClaySegmenter, x: torch.Tensor) -> torch.Tensor:
    """The model's logits on ``x``, checked equal to the feature-cache path's (train_head's)."""
    with torch.inference_mode():
        out = model(x)
        cached = model.forward_from_features(model.forward_features(x), x)
    assert out.shape == (x.shape[0], 7, *x.shape[-2:])
    torch.testing.assert_close(cached, out, rtol=0, atol=0)
    return out


def test_fusion_head_pixel_dilations_widen_the_full_resolution_view() -> None:
    """Dilated residual blocks let a full-resolution pixel see farther than the plain stem
    does, keep 1 px detail, rebuild from their config, and a config written before the option
    existed (or an empty list) gives the plain stem with the keys of older exports."""
    torch.manual_seed(0)
    plain = build_segmenter("tiny", head="fusion").eval()
    dilated = build_segmenter("tiny", head="fusion", head_options={"pixel_dilations": [2, 4, 8]}).eval()
    assert dilated.head.config()["pixel_dilations"] == [2, 4, 8]
    assert len(dilated.head.stem) == len(plain.head.stem) + 3
    assert {k for k in plain.head.state_dict() if k.startswith("stem.")} < set(dilated.head.state_dict())

    def reach(model: ClaySegmenter, offset: int) -> float:
        # The stem alone: how much a pixel `offset` px away moves a stem feature at (32, 32).
        x = torch.randn(1, 4, 64, 64)
        y = x.clone()
        y[0, :, 32, 32 + offset] += 3.0
        with torch.inference_mode():
            a = model.head.stem(torch.cat((x, model.head._ndvi(x)), 1))
            b = model.head.stem(torch.cat((y, model.head._ndvi(y)), 1))
        return float((a - b)[0, :, 32, 32].abs().amax())

    assert reach(plain, 10) == 0.0  # two plain conv3x3 see 2 px to each side
    assert reach(dilated, 10) > 0.0 and reach(dilated, 16) > 0.0  # 2 + 2 + 4 + 8 = 16 px to each side
    assert reach(dilated, 17) == 0.0
    x = torch.randn(2, 4, 40, 56)
    out = _assert_cached_features_give_the_same_logits(dilated, x)
    y = x.clone()
    y[0, :, 20, 20] += 3.0
    with torch.inference_mode():
        delta = (dilated(y) - out).abs().amax(1)[0]
    assert float(delta[20, 20]) > 10 * float(delta[0, 0])
    rebuilt = build_head(dilated.head.config())
    rebuilt.load_state_dict(dilated.head.state_dict())
    older = {k: v for k, v in plain.head.config().items() if k != "pixel_dilations"}
    assert build_head(older).pixel_dilations == ()
    build_head(older).load_state_dict(plain.head.state_dict())
    with pytest.raises(ValueError, match="pixel_dilations"):
        make_head("fusion", 192, options={"pixel_dilations": [2, 0]})


def test_fusion_head_context_dilations_widen_the_patch_grid_view() -> None:
    """Dilated residual blocks on the patch grid let the context at one cell read cells 7 away
    (a 2, 4 chain after the conv3x3: 1 + 2 + 4), rebuild from their config and export, and a
    config written before the option existed gives the plain context with the keys of older
    exports."""
    torch.manual_seed(0)
    plain = build_segmenter("tiny", head="fusion").eval()
    wide = build_segmenter("tiny", head="fusion", head_options={"context_dilations": [2, 4]}).eval()
    assert wide.head.config()["context_dilations"] == [2, 4]
    assert len(plain.head.context_wide) == 0 and len(wide.head.context_wide) == 2
    assert set(plain.head.state_dict()) < set(wide.head.state_dict())

    def reach(model: ClaySegmenter, offset: int) -> float:
        # How much a grid cell `offset` cells away moves the context branch's output at (12, 12).
        grid = torch.randn(1, model.head.in_dim, 24, 24)
        moved = grid.clone()
        moved[0, :, 12, 12 + offset] += 3.0
        head = model.head
        with torch.inference_mode():
            a, b = head.context_features(grid), head.context_features(moved)
        return float((a - b)[0, :, 12, 12].abs().amax())

    assert reach(plain, 1) > 0.0 and reach(plain, 2) == 0.0  # one conv3x3 sees one cell to each side
    assert reach(wide, 7) > 0.0 and reach(wide, 8) == 0.0
    _assert_cached_features_give_the_same_logits(wide, torch.randn(2, 4, 64, 48))
    rebuilt = build_head(wide.head.config())
    rebuilt.load_state_dict(wide.head.state_dict())
    older = {k: v for k, v in plain.head.config().items() if k != "context_dilations"}
    assert build_head(older).context_dilations == ()
    build_head(older).load_state_dict(plain.head.state_dict())
    with pytest.raises(ValueError, match="context_dilations"):
        make_head("fusion", 192, options={"context_dilations": [0]})


def test_head_configs_rebuild_each_kind(fusion: ClaySegmenter, seg: ClaySegmenter) -> None:
    for model in (fusion, seg):
        rebuilt = build_head(model.head.config())
        assert type(rebuilt) is type(model.head)
        rebuilt.load_state_dict(model.head.state_dict())  # same keys and shapes
    legacy = {k: v for k, v in seg.head.config().items() if k != "kind"}  # exports before kinds
    assert isinstance(build_head(legacy), ChesapeakeHead)
    with pytest.raises(ValueError, match="unknown head"):
        build_head({"kind": "unet"})
    with pytest.raises(ValueError, match="unknown head"):
        build_segmenter("tiny", head="unet")
    with pytest.raises(ValueError, match="no head options"):
        make_head("seed", 192, options={"pixel_channels": 8})


def test_head_spec_from_the_model_config() -> None:
    from core.config import compose

    cfg = compose()
    assert head_spec(cfg.model) == {
        "head": "fusion",
        "head_options": {
            "pixel_channels": 16,
            "context_channels": 64,
            "context_out": 16,
            "fuse_channels": 32,
            "feature_layers": [1, -1],
            "levels": [],
            "pixel_dilations": [],
            "context_dilations": [],
        },
    }
    assert head_spec(compose(["model.head=seed"]).model) == {"head": "seed", "head_options": None}
    assert head_spec({"preset": "tiny"})["head"] == "seed"
    with pytest.raises(ValueError, match=r"model\.head"):
        head_spec({"head": "nope"})
