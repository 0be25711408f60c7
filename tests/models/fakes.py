"""Fake Clay checkpoints in the official layouts, small enough for unit tests.

- :func:`write_clay_pretrain_ckpt`: a Lightning checkpoint like ``clay-v1.5.ckpt``:
  ``model.encoder.*``, ``model.decoder.*``, ``model.teacher.*``, ``model.proj.*`` plus
  ``optimizer_states``, ``lr_schedulers`` and trainer bookkeeping.
- :func:`write_seed_segmenter_ckpt`: the seed's Chesapeake checkpoint: ``model.encoder.*`` and
  ``model.{conv1,bn1,conv2,bn2,conv_ps,conv_out}.*`` with non-trivial BatchNorm statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.models.clay import ClayEncoder, build_encoder
from training.models.head import ClaySegmenter, build_segmenter

#: NAIP constants, duplicated here so the fakes do not depend on core.naip.
NAIP_WAVELENGTHS_UM = (0.65, 0.56, 0.48, 0.842)


def _optimizer_states(tensors: dict[str, torch.Tensor]) -> list[dict]:
    state = {
        i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(t), "exp_avg_sq": torch.rand_like(t)}
        for i, t in enumerate(tensors.values())
        if t.is_floating_point()
    }
    return [{"state": state, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": list(state)}]}]


def write_clay_pretrain_ckpt(path: Path, preset: str = "tiny", seed: int = 0) -> ClayEncoder:
    """Write a full-layout Clay pretraining checkpoint; returns the encoder whose weights it holds."""
    torch.manual_seed(seed)
    encoder = build_encoder(preset).eval()
    dim = encoder.dim
    state: dict[str, torch.Tensor] = {
        f"model.encoder.{k}": v.clone() for k, v in encoder.state_dict().items()
    }
    # Decoder, DINOv2 teacher and projection: names from the real file, sizes shrunk.
    state.update(
        {
            "model.decoder.enc_to_dec.weight": torch.randn(dim // 2, dim),
            "model.decoder.enc_to_dec.bias": torch.randn(dim // 2),
            "model.decoder.mask_patch": torch.randn(dim // 2),
            "model.decoder.transformer.layers.0.0.to_qkv.weight": torch.randn(3 * dim // 2, dim // 2),
            "model.decoder.embed_to_pixels.weight_generator.fc_weight.weight": torch.randn(
                64 * dim // 2, 128
            ),
            "model.teacher.cls_token": torch.randn(1, 1, 384),
            "model.teacher.patch_embed.proj.weight": torch.randn(384, 3, 14, 14),
            "model.teacher.blocks.0.attn.qkv.weight": torch.randn(1152, 384),
            "model.proj.weight": torch.randn(384, dim),
            "model.proj.bias": torch.randn(384),
        }
    )
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "2.2.0",
        "state_dict": state,
        "optimizer_states": _optimizer_states(state),
        "lr_schedulers": [{"last_epoch": 1234, "base_lrs": [1e-4]}],
        # A Path is not on torch's weights_only allowlist: the loader must cope without executing it.
        "hyper_parameters": {
            "model_size": preset,
            "mask_ratio": 0.7,
            "metadata_path": Path("configs/metadata.yaml"),
        },
    }
    torch.save(ckpt, path)
    return encoder


def write_seed_segmenter_ckpt(
    path: Path, preset: str = "tiny", head_width: int = 32, seed: int = 0
) -> ClaySegmenter:
    """Write a seed-layout Chesapeake checkpoint; returns the (eval) segmenter it holds."""
    torch.manual_seed(seed)
    model = build_segmenter(preset, head_width=head_width, wavelengths=NAIP_WAVELENGTHS_UM, gsd=1.0)
    for bn in (model.head.bn1, model.head.bn2):
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0.0, 0.1)
        bn.num_batches_tracked.fill_(500)
    model.eval()
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        # Clay's Segmentor holds the head convs directly: model.conv1.*, not model.head.conv1.*
        state["model." + key.removeprefix("head.")] = value.clone()
    ckpt = {
        "epoch": 9,
        "global_step": 4321,
        "state_dict": state,
        "optimizer_states": _optimizer_states({k: v for k, v in state.items() if "encoder" not in k}),
        "lr_schedulers": [],
        "hyper_parameters": {"num_classes": 7, "lr": 1e-5, "wd": 0.05},
    }
    torch.save(ckpt, path)
    return model
