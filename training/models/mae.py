"""Clay's masked-autoencoder objective around our :class:`~training.models.clay.ClayEncoder`.

Continued pretraining (``landcover pretrain``) trains the encoder the way Clay pretrained it:

1. **Mask.** Every sample gets its own random permutation of its L patches; the first
   ``int(mask_ratio * L)`` are masked (Clay: 0.75), the rest stay visible.
2. **Encode the visible tokens only.** The encoder's own patch embedding and position/metadata
   encoding (``ClayEncoder.embed``), then CLS + the visible tokens through its blocks and final
   LayerNorm. Nothing of the masked patches reaches the encoder.
3. **Decode.** A light transformer (Clay's tiny decoder: width 96, 3 blocks, 2 heads) sees the
   encoded tokens projected to its width in their places, a learned mask token in the masked
   places, and the fixed sin/cos position + metadata encoding on every token. A linear layer maps
   each token to the patch's pixels of all bands (C * p * p values).
4. **Loss on masked patches only.** The per-pixel error (Clay: L1; MSE as in the original MAE
   is an option) against the normalised input pixels, optionally normalised per patch
   (``norm_pix_loss``), averaged per patch, then over the masked patches alone (and, given a
   validity map, the masked patches that hold data: Clay's chips have no nodata, NAIP edges do).

What we leave out of Clay's recipe, and why:

- **The teacher term.** Clay adds ``0.1 * (1 - cos)`` between a projection of the CLS token and
  a frozen teacher's image embedding (SAM ViT / DINOv2 at 518 px). The teacher's weights cannot
  be had here (no network; timm is not a dependency), so the loss is the reconstruction term
  alone, unweighted.
- **Channel dropping.** Clay zeroes all or half of the bands of some samples, but only those with
  a known lat/lon; our chips carry lat/lon "unknown" (zeros), where Clay drops nothing either.
- **The wavelength-conditioned output layer.** Clay's decoder maps tokens to pixels through a
  second dynamic embedding (one kernel per band from its wavelength); for the fixed NAIP bands a
  plain linear layer is the same function family, and the decoder is discarded after pretraining.

Read top to bottom: masking -> decoder -> the autoencoder (forward, loss, reconstruction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from training.models.clay import META_CHANNELS, Block, ClayEncoder, posemb_sincos_2d_gsd

__all__ = ["MaeOutput", "MaskedAutoencoder", "MaskedDecoder", "patchify", "random_masking", "unpatchify"]

#: Clay's mask ratio (claymodel/module.py).
CLAY_MASK_RATIO = 0.75


# --------------------------------------------------------------------------------------------
# Masking and patches
# --------------------------------------------------------------------------------------------


def random_masking(
    batch: int, length: int, mask_ratio: float, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random split of ``length`` patches per sample into masked and visible ones.

    Returns ``visible`` (B, L - M) and ``masked`` (B, M) patch indices and ``mask`` (B, L) with 1
    for a masked patch, where ``M = int(mask_ratio * length)`` (Clay's count: the same for every
    sample, so the visible tokens batch without padding).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n_masked = int(mask_ratio * length)
    if n_masked < 1 or n_masked >= length:
        raise ValueError(
            f"mask_ratio {mask_ratio} masks {n_masked} of {length} patches; need 1..{length - 1}"
        )
    noise = torch.rand(batch, length, generator=generator, device=device)  # (B, L)
    order = noise.argsort(dim=1)  # (B, L): a random permutation per sample
    masked, visible = order[:, :n_masked], order[:, n_masked:]  # (B, M), (B, L-M)
    mask = torch.zeros(batch, length, device=device)
    mask.scatter_(1, masked, 1.0)  # (B, L)
    return visible, masked, mask


def patchify(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C * p * p), patches row-major as the encoder's tokens."""
    B, C, H, W = pixels.shape
    p = patch_size
    x = pixels.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)  # (B, L, C*p*p)


def unpatchify(patches: torch.Tensor, channels: int, patch_size: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, L, C * p * p) -> (B, C, h * p, w * p)."""
    B = patches.shape[0]
    p = patch_size
    x = patches.reshape(B, h, w, channels, p, p)  # (B, h, w, C, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, channels, h * p, w * p)  # (B, C, H, W)


def _gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, L, D) at ``index`` (B, K) -> (B, K, D)."""
    return tokens.gather(1, index[:, :, None].expand(-1, -1, tokens.shape[-1]))


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------


