"""Official-layout checkpoints: encoder-only filtering and strict, key-by-key loading."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import torch
from safetensors.torch import save_file

from tests.models.fakes import NAIP_WAVELENGTHS_UM, write_clay_pretrain_ckpt
from training.models.checkpoint import (
    CheckpointMismatchError,
    checkpoint_filter_fn,
    load_encoder,
    load_encoder_state_dict,
    load_state_dict_file,
)
from training.models.clay import ClayEncoder, build_encoder


@pytest.fixture(scope="module")
def pretrain_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ClayEncoder]:
    path = tmp_path_factory.mktemp("ckpt") / "clay-v1.5-tiny.ckpt"
    return path, write_clay_pretrain_ckpt(path, "tiny")


def test_full_layout_checkpoint_yields_only_the_encoder(pretrain_ckpt: tuple[Path, ClayEncoder]) -> None:
    path, source = pretrain_ckpt
    raw = load_state_dict_file(path)
    assert {k.split(".")[1] for k in raw["state_dict"]} == {"encoder", "decoder", "teacher", "proj"}
    assert "optimizer_states" in raw
    assert raw["hyper_parameters"]["metadata_path"] == PurePosixPath(
        "configs/metadata.yaml"
    )  # inert stand-in

    state = load_encoder_state_dict(path)
    assert sorted(state) == sorted(source.state_dict())
    encoder = load_encoder(build_encoder("tiny"), state).eval()
    x = torch.randn(1, 4, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            encoder(x, NAIP_WAVELENGTHS_UM), source(x, NAIP_WAVELENGTHS_UM), rtol=0, atol=0
        )


def test_meta_built_encoder_takes_the_mapped_tensors(pretrain_ckpt: tuple[Path, ClayEncoder]) -> None:
    path, source = pretrain_ckpt
    encoder = load_encoder(build_encoder("tiny", device="meta"), load_encoder_state_dict(path))
    assert not any(t.is_meta for t in encoder.state_dict().values())
    torch.testing.assert_close(encoder.cls_token, source.cls_token)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_encoder_only_files(tmp_path: Path, pretrain_ckpt: tuple[Path, ClayEncoder], suffix: str) -> None:
    _, source = pretrain_ckpt
    path = tmp_path / f"encoder{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = load_encoder_state_dict(path)
    assert sorted(loaded) == sorted(state)
    load_encoder(build_encoder("tiny"), loaded)


def test_filter_detects_layouts() -> None:
    t = torch.zeros(1)
    assert checkpoint_filter_fn({"model.encoder.cls_token": t, "model.decoder.x": t}) == {"cls_token": t}
    assert checkpoint_filter_fn({"encoder.cls_token": t, "head.conv1.weight": t}) == {"cls_token": t}
    assert checkpoint_filter_fn({"cls_token": t}) == {"cls_token": t}


def test_strict_load_names_every_offending_key(pretrain_ckpt: tuple[Path, ClayEncoder]) -> None:
    _, source = pretrain_ckpt
    state = dict(source.state_dict())
    del state["transformer.layers.3.0.to_qkv.weight"]
    del state["patch_embedding.weight_generator.bias_token"]
    state["transformer.layers.0.0.to_qkv.bias"] = torch.zeros(576)
    state["cls_token"] = torch.zeros(1, 1, 384)
    state["transformer.norm.weight"] = torch.zeros(191)
    with pytest.raises(CheckpointMismatchError) as info:
        load_encoder(build_encoder("tiny"), state)
    err = info.value
    assert err.missing == [
        "patch_embedding.weight_generator.bias_token",
        "transformer.layers.3.0.to_qkv.weight",
    ]
    assert err.unexpected == ["transformer.layers.0.0.to_qkv.bias"]
    assert sorted(k for k, _, _ in err.mismatched) == ["cls_token", "transformer.norm.weight"]
    message = str(err)
    for needle in (
        "transformer.layers.3.0.to_qkv.weight",
        "bias_token",
        "to_qkv.bias",
        "cls_token: checkpoint [1, 1, 384] vs model [1, 1, 192]",
        "[191] vs model [192]",
    ):
        assert needle in message
    assert isinstance(err, ValueError)


def test_wrong_preset_fails_loudly(pretrain_ckpt: tuple[Path, ClayEncoder]) -> None:
    path, _ = pretrain_ckpt
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_encoder(build_encoder("small", device="meta"), load_encoder_state_dict(path))


def test_missing_file_and_non_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_encoder_state_dict(tmp_path / "nope.ckpt")
    bogus = tmp_path / "list.pt"
    torch.save([1, 2, 3], bogus)
    with pytest.raises(ValueError, match="no state dict"):
        load_encoder_state_dict(bogus)
