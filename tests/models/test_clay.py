"""Clay encoder: presets, official key layout, shapes, intermediates, folded patch embedding."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from training.models.clay import (
    PRESETS,
    ClayEncoder,
    FoldedPatchEmbed,
    build_encoder,
    count_parameters,
    encode_time_latlon,
)

NAIP_WAVES = (0.65, 0.56, 0.48, 0.842)
#: Key names and shapes of the official checkpoints, written by ``python -m tests.data.clay_v15_keys``.
OFFICIAL_KEYS = Path(__file__).resolve().parents[1] / "data" / "clay_v15_state_dict.json"


@pytest.fixture(scope="module")
def tiny() -> ClayEncoder:
    torch.manual_seed(0)
    return build_encoder("tiny").eval()


@pytest.mark.parametrize(
    ("preset", "expected"), [("tiny", 4.0e6), ("small", 11.0e6), ("base", 92e6), ("large", 311e6)]
)
def test_parameter_counts_match_design(preset: str, expected: float) -> None:
    n = count_parameters(build_encoder(preset, device="meta"))
    assert abs(n - expected) / expected < 0.02, f"{preset}: {n:,} params vs ~{expected:,.0f}"


def test_large_keys_and_shapes_equal_the_official_checkpoint() -> None:
    """Our large encoder's state dict has exactly the official Clay v1.5 encoder's keys and shapes
    (tests/data/clay_v15_state_dict.json, without the checkpoint's 'model.encoder.' prefix)."""
    official = json.loads(OFFICIAL_KEYS.read_text())["encoder"]
    ours = {k: list(v.shape) for k, v in build_encoder("large", device="meta").state_dict().items()}
    assert sorted(ours) == sorted(official)
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert not any(re.search(r"to_(qkv|out)\.bias", k) for k in ours)


def test_shipped_official_keys_are_the_listing_s() -> None:
    """Where the listing of the official checkpoints is at hand, the shipped JSON is what it gives."""
    from tests.data.clay_v15_keys import parse_listing

    listing = Path(__file__).resolve().parents[3] / "shared" / "clay_v15_state_dict.tsv"
    if not listing.exists():
        pytest.skip(f"{listing} not available (the shipped JSON is checked against it where it is)")
    shipped = json.loads(OFFICIAL_KEYS.read_text())
    assert {k: shipped[k] for k in ("encoder", "seed_head")} == parse_listing(listing.read_text())


@pytest.mark.parametrize("size", [224, 256])
def test_output_shapes(tiny: ClayEncoder, size: int) -> None:
    x = torch.randn(1, 4, size, size)
    with torch.inference_mode():
        tokens = tiny(x, NAIP_WAVES, 1.0)
        (grid,) = tiny.forward_intermediates(x, NAIP_WAVES, 1.0, intermediates_only=True)
    n = (size // 8) ** 2
    assert tokens.shape == (1, 1 + n, 192)
    assert grid.shape == (1, 192, size // 8, size // 8)


def test_forward_intermediates_semantics(tiny: ClayEncoder) -> None:
    x = torch.randn(2, 4, 32, 32)
    with torch.inference_mode():
        final = tiny.forward_features(x, NAIP_WAVES, 1.0)
        out, inter = tiny.forward_intermediates(
            x, NAIP_WAVES, 1.0, indices=[0, -1], output_fmt="NLC", norm=True
        )
        last_two = tiny.forward_intermediates(x, NAIP_WAVES, 1.0, indices=2, intermediates_only=True)
        (grid,) = tiny.forward_intermediates(x, NAIP_WAVES, 1.0, norm=True, intermediates_only=True)
    torch.testing.assert_close(out, final)
    assert [t.shape for t in inter] == [(2, 16, 192)] * 2
    torch.testing.assert_close(inter[1], final[:, 1:])  # last block, normed = output patch tokens
    assert [t.shape for t in last_two] == [(2, 192, 4, 4)] * 2
    # NCHW grid is the row-major token sequence
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), final[:, 1:])
    with pytest.raises(ValueError, match="out of range"):
        tiny.forward_intermediates(x, NAIP_WAVES, indices=[6])
    with pytest.raises(ValueError, match="output_fmt"):
        tiny.forward_intermediates(x, NAIP_WAVES, output_fmt="NHWC")  # type: ignore[arg-type]


def test_folded_patch_embedding_equals_dynamic(tiny: ClayEncoder) -> None:
    x = torch.randn(2, 4, 64, 64) * 2
    folded = tiny.fold_patch_embedding(NAIP_WAVES)
    assert isinstance(folded, FoldedPatchEmbed)
    assert isinstance(folded.proj, torch.nn.Conv2d) and folded.proj.weight.shape == (192, 4, 8, 8)
    with torch.inference_mode():
        dynamic_tokens = tiny.patch_embedding(x, NAIP_WAVES)
        folded_tokens = folded(x)
        dynamic_out = tiny(x, NAIP_WAVES, 1.0)
    assert (dynamic_tokens - folded_tokens).abs().max() <= 1e-5
    lean = build_encoder("tiny").eval()
    lean.load_state_dict(tiny.state_dict())
    lean.patch_embedding = folded
    assert lean.is_folded and not any("weight_generator" in k for k in lean.state_dict())
    with torch.inference_mode():
        assert (lean(x, NAIP_WAVES, 1.0) - dynamic_out).abs().max() <= 1e-5
        assert (lean(x, None, 1.0) - dynamic_out).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="folded for wavelengths"):
        lean(x, (0.49, 0.56, 0.665, 0.842), 1.0)


def test_metadata_encodings(tiny: ClayEncoder) -> None:
    x = torch.randn(2, 4, 32, 32)
    zeros = torch.zeros(2, 4)
    time, latlon = encode_time_latlon(
        torch.tensor([10, 30]),
        torch.tensor([12, 15]),
        torch.tensor([38.9, 39.0]),
        torch.tensor([-77.0, -76.5]),
    )
    with torch.inference_mode():
        unknown = tiny(x, NAIP_WAVES, 1.0)
        torch.testing.assert_close(tiny(x, NAIP_WAVES, 1.0, zeros, zeros), unknown)
        assert not torch.allclose(tiny(x, NAIP_WAVES, 1.0, time, latlon), unknown)
        assert not torch.allclose(tiny(x, NAIP_WAVES, 0.6), unknown)  # GSD scales the position code
    assert time.shape == latlon.shape == (2, 4)


def test_bad_inputs_raise_value_errors(tiny: ClayEncoder) -> None:
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny(torch.randn(1, 4, 30, 32), NAIP_WAVES)
    with pytest.raises(ValueError, match="wavelengths"):
        tiny(torch.randn(1, 3, 32, 32), NAIP_WAVES)
    with pytest.raises(ValueError, match="unknown Clay preset"):
        build_encoder("huge")
    with pytest.raises(ValueError, match="multiple of 4"):
        build_encoder("tiny", dim=190)


def test_presets_are_the_documented_ones() -> None:
    assert {k: (c.dim, c.depth, c.heads, c.mlp_ratio) for k, c in PRESETS.items()} == {
        "tiny": (192, 6, 4, 2.0),
        "small": (384, 6, 6, 2.0),
        "base": (768, 12, 12, 4.0),
        "large": (1024, 24, 16, 4.0),
    }