class MaskedDecoder(nn.Module):
    """Clay's light MAE decoder: encoded tokens and mask tokens in place, position-encoded,
    a few pre-norm blocks, and a linear map of every token to its patch's pixels.

    Args:
        encoder_dim: width of the encoder's tokens.
        dim: decoder width (Clay tiny: 96).
        depth: decoder blocks (Clay tiny: 3).
        heads: attention heads (Clay tiny: 2).
        dim_head: width of one head (Clay: 48 for tiny, 64 above).
        mlp_ratio: feed-forward width as a multiple of ``dim``.
        out_channels: bands reconstructed.
        patch_size: patch side in pixels.
    """

    def __init__(
        self,
        encoder_dim: int,
        dim: int = 96,
        depth: int = 3,
        heads: int = 2,
        dim_head: int = 48,
        mlp_ratio: float = 2.0,
        out_channels: int = 4,
        patch_size: int = 8,
    ) -> None:
        super().__init__()
        if (dim - META_CHANNELS) % 4 != 0 or dim <= META_CHANNELS:
            raise ValueError(f"decoder dim={dim}: dim - {META_CHANNELS} must be a positive multiple of 4")
        self.dim, self.patch_size, self.out_channels = dim, patch_size, out_channels
        self.enc_to_dec = nn.Linear(encoder_dim, dim) if encoder_dim != dim else nn.Identity()
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dim_head, int(dim * mlp_ratio)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.to_pixels = nn.Linear(dim, out_channels * patch_size * patch_size)

    def forward(
        self,
        encoded: torch.Tensor,
        visible: torch.Tensor,
        masked: torch.Tensor,
        grid: tuple[int, int],
        gsd: float | torch.Tensor = 1.0,
        meta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pixels of every patch (B, L, C * p * p) from the encoded CLS + visible tokens.

        Args:
            encoded: encoder output (B, 1 + V, encoder_dim), CLS first.
            visible: (B, V) patch indices of the encoded tokens.
            masked: (B, M) patch indices of the masked patches.
            grid: the patch grid (h, w), L = h * w.
            gsd: ground sample distance in metres (scales the position code as in the encoder).
            meta: (B, 8) time/lat-lon channels, or None for unknown.
        """
        x = self.enc_to_dec(encoded)  # (B, 1+V, dim)
        B, L = x.shape[0], grid[0] * grid[1]
        cls, tokens = x[:, :1], x[:, 1:]  # (B, 1, dim), (B, V, dim)
        placed = self.mask_token.to(x.dtype).expand(B, L, -1).clone()  # (B, L, dim)
        placed.scatter_(1, visible[:, :, None].expand(-1, -1, self.dim), tokens)  # (B, L, dim)
        pos = posemb_sincos_2d_gsd(grid[0], grid[1], self.dim - META_CHANNELS, gsd, device=x.device)
        meta = torch.zeros(B, META_CHANNELS, device=x.device) if meta is None else meta.reshape(B, -1)
        enc = torch.cat((pos.expand(B, -1, -1), meta[:, None, :].expand(-1, L, -1)), dim=-1)  # (B, L, dim)
        x = torch.cat((cls, placed + enc.to(x.dtype)), dim=1)  # (B, 1+L, dim)
        for block in self.blocks:
            x = block(x)  # (B, 1+L, dim)
        return self.to_pixels(self.norm(x))[:, 1:]  # (B, L, C*p*p)


# --------------------------------------------------------------------------------------------
# The autoencoder
# --------------------------------------------------------------------------------------------


@dataclass
class MaeOutput:
    """One forward pass: the loss and what it was computed from.

    Attributes:
        loss: mean per-patch error over the masked patches (a scalar).
        pred: predicted pixels of every patch (B, L, C * p * p), in the target's space.
        target: the target pixels (B, L, C * p * p) (per-patch normalised with norm_pix_loss).
        mask: (B, L), 1 where the patch was masked.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


class MaskedAutoencoder(nn.Module):
    """A :class:`ClayEncoder` trained by masked reconstruction (see the module docstring).

    Args:
        encoder: the encoder to pretrain (dynamic patch embedding; it is trained in place).
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_heads: decoder attention heads.
        decoder_dim_head: width of one decoder head.
        decoder_mlp_ratio: decoder feed-forward width as a multiple of ``decoder_dim``.
        mask_ratio: share of the patches masked per sample (Clay: 0.75).
        norm_pix_loss: normalise each target patch by its own mean and variance (over all its
            bands and pixels), as in the MAE paper; Clay's default is off.
        loss: ``l1`` (Clay) or ``mse`` (the original MAE).
        wavelengths: band wavelengths in µm (NAIP red, green, blue, nir by default).
        gsd: ground sample distance in metres.
    """

    def __init__(
        self,
        encoder: ClayEncoder,
        decoder_dim: int = 96,
        decoder_depth: int = 3,
        decoder_heads: int = 2,
        decoder_dim_head: int = 48,
        decoder_mlp_ratio: float = 2.0,
        mask_ratio: float = CLAY_MASK_RATIO,
        norm_pix_loss: bool = False,
        loss: Literal["l1", "mse"] = "l1",
        wavelengths: Sequence[float] = (0.65, 0.56, 0.48, 0.842),
        gsd: float = 1.0,
    ) -> None:
        super().__init__()
        if encoder.is_folded:
            raise ValueError(
                "pretrain the dynamic encoder: a folded patch embedding cannot be trained as Clay's"
            )
        if loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', got {loss!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.mask_ratio, self.norm_pix_loss, self.loss_kind, self.gsd = mask_ratio, norm_pix_loss, loss, gsd
        self.register_buffer(
            "wavelengths", torch.tensor(list(wavelengths), dtype=torch.float32), persistent=False
        )
        self.decoder = MaskedDecoder(
            encoder.dim,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            decoder_dim_head,
            decoder_mlp_ratio,
            out_channels=len(wavelengths),
            patch_size=encoder.patch_size,
        )

    def encode_visible(self, pixels: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The encoder on CLS + the ``visible`` (B, V) patches only: normed tokens (B, 1 + V, dim)."""
        tokens = self.encoder.embed(pixels, self.wavelengths, self.gsd)  # (B, 1+L, dim)
        x = torch.cat((tokens[:, :1], _gather_tokens(tokens[:, 1:], visible)), dim=1)  # (B, 1+V, dim)
        for block in self.encoder.transformer.layers:
            x = block(x)  # (B, 1+V, dim)
        return self.encoder.transformer.norm(x)  # (B, 1+V, dim)

    def target(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the decoder reconstructs: the patches (B, L, C * p * p), per-patch normalised
        with ``norm_pix_loss``."""
        patches = patchify(pixels.float(), self.encoder.patch_size)  # (B, L, C*p*p)
        if not self.norm_pix_loss:
            return patches
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()  # (B, L, C*p*p)

    def masked_loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean per-patch error over the masked patches only (visible patches count for nothing),
        and of those only the ``valid`` (B, L) ones when given (a nodata patch has nothing to learn)."""
        error = F.l1_loss if self.loss_kind == "l1" else F.mse_loss
        per_patch = error(pred.float(), target, reduction="none").mean(dim=-1)  # (B, L)
        weight = mask if valid is None else mask * valid.to(mask.dtype)  # (B, L)
        return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)

    def forward(
        self,
        pixels: torch.Tensor,
        generator: torch.Generator | None = None,
        masking: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        valid: torch.Tensor | None = None,
    ) -> MaeOutput:
        """Mask, encode, decode and score a batch of normalised chips (B, C, H, W).

        ``masking`` (visible, masked, mask) replaces the random draw (tests, figures); ``valid``
        (B, L) leaves the patches where it is 0 (nodata) out of the loss.
        """
        B = pixels.shape[0]
        grid = self.encoder.grid_size(pixels.shape[-2], pixels.shape[-1])
        L = grid[0] * grid[1]
        visible, masked, mask = masking or random_masking(
            B, L, self.mask_ratio, generator=generator, device=pixels.device
        )
        encoded = self.encode_visible(pixels, visible)  # (B, 1+V, dim)
        pred = self.decoder(encoded, visible, masked, grid, self.gsd)  # (B, L, C*p*p)
        target = self.target(pixels)  # (B, L, C*p*p)
        return MaeOutput(self.masked_loss(pred, target, mask, valid), pred, target, mask)

    @torch.no_grad()
    def reconstruct(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For figures: the masked input, the reconstruction and the truth, each (B, C, H, W) in
        the input's (normalised) space, the visible patches of the reconstruction kept as input.

        With ``norm_pix_loss`` the predicted patches are mapped back with the truth's per-patch
        mean and variance (only the structure was predicted).
        """
        out = self.forward(pixels, generator=generator)
        C, p = pixels.shape[1], self.encoder.patch_size
        h, w = self.encoder.grid_size(pixels.shape[-2], pixels.shape[-1])
        truth = patchify(pixels.float(), p)  # (B, L, C*p*p)
        pred = out.pred.float()
        if self.norm_pix_loss:
            mean, var = truth.mean(dim=-1, keepdim=True), truth.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        m = out.mask[:, :, None]  # (B, L, 1)
        masked_input = truth * (1 - m)  # masked patches zeroed (the normalised mean)
        recon = truth * (1 - m) + pred * m
        return (
            unpatchify(masked_input, C, p, h, w),
            unpatchify(recon, C, p, h, w),
            unpatchify(truth, C, p, h, w),
        )
