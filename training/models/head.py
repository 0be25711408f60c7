"""Segmentation heads and the encoder + head segmenter.

Two heads, chosen by name (``model.head`` in the Hydra config; :data:`HEADS`):

- ``fusion`` (:class:`FusionHead`, the default of the training config): the encoder's patch
  grid (one or more depths, ``feature_layers``) is reduced and upsampled, and fused with a light
  full-resolution conv branch on the normalised pixels (plus NDVI), UNETR-style. The patch grid
  carries the context (8 px tokens, the whole chip through attention); the pixel branch keeps
  1-3 px structures (roads, building edges) that a stride-8 grid cannot place.
- ``seed`` (:class:`ChesapeakeHead`): Clay's Chesapeake fine-tune head: last-layer patch
  tokens (CLS dropped) as a grid, two rounds of conv3x3 + BatchNorm + ReLU, conv3x3 to
  ``64 * p * p`` channels, PixelShuffle back to full resolution and a final conv3x3 to the
  classes. Its parameter names (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv_ps``,
  ``conv_out``) equal the seed checkpoint's ``model.*`` head keys, so the seed's weights map 1:1.

Every head has ``in_dim``, ``num_classes``, ``feature_layers`` (encoder block indices whose
normed patch grids it reads, concatenated on channels), ``needs_pixels`` and ``config()``
(with its ``kind``), so exports rebuild it with :func:`build_head`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.clay import ClayConfig, ClayEncoder, build_encoder

__all__ = [
    "DEFAULT_HEAD",
    "HEADS",
    "ChesapeakeHead",
    "ClaySegmenter",
    "FusionHead",
    "build_head",
    "build_segmenter",
    "head_spec",
    "make_head",
]

#: The head ``build_segmenter`` makes when none is named: the seed-compatible one, so seed
#: checkpoints and older exports keep their meaning. Training picks ``model.head`` (fusion).
DEFAULT_HEAD = "seed"


class ChesapeakeHead(nn.Module):
    """Conv + PixelShuffle decoder from a patch-token grid to per-pixel logits (the seed head).

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
        self.feature_layers: tuple[int, ...] = (-1,)
        self.conv1 = nn.Conv2d(in_dim, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv_ps = nn.Conv2d(width, up_channels * upscale * upscale, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.conv_out = nn.Conv2d(up_channels, num_classes, 3, padding=1)

    kind = "seed"
    needs_pixels = False

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "width": self.width,
            "up_channels": self.up_channels,
            "upscale": self.upscale,
        }

    def forward(self, grid: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(grid)))  # (B, width, h, w)
        x = F.relu(self.bn2(self.conv2(x)))  # (B, width, h, w)
        x = self.pixel_shuffle(self.conv_ps(x))  # (B, up_channels, h*p, w*p)
        return self.conv_out(x)  # (B, num_classes, H, W)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _DilatedResidual(nn.Module):
    """``relu(x + bn(conv3x3_dilated(x)))``: widens the receptive field by ``2 * dilation`` pixels
    of its input (full-resolution pixels or patch-grid cells), while the identity path keeps the
    detail below it."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


class FusionHead(nn.Module):
    """Patch-grid context fused with a full-resolution pixel branch (the default head).

    - **pixel branch** (full resolution): the normalised bands plus NDVI (computed from the
      de-normalised red and NIR) through two conv3x3 + BN + ReLU of ``pixel_channels``, then
      (optional, ``pixel_dilations``) residual dilated conv3x3 blocks, one per dilation, so the
      full-resolution features see a strip's length and a roof's extent (a 2, 4, 8 chain sees
      33 px) without losing the 1 px detail;
    - **pixel pyramid** (optional, ``levels``): each entry adds a level at half the resolution
      of the one above (a stride-2 conv3x3 and a conv3x3 of that many channels), so the pixels
      are also seen over 2, 4, ... times the area: a 5 px street and a 4 px driveway have the
      same spectra and width, and differ in length and in what is around them;
    - **context branch** (patch grid): the encoder grids of ``feature_layers`` (concatenated)
      through conv1x1 to ``context_channels``, a conv3x3, (optional, ``context_dilations``)
      residual dilated conv3x3 blocks on the grid, so the context sees a highway's length and a
      roof's whole outline (a 2, 4 chain sees 15 patches, 120 px at patch 8), and conv1x1 to
      ``context_out``, bilinearly upsampled to the deepest level (full resolution without ``levels``);
    - **decoder** (with ``levels``): from the deepest level up, a conv3x3 over that level's
      features concatenated with what comes from below (the context at the bottom), then
      bilinear x2 upsampling, U-Net style;
    - **fusion** (full resolution): the pixel branch and what comes from below concatenated,
      two conv3x3 + BN + ReLU of ``fuse_channels`` and a conv1x1 to the classes.

    Args:
        in_dim: channels of the encoder grid it reads (``dim * len(feature_layers)``).
        num_classes: output classes.
        pixel_channels: width of the full-resolution pixel branch.
        context_channels: width of the context branch on the patch grid.
        context_out: context channels carried to the deepest level.
        fuse_channels: width of the fusion convs.
        feature_layers: encoder block indices whose normed grids are read (negative from the
            end; ``(-1,)`` is the encoder's output).
        mean, std: the input normalisation (per band), to recover NDVI from normalised pixels.
        levels: channels of each pyramid level (1/2, 1/4, ... resolution); empty: none (the
            pixel branch and the upsampled context meet at full resolution).
        pixel_dilations: dilation of each residual conv3x3 block appended to the pixel branch;
            empty: none (the pixel branch is the two plain convs).
        context_dilations: dilation of each residual conv3x3 block on the patch grid, after the
            context branch's conv3x3; empty: none.
    """

    kind = "fusion"
    needs_pixels = True

    def __init__(
        self,
        in_dim: int = 192,
        num_classes: int = 7,
        pixel_channels: int = 16,
        context_channels: int = 64,
        context_out: int = 16,
        fuse_channels: int = 32,
        feature_layers: Sequence[int] = (-1,),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        levels: Sequence[int] = (),
        pixel_dilations: Sequence[int] = (),
        context_dilations: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if mean is None or std is None:
            from core.naip import NAIP_MEANS, NAIP_STDS

            mean = NAIP_MEANS if mean is None else mean
            std = NAIP_STDS if std is None else std
        self.in_dim, self.num_classes = in_dim, num_classes
        self.pixel_channels, self.context_channels = pixel_channels, context_channels
        self.context_out, self.fuse_channels = context_out, fuse_channels
        self.feature_layers = tuple(int(i) for i in feature_layers)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.levels = tuple(int(c) for c in levels)
        if any(c <= 0 for c in self.levels):
            raise ValueError(f"fusion head levels must be positive channel counts, got {list(self.levels)}")
        self.pixel_dilations = tuple(int(d) for d in pixel_dilations)
        if any(d <= 0 for d in self.pixel_dilations):
            raise ValueError(
                f"fusion head pixel_dilations must be positive, got {list(self.pixel_dilations)}"
            )
        self.context_dilations = tuple(int(d) for d in context_dilations)
        if any(d <= 0 for d in self.context_dilations):
            raise ValueError(
                f"fusion head context_dilations must be positive, got {list(self.context_dilations)}"
            )
        # Without dilations the keys (stem.0, stem.1) are those of heads exported before them.
        self.stem = nn.Sequential(
            _conv_bn_relu(len(self.mean) + 1, pixel_channels),
            _conv_bn_relu(pixel_channels, pixel_channels),
            *(_DilatedResidual(pixel_channels, d) for d in self.pixel_dilations),
        )
        self.context = nn.Sequential(
            _conv_bn_relu(in_dim, context_channels, 1),
            _conv_bn_relu(context_channels, context_channels),
            _conv_bn_relu(context_channels, context_out, 1),
        )
        # Apart from ``context`` so that the keys context.0-2 stay those of heads exported before them.
        self.context_wide = nn.Sequential(
            *(_DilatedResidual(context_channels, d) for d in self.context_dilations)
        )
        # down[i] makes level i + 1 (1/2^(i+1) resolution); up[i] decodes it, reading what
        # comes from the level below (the context for the deepest one).
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        above = pixel_channels
        for channels in self.levels:
            self.down.append(
                nn.Sequential(_conv_bn_relu(above, channels, 3, stride=2), _conv_bn_relu(channels, channels))
            )
            above = channels
        for i, channels in enumerate(self.levels):
            below = self.levels[i + 1] if i + 1 < len(self.levels) else context_out
            self.up.append(_conv_bn_relu(channels + below, channels))
        first = self.levels[0] if self.levels else context_out
        self.fuse = nn.Sequential(
            _conv_bn_relu(pixel_channels + first, fuse_channels),
            _conv_bn_relu(fuse_channels, fuse_channels),
        )
        self.classifier = nn.Conv2d(fuse_channels, num_classes, 1)

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "num_classes": self.num_classes,
            "pixel_channels": self.pixel_channels,
            "context_channels": self.context_channels,
            "context_out": self.context_out,
            "fuse_channels": self.fuse_channels,
            "feature_layers": list(self.feature_layers),
            "mean": self.mean,
            "std": self.std,
            "levels": list(self.levels),
            "pixel_dilations": list(self.pixel_dilations),
            "context_dilations": list(self.context_dilations),
        }

    def _ndvi(self, pixels: torch.Tensor) -> torch.Tensor:
        red = pixels[:, 0:1] * self.std[0] + self.mean[0]  # (B, 1, H, W) digital numbers
        nir = pixels[:, 3:4] * self.std[3] + self.mean[3]
        return (nir - red) / (nir + red + 1.0)  # (B, 1, H, W) in [-1, 1]

    def context_features(self, grid: torch.Tensor) -> torch.Tensor:
        """The context branch on the patch grid ``(B, in_dim, h, w)`` -> ``(B, context_out, h, w)``."""
        conv1x1_in, conv3x3, conv1x1_out = self.context
        return conv1x1_out(self.context_wide(conv3x3(conv1x1_in(grid))))

    def forward(self, grid: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        if pixels is None:
            raise ValueError("the fusion head needs the normalised pixels beside the encoder grid")
        x = self.stem(torch.cat((pixels, self._ndvi(pixels)), dim=1))  # (B, pc, H, W)
        skips = [x]  # level i: (B, c_i, H / 2^i, W / 2^i)
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self.context_features(grid)  # (B, co, h, w)
        y = F.interpolate(y, size=skips[-1].shape[-2:], mode="bilinear", align_corners=False)
        for i in range(len(self.levels) - 1, -1, -1):
            y = self.up[i](torch.cat((skips[i + 1], y), dim=1))  # (B, c_{i+1}, ...)
            y = F.interpolate(y, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat((x, y), dim=1)))  # (B, K, H, W)


#: Heads by ``kind`` (the ``model.head`` config key and the export's ``head_config.kind``).
HEADS: dict[str, type[nn.Module]] = {"seed": ChesapeakeHead, "fusion": FusionHead}


def build_head(config: dict) -> nn.Module:
    """A head from its ``config()``; a config without ``kind`` is a seed head (older exports)."""
    options = dict(config)
    kind = options.pop("kind", "seed")
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of {sorted(HEADS)}")
    return HEADS[kind](**options)


class ClaySegmenter(nn.Module):
    """Clay encoder + a segmentation head: normalised NAIP chips in, per-pixel logits out.

    The band wavelengths and GSD are fixed per model (NAIP by default) and kept as
    non-persistent buffers, so the state dict holds only ``encoder.*`` and ``head.*``.

    Args:
        encoder: a :class:`ClayEncoder` (dynamic or folded patch embedding), or None for a
            head-only model trained on cached features (``forward_from_features`` only).
        head: a head of :data:`HEADS` whose ``in_dim`` equals the width of the grids it reads
            (the encoder width times the number of ``feature_layers``).
        wavelengths: band wavelengths in µm; None means NAIP (red, green, blue, nir).
        gsd: ground sample distance in metres; None means NAIP's 1.0 m.
    """

    def __init__(
        self,
        encoder: ClayEncoder | None,
        head: nn.Module,
        wavelengths: Sequence[float] | None = None,
        gsd: float | None = None,
    ) -> None:
        super().__init__()
        if encoder is not None:
            expected = encoder.dim * len(head.feature_layers)
            if head.in_dim != expected:
                raise ValueError(
                    f"head expects {head.in_dim}-channel features but the encoder emits {expected} "
                    f"({len(head.feature_layers)} layer(s) of {encoder.dim})"
                )
        if wavelengths is None or gsd is None:
            from core.naip import NAIP_GSD_M, NAIP_WAVELENGTHS_UM

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

    @property
    def needs_pixels(self) -> bool:
        """Whether the head reads the normalised pixels beside the encoder grid."""
        return bool(self.head.needs_pixels)

    @property
    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    def forward_features(
        self, pixels: torch.Tensor, time: torch.Tensor | None = None, latlon: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The head's grid input: normed patch tokens of the head's ``feature_layers``, as a grid
        (B, dim * layers, H/p, W/p), layers concatenated in order."""
        if self.encoder is None:
            raise ValueError(
                "this segmenter has no encoder (head trained on cached features); attach one first"
            )
        if pixels.shape[1] != self.wavelengths.numel():
            raise ValueError(
                f"expected {self.wavelengths.numel()} bands (wavelengths {self.wavelengths.tolist()} µm), "
                f"got {pixels.shape[1]}"
            )
        depth = len(self.encoder.transformer.layers)
        blocks = [i % depth for i in self.head.feature_layers]
        grids = self.encoder.forward_intermediates(
            pixels,
            self.wavelengths,
            self.gsd,
            time,
            latlon,
            indices=blocks,
            output_fmt="NCHW",
            norm=True,
            intermediates_only=True,
        )
        # forward_intermediates yields each block once, in depth order; keep the head's order.
        by_block = dict(zip(sorted(set(blocks)), grids, strict=True))
        grids = [by_block[b] for b in blocks]
        return grids[0] if len(grids) == 1 else torch.cat(grids, dim=1)  # (B, dim*n, h, w)

    def forward_from_features(
        self, features: torch.Tensor, pixels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits from cached encoder features: a grid (B, dim, h, w) or tokens (B, [1+]L, dim).

        Token input must come from a square chip; with 1+L tokens the first (CLS) is dropped.
        A head that ``needs_pixels`` also takes the normalised chips (B, C, H, W).
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
        dtype = self.head_dtype
        if self.needs_pixels:
            if pixels is None:
                raise ValueError(f"the {self.head.kind} head needs the normalised pixels beside the features")
            return self.head(features.to(dtype), pixels.to(dtype))  # (B, K, H, W)
        return self.head(features.to(dtype))  # (B, K, H, W)

    def forward(
        self, pixels: torch.Tensor, time: torch.Tensor | None = None, latlon: torch.Tensor | None = None
    ) -> torch.Tensor:
        grid = self.forward_features(pixels, time, latlon)
        return self.head(grid, pixels) if self.needs_pixels else self.head(grid)  # (B, K, H, W)

    def predict_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) for normalised float32 chips (B, C, H, W); see ``naip.normalize``."""
        if not pixels.is_floating_point():
            raise ValueError(
                f"predict_logits takes normalised float chips, got {pixels.dtype}; "
                "apply core.naip.normalize to uint8 NAIP first"
            )
        return self(pixels.to(self.head_dtype))

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
    head: str = DEFAULT_HEAD,
    head_options: dict | None = None,
) -> ClaySegmenter:
    """A randomly initialised :class:`ClaySegmenter`; load weights with ``checkpoint.py``.

    Args:
        preset: Clay preset or config.
        num_classes: output classes.
        head_width: the seed head's conv width (ignored by the fusion head).
        wavelengths, gsd: the bands and GSD (NAIP by default).
        device: ``"meta"`` builds the encoder and head without storage (to be filled by
            ``load_state_dict(..., assign=True)``); the small wavelength/GSD buffers stay on the CPU.
        head: ``seed`` or ``fusion`` (see :data:`HEADS`).
        head_options: extra constructor arguments of the fusion head (``pixel_channels``,
            ``context_channels``, ``context_out``, ``fuse_channels``, ``feature_layers``,
            ``levels``, ``pixel_dilations``, ``context_dilations``).
    """
    encoder = build_encoder(preset, device=device)
    with torch.device(device or "cpu"):
        head_module = make_head(head, encoder.dim, encoder.patch_size, num_classes, head_width, head_options)
    return ClaySegmenter(encoder, head_module, wavelengths, gsd)


def make_head(
    kind: str,
    encoder_dim: int,
    patch_size: int = 8,
    num_classes: int = 7,
    head_width: int = 512,
    options: dict | None = None,
) -> nn.Module:
    """A fresh head of ``kind`` for an encoder of width ``encoder_dim``."""
    options = dict(options or {})
    if kind == "seed":
        if options:
            raise ValueError(f"the seed head takes no head options, got {sorted(options)}")
        return ChesapeakeHead(encoder_dim, num_classes, head_width, upscale=patch_size)
    if kind == "fusion":
        layers = tuple(options.pop("feature_layers", (-1,)))
        return FusionHead(encoder_dim * len(layers), num_classes, feature_layers=layers, **options)
    raise ValueError(f"unknown head {kind!r}; choose one of {sorted(HEADS)}")


def head_spec(model_cfg: Any) -> dict[str, Any]:
    """``head`` and ``head_options`` keyword arguments from the ``model`` config group.

    ``model.head`` names the head (no key: ``seed``); the fusion head's options come from
    ``model.fusion``. Works on plain mappings and OmegaConf configs alike.
    """
    kind = str(model_cfg.get("head") or "seed")
    if kind not in HEADS:
        raise ValueError(f"model.head={kind!r}: choose one of {sorted(HEADS)}")
    options = None
    if kind == "fusion" and model_cfg.get("fusion") is not None:
        raw = model_cfg.get("fusion")
        try:
            from omegaconf import OmegaConf

            raw = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
        except ImportError:  # pragma: no cover - the Lambda image has no OmegaConf, nor needs it
            pass
        options = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(raw).items()}
    return {"head": kind, "head_options": options}
