"""Compact export round trip, seed checkpoint conversion, and the Lambda-safe import surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.models.fakes import write_seed_segmenter_ckpt
from training.convert_seed import convert_seed_checkpoint, main
from training.models.checkpoint import CheckpointMismatchError, load_seed_segmenter
from training.models.export import load_export, read_export_metadata, save_export
from training.models.head import ClaySegmenter, build_segmenter

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> ClaySegmenter:
    torch.manual_seed(1)
    seg = build_segmenter("tiny", head_width=32)
    for bn in (seg.head.bn1, seg.head.bn2):
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return seg.eval()


@pytest.fixture(scope="module")
def chips() -> torch.Tensor:
    return torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(2))


def _fp16_reference(model: ClaySegmenter) -> ClaySegmenter:
    """The fp32 model with its weights rounded through fp16, as the export stores them."""
    ref = build_segmenter("tiny", head_width=32).eval()
    ref.load_state_dict(model.state_dict())
    ref.fold_patch_embedding()
    with torch.no_grad():
        for name, t in ref.state_dict().items():
            if t.is_floating_point() and not name.endswith(("running_mean", "running_var", "wavelengths")):
                t.copy_(t.half().float())
    return ref


def test_round_trip(tmp_path: Path, model: ClaySegmenter, chips: torch.Tensor) -> None:
    uri = save_export(
        model,
        str(tmp_path / "m.safetensors"),
        reference_stats={"band_mean": [1, 2, 3, 4]},
        extra={"run_id": "abc"},
    )
    loaded, meta = load_export(uri)
    assert not loaded.training and loaded.encoder.is_folded
    assert not model.encoder.is_folded  # the source model is untouched
    with safe_open(uri, framework="pt") as f:
        keys = list(f.keys())
        assert f.get_tensor("encoder.patch_embedding.proj.weight").dtype == torch.float16
        assert f.get_tensor("head.bn1.running_var").dtype == torch.float32
    assert not any("weight_generator" in k or "fclayer" in k for k in keys)
    assert meta["format_version"] == 1 and meta["preset"] == "tiny"
    assert meta["encoder_config"]["dim"] == 192 and meta["head_config"]["width"] == 32
    assert meta["class_table"][0]["name"] == "Water" and len(meta["class_table"]) == 7
    assert meta["normalization"]["mean"] == pytest.approx([110.16, 115.41, 98.15, 139.04])
    assert meta["normalization"]["std"] == pytest.approx([47.23, 39.82, 35.43, 49.86])
    assert meta["wavelengths_um"] == pytest.approx([0.65, 0.56, 0.48, 0.842]) and meta["gsd_m"] == 1.0
    assert meta["reference_stats"] == {"band_mean": [1, 2, 3, 4]} and meta["extra"] == {"run_id": "abc"}
    assert read_export_metadata(uri)["extra"] == {"run_id": "abc"}

    with torch.inference_mode():
        got = loaded.predict_logits(chips)
        want = _fp16_reference(model)(chips)
        fp32 = model(chips)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))
    torch.testing.assert_close(got, fp32, rtol=1e-2, atol=1e-2)  # fp16 storage tolerance
    assert (got.argmax(1) == fp32.argmax(1)).float().mean() >= 0.999

    bf16, _ = load_export(uri, dtype=torch.bfloat16)
    assert bf16.head.conv1.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        assert (bf16.predict_logits(chips[:1]).float().argmax(1) == got[:1].argmax(1)).float().mean() > 0.95


def test_round_trip_through_s3(s3_bucket: str, model: ClaySegmenter, chips: torch.Tensor) -> None:
    uri = save_export(model, f"{s3_bucket}/models/v1/model.safetensors", reference_stats=None)
    loaded, meta = load_export(uri)
    assert meta["reference_stats"] is None
    with torch.inference_mode():
        torch.testing.assert_close(
            loaded.predict_logits(chips), _fp16_reference(model)(chips), rtol=1e-4, atol=1e-4
        )


def test_rejects_foreign_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a landcover-clay-segmenter export"):
        load_export(path)
    with pytest.raises(FileNotFoundError):
        load_export(tmp_path / "missing.safetensors")


def test_seed_conversion_agrees_with_eager_seed_model(tmp_path: Path, chips: torch.Tensor) -> None:
    src = tmp_path / "chesapeake-7class-segment_epoch-09.ckpt"
    original = write_seed_segmenter_ckpt(src, "tiny", head_width=32)
    seed_model = load_seed_segmenter(src, preset="tiny")
    dst = convert_seed_checkpoint(src, str(tmp_path / "seed.safetensors"), preset="tiny")
    exported, meta = load_export(dst)
    assert meta["extra"]["source_checkpoint"] == src.name
    with torch.inference_mode():
        before = seed_model(chips)
        after = exported.predict_logits(chips)
        torch.testing.assert_close(before, original(chips), rtol=0, atol=0)
    torch.testing.assert_close(after, before, rtol=1e-2, atol=1e-2)
    assert (after.argmax(1) == before.argmax(1)).float().mean() >= 0.999


def test_seed_conversion_cli_and_wrong_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "seed.ckpt"
    write_seed_segmenter_ckpt(src, "tiny", head_width=16)
    assert main([str(src), str(tmp_path / "out.safetensors"), "--preset", "tiny"]) == 0
    assert capsys.readouterr().out.strip().endswith("out.safetensors")
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        convert_seed_checkpoint(src, str(tmp_path / "bad.safetensors"), preset="small")


def test_export_loads_without_training_frameworks(tmp_path: Path, model: ClaySegmenter) -> None:
    uri = save_export(model, str(tmp_path / "m.safetensors"))
    code = (
        "import sys, torch\n"
        "from training.models.export import load_export\n"
        f"m, meta = load_export({uri!r})\n"
        "m.predict_logits(torch.zeros(1, 4, 32, 32))\n"
        "bad = [k for k in ('pytorch_lightning', 'lightning', 'hydra', 'mlflow', 'airflow', 'torchmetrics', "
        "'rasterio') if k in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_dilated_fusion_head_exports_to_safetensors_and_onnx_int8(tmp_path: Path) -> None:
    """A fusion head with pixel_dilations and context_dilations rebuilds from its export's head
    config and runs in the ONNX int8 runtime the Lambda uses (dilated convs quantise like the others)."""
    from inference.runtime import load_predictor
    from training.models.onnx_export import convert_export

    torch.manual_seed(3)
    options = {"pixel_dilations": [2, 4], "context_dilations": [2, 4]}
    seg = build_segmenter("tiny", head="fusion", head_options=options).eval()
    uri = save_export(seg, str(tmp_path / "m.safetensors"), reference_stats=None)
    loaded, meta = load_export(uri)
    assert meta["head_config"]["pixel_dilations"] == [2, 4]
    assert meta["head_config"]["context_dilations"] == [2, 4]
    assert loaded.head.pixel_dilations == (2, 4) and loaded.head.context_dilations == (2, 4)
    chips = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = seg(chips).softmax(1)
    onnx = convert_export(uri, str(tmp_path / "m.int8.onnx"), chip_size=64)
    got = load_predictor(str(Path(onnx.removeprefix("file://"))), "onnx").predict_proba(chips.numpy())
    assert got.shape == (2, 7, 64, 64)
    assert (got.argmax(1) == want.argmax(1).numpy()).mean() > 0.9
