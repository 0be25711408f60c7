"""Clay's masked-autoencoder objective on the tiny encoder: masking, loss support, learning, gradients."""

from __future__ import annotations

import pytest
import torch

from training.models.clay import build_encoder
from training.models.mae import MaskedAutoencoder, patchify, random_masking, unpatchify

CHIP = 32  # a 4 x 4 patch grid


@pytest.fixture
def mae() -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(build_encoder("tiny"), decoder_dim=48, decoder_depth=1, decoder_heads=2)


def _pixels(batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 4, CHIP, CHIP)


def test_mask_ratio_is_honoured_per_sample() -> None:
    generator = torch.Generator().manual_seed(3)
    visible, masked, mask = random_masking(5, 64, 0.75, generator=generator)
    assert masked.shape == (5, 48) and visible.shape == (5, 16)
    assert mask.sum(dim=1).tolist() == [48.0] * 5
    for row in range(5):
        assert sorted(torch.cat((visible[row], masked[row])).tolist()) == list(range(64))
        assert mask[row, masked[row]].eq(1).all() and mask[row, visible[row]].eq(0).all()
    assert not torch.equal(masked[0].sort().values, masked[1].sort().values)  # each sample its own draw
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 4, 0.1)  # masks no patch


def test_patchify_round_trip() -> None:
    x = _pixels()
    patches = patchify(x, 8)
    assert patches.shape == (2, 16, 4 * 64)
    assert torch.equal(unpatchify(patches, 4, 8, 4, 4), x)
    assert torch.equal(patches[0, 1].reshape(4, 8, 8), x[0, :, 0:8, 8:16])  # row-major, as the tokens


def test_encoder_sees_only_visible_patches(mae: MaskedAutoencoder) -> None:
    x = _pixels()
    visible, masked, _ = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    mae.eval()
    before = mae.encode_visible(x, visible)
    changed = x.clone()
    for row in range(2):  # scribble over every masked patch's pixels
        for index in masked[row].tolist():
            r, c = divmod(index, 4)
            changed[row, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 9.0
    assert before.shape == (2, 1 + 4, 192)
    assert torch.allclose(mae.encode_visible(changed, visible), before)


def test_loss_is_on_masked_patches_only(mae: MaskedAutoencoder) -> None:
    x = _pixels()
    masking = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    out = mae(x, masking=masking)
    visible = masking[0]
    target = out.target.clone()
    target[0, visible[0, 0]] += 5.0  # a visible patch's target changes ...
    assert mae.masked_loss(out.pred, target, out.mask).item() == pytest.approx(out.loss.item())
    masked = masking[1]
    target[0, masked[0, 0]] += 5.0  # ... a masked patch's does count
    assert mae.masked_loss(out.pred, target, out.mask).item() > out.loss.item() + 0.1


def test_invalid_patches_leave_the_loss(mae: MaskedAutoencoder) -> None:
    x = _pixels()
    masking = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    out = mae(x, masking=masking)
    valid = torch.ones(2, 16)
    valid[0, masking[1][0, 0]] = 0  # one masked patch holds nodata
    target = out.target.clone()
    target[0, masking[1][0, 0]] += 50.0  # ... whatever its pixels are
    kept = mae.masked_loss(out.pred, target, out.mask, valid)
    assert kept.item() == pytest.approx(mae.masked_loss(out.pred, out.target, out.mask, valid).item())
    assert mae.masked_loss(out.pred, target, out.mask).item() > kept.item() + 1.0


def test_norm_pix_loss_normalises_each_patch() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_encoder("tiny"), decoder_dim=48, decoder_depth=1, norm_pix_loss=True)
    target = mae.target(_pixels() * 3 + 7)
    assert torch.allclose(target.mean(dim=-1), torch.zeros(2, 16), atol=1e-4)
    assert torch.allclose(target.std(dim=-1), torch.ones(2, 16), atol=1e-3)


def test_a_few_steps_reduce_the_loss_and_reach_the_encoder(mae: MaskedAutoencoder) -> None:
    x = _pixels(4)
    smooth = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)  # learnable structure
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    masking = random_masking(4, 16, 0.75, generator=generator)
    first = mae(smooth, masking=masking).loss.item()
    before = {k: v.detach().clone() for k, v in mae.encoder.named_parameters()}
    for step in range(15):
        optimizer.zero_grad()
        out = mae(smooth, masking=masking)
        out.loss.backward()
        if step == 0:
            grads = {k: p.grad for k, p in mae.encoder.named_parameters()}
            assert grads["transformer.layers.0.0.to_qkv.weight"].abs().sum() > 0
            assert grads["patch_embedding.weight_generator.fc_weight.weight"].abs().sum() > 0
            assert grads["cls_token"].abs().sum() > 0
        optimizer.step()
    assert mae(smooth, masking=masking).loss.item() < 0.8 * first
    moved = [k for k, v in mae.encoder.named_parameters() if not torch.equal(v, before[k])]
    assert "transformer.layers.5.1.net.3.weight" in moved


def test_reconstruction_keeps_visible_patches() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_encoder("tiny"), decoder_dim=48, decoder_depth=1, norm_pix_loss=True)
    x = _pixels()
    masked_input, recon, truth = mae.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert masked_input.shape == recon.shape == truth.shape == x.shape
    assert torch.allclose(truth, x)
    same = (recon == truth).all(dim=1)  # (B, H, W): visible pixels are copied from the input
    assert 0.2 < same.float().mean().item() < 0.3  # a quarter of the patches stayed visible


def test_folded_encoders_are_refused() -> None:
    encoder = build_encoder("tiny")
    encoder.patch_embedding = encoder.fold_patch_embedding([0.65, 0.56, 0.48, 0.842])
    with pytest.raises(ValueError, match="folded"):
        MaskedAutoencoder(encoder)
