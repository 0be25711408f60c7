"""Chesapeake segmentation head and the encoder + head segmenter.

The head is Clay's Chesapeake fine-tune head: last-layer patch tokens (CLS dropped) as a grid,
two rounds of conv3x3 + BatchNorm + ReLU, conv3x3 to ``64 * p * p`` channels, PixelShuffle
back to full resolution and a final conv3x3 to the classes. Its parameter names (``conv1``,
``bn1``, ``conv2``, ``bn2``, ``conv_ps``, ``conv_out``) equal the seed checkpoint's
``model.*`` head keys, so the seed's weights map 1:1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.clay import ClayConfig, ClayEncoder, build_encoder

__all__ = ["ChesapeakeHead", "ClaySegmenter", "build_segmenter"]


class ChesapeakeHead(nn.Module):
    """Conv + PixelShuffle decoder from a patch-token grid to per-pixel logits.

    Args:
        in_dim: encoder width (channels of the input grid).
        num_classes: output classes (7 for Chesapeake).
        width: channels of the two conv3x3 + BN + ReLU rounds (512 in Clay; smaller for the
            tiny/small presets or fast tests).
        up_channels: channels after PixelShuffle (64 in Clay).
        upscale: PixelShuffle factor; equals the encoder's patch size.
    """

    def __init__(
        self,
        in_dim: int = 1024,
        num_classes: int = 7,
        width: int = 512,
        up_channels: int = 64,
        upscale: int = 8,
    ) -> None:
        super().__init__()
        self.in_dim, self.num_classes, self.width = in_dim, num_classes, width
        self.up_channels, self.upscale = up_channels, upscale
        self.conv1 = nn.Conv2d(in_dim, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv_ps = nn.Conv2d(width, up_channels * upscale * upscale, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.conv_out = nn.Conv2d(up_channels, num_classes, 3, padding=1)

    def config(self) -> dict:
        return {
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "width": self.width,
            "up_channels": self.up_channels,
            "upscale": self.upscale,
        }

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(grid)))  # (B, width, h, w)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, width, h, w)
        x = self.pixel_shuffle(self.conv_ps(x))  # (B, up_channels, h*p, w*p)
        return self.conv_out(x)  # (B, num_classes, H, W)


class ClaySegmenter(nn.Module):
    """Clay encoder + Chesapeake head: normalised NAIP chips in, per-pixel logits out.

    The band wavelengths and GSD are fixed per model (NAIP by default) and kept as
    non-persistent buffers, so the state dict holds only ``encoder.*`` and ``head.*``.

    Args:
        encoder: a :class:`ClayEncoder` (dynamic or folded patch embedding), or None for a
            head-only model trained on cached features (``forward_from_features`` only).
        head: a :class:`ChesapeakeHead` whose ``in_dim`` equals the encoder width.
        wavelengths: band wavelengths in µm; None means NAIP (red, green, blue, nir).
        gsd: ground sample distance in metres; None means NAIP's 1.0 m.
    """

    def __init__(
        self,
        encoder: ClayEncoder | None,
        head: ChesapeakeHead,
        wavelengths: Sequence[float] | None = None,
        gsd: float | None = None,
    ) -> None:
        super().__init__()
        if encoder is not None and head.in_dim != encoder.dim:
            raise ValueError(
                f"head expects {head.in_dim}-channel features but the encoder emits {encoder.dim}"
            )
        if wavelengths is None or gsd is None:
            from training.data.naip import NAIP_GSD_M, NAIP_WAVELENGTHS_UM

            wavelengths = NAIP_WAVELENGTHS_UM if wavelengths is None else wavelengths
            gsd = NAIP_GSD_M if gsd is None else gsd
        self.encoder, self.head = encoder, head
        self.register_buffer(
            "wavelengths", torch.tensor(list(wavelengths), dtype=torch.float32), persistent=False
        )
        self.register_buffer("gsd", torch.tensor(float(gsd), dtype=torch.float32), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_features(
        self, pixels: torch.Tensor, time: torch.Tensor | None = None, latlon: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The head's input: last-layer normed patch tokens as a grid (B, dim, H/p, W/p)."""
        if self.encoder is None:
            raise ValueError(
                "this segmenter has no encoder (head trained on cached features); attach one first"
            )
        if pixels.shape[1] != self.wavelengths.numel():
            raise ValueError(
                f"expected {self.wavelengths.numel()} bands (wavelengths {self.wavelengths.tolist()} µm), "
                f"got {pixels.shape[1]}"
            )
        (grid,) = self.encoder.forward_intermediates(
            pixels,
            self.wavelengths,
            self.gsd,
            time,
            latlon,
            output_fmt="NCHW",
            norm=True,
            intermediates_only=True,
        )
        return grid  # (B, dim, h, w)

    def forward_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from cached encoder features: a grid (B, dim, h, w) or tokens (B, [1+]L, dim).

        Token input must come from a square chip; with 1+L tokens the first (CLS) is dropped.
        """
        if features.ndim == 3:
            n = features.shape[1]
            side = math.isqrt(n)
            if side * side != n:
                side = math.isqrt(n - 1)
                if side * side != n - 1:
                    raise ValueError(f"{n} tokens do not form a square grid (with or without CLS)")
                features = features[:, 1:]
            features = features.transpose(1, 2).reshape(features.shape[0], -1, side, side)  # (B, dim, h, w)
        if features.ndim != 4 or features.shape[1] != self.head.in_dim:
            raise ValueError(
                f"features must be (B, {self.head.in_dim}, h, w) or (B, L, {self.head.in_dim}), "
                f"got shape {tuple(features.shape)}"
            )
        return self.head(features.to(self.head.conv1.weight.dtype))  # (B, K, H, W)

    def forward(
        self, pixels: torch.Tensor, time: torch.Tensor | None = None, latlon: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.forward_features(pixels, time, latlon))  # (B, K, H, W)

    def predict_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for normalised float32 chips (B, C, H, W); see ``naip.normalize``."""
        if not pixels.is_floating_point():
            raise ValueError(
                f"predict_logits takes normalised float chips, got {pixels.dtype}; "
                "apply training.data.naip.normalize to uint8 NAIP first"
            )
        return self(pixels.to(self.head.conv1.weight.dtype))

    def fold_patch_embedding(self) -> ClaySegmenter:
        """Replace the dynamic patch embedding with the folded conv for this model's bands (in place)."""
        if self.encoder is not None and not self.encoder.is_folded:
            self.encoder.patch_embedding = self.encoder.fold_patch_embedding(self.wavelengths)
        return self


def build_segmenter(
    preset: str | ClayConfig | dict = "large",
    num_classes: int = 7,
    head_width: int = 512,
    wavelengths: Sequence[float] | None = None,
    gsd: float | None = None,
    device: torch.device | str | None = None,
) -> ClaySegmenter:
    """A randomly initialised :class:`ClaySegmenter`; load weights with ``checkpoint.py``.

    With ``device="meta"`` the encoder and head are built without storage (to be filled by
    ``load_state_dict(..., assign=True)``); the small wavelength/GSD buffers stay on the CPU.
    """
    encoder = build_encoder(preset, device=device)
    with torch.device(device or "cpu"):
        head = ChesapeakeHead(encoder.dim, num_classes, head_width, upscale=encoder.patch_size)
    return ClaySegmenter(encoder, head, wavelengths, gsd)
