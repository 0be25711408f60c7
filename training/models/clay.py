"""Clay v1.5 encoder in plain PyTorch.

A pre-norm ViT over 8x8 patches whose patch embedding is generated from the bands' wavelengths
(DOFA-style), plus fixed sin/cos position encodings scaled by the ground sample distance and
8 metadata channels (week, hour, lat, lon). Parameter names and shapes match the official
``clay-v1.5.ckpt`` encoder (``model.encoder.*`` with the prefix stripped), so its weights load
by name; see ``checkpoint.py``.

Read top to bottom: encoding helpers -> patch embeddings -> blocks -> encoder -> factory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PRESETS",
    "ClayConfig",
    "ClayEncoder",
    "DynamicPatchEmbed",
    "FoldedPatchEmbed",
    "build_encoder",
    "count_parameters",
    "encode_time_latlon",
    "posemb_sincos_1d",
    "posemb_sincos_2d_gsd",
]

#: Channels of the token reserved for (week sin/cos, hour sin/cos, lat sin/cos, lon sin/cos).
META_CHANNELS = 8


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClayConfig:
    """Hyperparameters of a Clay encoder.

    Args:
        dim: token width.
        depth: number of transformer blocks.
        heads: attention heads per block.
        dim_head: width of one head (heads * dim_head is the attention inner width).
        mlp_ratio: feed-forward hidden width as a multiple of ``dim``.
        patch_size: side of the square patch in pixels (Clay v1.5 uses 8).
        wave_dim: width of the wavelength code and of the weight-generator transformer.
        n_weight_tokens: learned latent tokens that the weight generator attends over.
        wg_heads: attention heads of the weight-generator transformer layer.
        wg_ffn: feed-forward width of the weight-generator transformer layer.
        wg_layers: number of weight-generator transformer layers.
        kernel_scale: factor applied to the generated patch kernel (0.02 in Clay).
        preset: name of the preset this config came from, if any (metadata only).
    """

    dim: int
    depth: int
    heads: int
    dim_head: int
    mlp_ratio: float
    patch_size: int = 8
    wave_dim: int = 128
    n_weight_tokens: int = 128
    wg_heads: int = 4
    wg_ffn: int = 2048
    wg_layers: int = 1
    kernel_scale: float = 0.02
    preset: str | None = None

    def __post_init__(self) -> None:
        if (self.dim - META_CHANNELS) % 4 != 0 or self.dim <= META_CHANNELS:
            raise ValueError(
                f"dim={self.dim}: dim - {META_CHANNELS} must be a positive multiple of 4 for the "
                "2-D sin/cos position encoding"
            )
        if self.wave_dim % 2 != 0:
            raise ValueError(f"wave_dim={self.wave_dim} must be even for the sin/cos wavelength code")
        if min(self.depth, self.heads, self.dim_head, self.patch_size) < 1:
            raise ValueError(f"depth, heads, dim_head and patch_size must be >= 1, got {self}")

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ClayConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ClayConfig fields {sorted(unknown)}")
        return cls(**data)


#: Presets of the public Clay code. ``large`` is Clay v1.5 (~311M encoder parameters).
PRESETS: dict[str, ClayConfig] = {
    "tiny": ClayConfig(dim=192, depth=6, heads=4, dim_head=48, mlp_ratio=2.0, preset="tiny"),
    "small": ClayConfig(dim=384, depth=6, heads=6, dim_head=64, mlp_ratio=2.0, preset="small"),
    "base": ClayConfig(dim=768, depth=12, heads=12, dim_head=64, mlp_ratio=4.0, preset="base"),
    "large": ClayConfig(dim=1024, depth=24, heads=16, dim_head=64, mlp_ratio=4.0, preset="large"),
}


def resolve_config(config: str | ClayConfig | dict) -> ClayConfig:
    """A :class:`ClayConfig` from a preset name, a config or its ``to_dict()`` form."""
    if isinstance(config, ClayConfig):
        return config
    if isinstance(config, dict):
        return ClayConfig.from_dict(config)
    if config not in PRESETS:
        raise ValueError(f"unknown Clay preset {config!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[config]


# --------------------------------------------------------------------------------------------
# Encodings
# --------------------------------------------------------------------------------------------


def posemb_sincos_1d(values: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sin/cos code of scalars (here: wavelengths in µm). ``values`` (N,) -> (N, dim)."""
    half = dim // 2
    omega = temperature ** -(torch.arange(half, device=values.device, dtype=torch.float32) / (half - 1))
    angles = values.float()[:, None] * omega[None, :]  # (N, dim/2)
    return torch.cat((angles.sin(), angles.cos()), dim=1)  # (N, dim)


def posemb_sincos_2d_gsd(
    h: int,
    w: int,
    dim: int,
    gsd: float | torch.Tensor = 1.0,
    temperature: float = 10000.0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Fixed 2-D sin/cos position code of an h x w patch grid, frequencies scaled by GSD (m).

    Clay's convention: frequency k of the dim/4 per axis is ``gsd / temperature**(2 k' / dim)``
    with ``k' = k / (dim/4 - 1)``. Returns (h*w, dim), row-major over the grid.
    """
    quarter = dim // 4
    k = torch.arange(quarter, device=device, dtype=torch.float32) / (quarter - 1)
    gsd_t = torch.as_tensor(gsd, dtype=torch.float32, device=device)
    omega = temperature ** (-2.0 * k / dim) * gsd_t  # (dim/4,)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    x = xs.reshape(-1, 1) * omega[None, :]  # (h*w, dim/4)
    y = ys.reshape(-1, 1) * omega[None, :]  # (h*w, dim/4)
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)  # (h*w, dim)


def encode_time_latlon(
    week: torch.Tensor, hour: torch.Tensor, lat_deg: torch.Tensor, lon_deg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clay's metadata channels from raw values: week of year (1..52), hour (0..23), degrees.

    Returns ``time`` (B, 4) = (week sin, week cos, hour sin, hour cos) and ``latlon`` (B, 4) =
    (lat sin, lat cos, lon sin, lon cos). Passing zeros instead means "unknown".
    """
    week_a = week.float() * 2 * math.pi / 52
    hour_a = hour.float() * 2 * math.pi / 24
    lat, lon = torch.deg2rad(lat_deg.float()), torch.deg2rad(lon_deg.float())
    time = torch.stack((week_a.sin(), week_a.cos(), hour_a.sin(), hour_a.cos()), dim=-1)  # (B, 4)
    latlon = torch.stack((lat.sin(), lat.cos(), lon.sin(), lon.cos()), dim=-1)  # (B, 4)
    return time, latlon


def small_normal(*shape: int, std: float = 0.02) -> torch.Tensor:
    """``N(0, std²)`` values of ``shape`` on the current device; uninitialised on ``meta``.

    Random ops on meta tensors run torch's Python meta kernels, whose first use imports sympy
    and torch._dynamo (~75 MB of RSS): more than loading the large encoder can spare under its
    1.5 GB target, for values that ``load_state_dict(assign=True)`` replaces anyway.
    """
    values = torch.empty(*shape)
    return values if values.is_meta else values.normal_(0.0, std)


def _as_wavelengths(wavelengths: torch.Tensor | Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(wavelengths, dtype=torch.float32, device=device).reshape(-1)


# --------------------------------------------------------------------------------------------
# Patch embeddings
# --------------------------------------------------------------------------------------------


class WaveCodeMLP(nn.Module):
    """Residual two-layer GELU MLP over the wavelength code (``fclayer`` in the checkpoint).

    Args:
        dim: width of the wavelength code.
    """

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, dim)
        self.l2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))  # (C, wave_dim)


class KernelGenerator(nn.Module):
    """Transformer over [weight tokens, band tokens, bias token] emitting conv kernels.

    Args:
        wave_dim: token width.
        out_dim: kernel values per band (patch * patch * dim).
        embed_dim: encoder width (number of conv biases).
        n_weight_tokens: learned latent tokens prepended to the band tokens.
        heads: attention heads of the transformer layer.
        ffn_dim: feed-forward width of the transformer layer.
        layers: number of transformer layers.
    """

    def __init__(
        self,
        wave_dim: int = 128,
        out_dim: int = 8 * 8 * 1024,
        embed_dim: int = 1024,
        n_weight_tokens: int = 128,
        heads: int = 4,
        ffn_dim: int = 2048,
        layers: int = 1,
    ) -> None:
        super().__init__()
        self.n_weight_tokens = n_weight_tokens
        layer = nn.TransformerEncoderLayer(
            d_model=wave_dim,
            nhead=heads,
            dim_feedforward=ffn_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        # enable_nested_tensor only matters for padded batches; we never pass a mask.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(wave_dim, out_dim)
        self.fc_bias = nn.Linear(wave_dim, embed_dim)
        self.weight_tokens = nn.Parameter(small_normal(n_weight_tokens, wave_dim))
        self.bias_token = nn.Parameter(small_normal(1, wave_dim))

    def forward(self, band_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat((self.weight_tokens, band_codes, self.bias_token), dim=0)  # (T+C+1, wave_dim)
        out = self.encoder(tokens.unsqueeze(0)).squeeze(0)  # (T+C+1, wave_dim)
        bands = slice(self.n_weight_tokens, -1)
        weight = self.fc_weight(out[bands] + tokens[bands])  # (C, dim*p*p)
        bias = self.fc_bias(out[-1])  # (dim,)
        return weight, bias


class DynamicPatchEmbed(nn.Module):
    """Wavelength-conditioned patch embedding: a stride-``patch_size`` conv whose kernel is
    generated from the bands' wavelengths, so any band set maps to the same token space.

    Args:
        dim: encoder width (conv output channels).
        patch_size: conv kernel size and stride.
        wave_dim: width of the wavelength code.
        n_weight_tokens: learned latent tokens of the kernel generator.
        wg_heads: heads of the kernel generator's transformer layer.
        wg_ffn: feed-forward width of the kernel generator's transformer layer.
        wg_layers: layers of the kernel generator's transformer.
        kernel_scale: factor applied to the generated kernel.
    """

    def __init__(
        self,
        dim: int = 1024,
        patch_size: int = 8,
        wave_dim: int = 128,
        n_weight_tokens: int = 128,
        wg_heads: int = 4,
        wg_ffn: int = 2048,
        wg_layers: int = 1,
        kernel_scale: float = 0.02,
    ) -> None:
        super().__init__()
        self.dim, self.patch_size, self.wave_dim = dim, patch_size, wave_dim
        self.kernel_scale = kernel_scale
        self.weight_generator = KernelGenerator(
            wave_dim, patch_size * patch_size * dim, dim, n_weight_tokens, wg_heads, wg_ffn, wg_layers
        )
        self.fclayer = WaveCodeMLP(wave_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def kernel(self, wavelengths: torch.Tensor | Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """The conv weight (dim, C, p, p) and bias (dim,) generated for these wavelengths (µm)."""
        waves = _as_wavelengths(wavelengths, self.fclayer.l1.weight.device)  # (C,)
        codes = self.fclayer(posemb_sincos_1d(waves, self.wave_dim))  # (C, wave_dim)
        weight, bias = self.weight_generator(codes)  # (C, dim*p*p), (dim,)
        p = self.patch_size
        weight = weight.reshape(-1, self.dim, p, p).transpose(0, 1)  # (dim, C, p, p)
        return weight * self.kernel_scale, bias

    def forward(
        self, pixels: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> torch.Tensor:
        if wavelengths is None:
            raise ValueError("the dynamic patch embedding needs the bands' wavelengths (µm)")
        weight, bias = self.kernel(wavelengths)
        if weight.shape[1] != pixels.shape[1]:
            raise ValueError(f"got {pixels.shape[1]} bands but {weight.shape[1]} wavelengths")
        x = F.conv2d(pixels, weight.to(pixels.dtype), bias.to(pixels.dtype), stride=self.patch_size)
        return x.flatten(2).transpose(1, 2)  # (B, L, dim)

    @torch.no_grad()
    def fold(self, wavelengths: torch.Tensor | Sequence[float]) -> FoldedPatchEmbed:
        """A plain conv equal to this embedding for fixed ``wavelengths`` (computed once, fp32)."""
        waves = _as_wavelengths(wavelengths, self.fclayer.l1.weight.device)
        weight, bias = self.kernel(waves)
        folded = FoldedPatchEmbed(len(waves), self.dim, self.patch_size, waves.tolist())
        folded.to(weight.device)
        folded.proj.weight.copy_(weight)
        folded.proj.bias.copy_(bias)
        return folded


class FoldedPatchEmbed(nn.Module):
    """The dynamic embedding frozen for one band set: an ordinary ``Conv2d(C, dim, p, stride=p)``.

    Args:
        in_chans: number of bands.
        dim: encoder width.
        patch_size: kernel size and stride.
        wavelengths: the wavelengths (µm) the kernel was generated for, kept as a buffer so a
            call with other bands fails instead of silently producing garbage.
    """

    def __init__(
        self,
        in_chans: int = 4,
        dim: int = 1024,
        patch_size: int = 8,
        wavelengths: Sequence[float] = (0.65, 0.56, 0.48, 0.842),
    ) -> None:
        super().__init__()
        if len(wavelengths) != in_chans:
            raise ValueError(f"{len(wavelengths)} wavelengths given for {in_chans} input bands")
        self.dim, self.patch_size = dim, patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.register_buffer("wavelengths", torch.tensor(list(wavelengths), dtype=torch.float32))

    def forward(
        self, pixels: torch.Tensor, wavelengths: torch.Tensor | Sequence[float] | None = None
    ) -> torch.Tensor:
        if wavelengths is not None:
            waves = _as_wavelengths(wavelengths, self.wavelengths.device)
            if waves.shape != self.wavelengths.shape or not torch.allclose(waves, self.wavelengths):
                raise ValueError(
                    f"this patch embedding was folded for wavelengths {self.wavelengths.tolist()} µm, "
                    f"got {waves.tolist()}; use the dynamic encoder for other bands"
                )
        return self.proj(pixels).flatten(2).transpose(1, 2)  # (B, L, dim)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with fused SDPA; no biases on the projections.

    Args:
        dim: token width.
        heads: number of heads.
        dim_head: width of one head.
    """

    def __init__(self, dim: int = 1024, heads: int = 16, dim_head: int = 64) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.to_qkv(self.norm(x))  # (B, N, 3*inner)
        qkv = qkv.reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hs)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nh, N, hs)
        return self.to_out(out.transpose(1, 2).reshape(B, N, -1))  # (B, N, dim)


class FeedForward(nn.Module):
    """Pre-norm GELU MLP (``net.0`` LayerNorm, ``net.1``/``net.3`` Linear, as in the checkpoint).

    Args:
        dim: token width.
        hidden_dim: hidden width.
    """

    def __init__(self, dim: int = 1024, hidden_dim: int = 4096) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, N, dim)


class Block(nn.ModuleList):
    """One pre-norm transformer block; children ``0`` (attention) and ``1`` (MLP) as in Clay.

    Args:
        dim: token width.
        heads: attention heads.
        dim_head: width of one head.
        mlp_dim: feed-forward hidden width.
    """

    def __init__(self, dim: int = 1024, heads: int = 16, dim_head: int = 64, mlp_dim: int = 4096) -> None:
        super().__init__([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self[0](x)  # (B, N, dim)
        return x + self[1](x)  # (B, N, dim)


class Transformer(nn.Module):
    """A stack of blocks plus the final LayerNorm (applied by the encoder, see forward_*).

    Args:
        config: the encoder config.
    """

    def __init__(self, config: ClayConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(config.dim, config.heads, config.dim_head, config.mlp_dim) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


class ClayEncoder(nn.Module):
    """The Clay v1.5 encoder (no masking: every patch is encoded).

    Args:
        config: a :class:`ClayConfig`, a preset name (``tiny``, ``small``, ``base``, ``large``)
            or a config dict.
        folded_wavelengths: build a :class:`FoldedPatchEmbed` for these wavelengths (µm)
            instead of the dynamic embedding. Used to load compact exports without allocating
            the kernel generator; its weights must then come from a state dict.
    """

    def __init__(
        self, config: str | ClayConfig | dict = "large", folded_wavelengths: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.config = resolve_config(config)
        c = self.config
        self.dim, self.patch_size = c.dim, c.patch_size
        self.cls_token = nn.Parameter(small_normal(1, 1, c.dim))
        self.patch_embedding: DynamicPatchEmbed | FoldedPatchEmbed
        if folded_wavelengths is None:
            self.patch_embedding = DynamicPatchEmbed(
                c.dim,
                c.patch_size,
                c.wave_dim,
                c.n_weight_tokens,
                c.wg_heads,
                c.wg_ffn,
                c.wg_layers,
                c.kernel_scale,
            )
        else:
            self.patch_embedding = FoldedPatchEmbed(
                len(folded_wavelengths), c.dim, c.patch_size, folded_wavelengths
            )
        self.transformer = Transformer(c)

    @property
    def is_folded(self) -> bool:
        return isinstance(self.patch_embedding, FoldedPatchEmbed)

    def fold_patch_embedding(self, wavelengths: torch.Tensor | Sequence[float]) -> FoldedPatchEmbed:
        """The patch embedding folded into a plain conv for ``wavelengths`` (does not modify self).

        Install it with ``encoder.patch_embedding = encoder.fold_patch_embedding(waves)``.
        """
        if isinstance(self.patch_embedding, FoldedPatchEmbed):
            raise ValueError("the patch embedding is already folded")
        return self.patch_embedding.fold(wavelengths)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"chip size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def embed(
        self,
        pixels: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None,
        gsd: float | torch.Tensor = 1.0,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patch tokens + position/metadata encoding, with CLS prepended: (B, 1+L, dim)."""
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be (B, C, H, W), got shape {tuple(pixels.shape)}")
        B = pixels.shape[0]
        h, w = self.grid_size(pixels.shape[-2], pixels.shape[-1])
        x = self.patch_embedding(pixels, wavelengths)  # (B, L, dim)
        pos = posemb_sincos_2d_gsd(h, w, self.dim - META_CHANNELS, gsd, device=x.device)  # (L, dim-8)
        meta = torch.zeros(B, META_CHANNELS, device=x.device)  # (B, 8): zeros mean "unknown"
        if time is not None:
            meta[:, :4] = time.reshape(B, 4)
        if latlon is not None:
            meta[:, 4:] = latlon.reshape(B, 4)
        enc = torch.cat(
            (pos.expand(B, -1, -1), meta[:, None, :].expand(-1, h * w, -1)), dim=-1
        )  # (B, L, dim)
        x = x + enc.to(x.dtype)  # (B, L, dim)
        cls = self.cls_token.expand(B, -1, -1).to(x.dtype)  # (B, 1, dim)
        return torch.cat((cls, x), dim=1)  # (B, 1+L, dim)

    def forward_intermediates(
        self,
        pixels: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None,
        gsd: float | torch.Tensor = 1.0,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        output_fmt: Literal["NCHW", "NLC"] = "NCHW",
        norm: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder and collect block outputs, timm style.

        Args:
            pixels: normalised image (B, C, H, W), H and W multiples of the patch size.
            wavelengths: the C band wavelengths in µm.
            gsd: ground sample distance in metres.
            time: (B, 4) week/hour sin/cos, or None for unknown.
            latlon: (B, 4) lat/lon sin/cos, or None for unknown.
            indices: an int n takes the last n blocks; a sequence takes those block indices
                (negative counts from the end); None takes the last block.
            output_fmt: ``NCHW`` grids (B, dim, H/p, W/p) or ``NLC`` tokens (B, L, dim); the
                CLS token is dropped from intermediates either way.
            norm: apply the final LayerNorm to the intermediates (the last block with
                ``norm=True`` is exactly the encoder's output patch tokens).
            intermediates_only: return only the intermediates and skip unneeded blocks.

        Returns:
            ``intermediates`` if ``intermediates_only`` else ``(final_tokens, intermediates)``
            where ``final_tokens`` is the normed (B, 1+L, dim) output.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        depth = len(self.transformer.layers)
        if indices is None:
            take = [depth - 1]
        elif isinstance(indices, int):
            take = list(range(depth - indices, depth))
        else:
            take = [i % depth if -depth <= i < depth else i for i in indices]
        if any(not 0 <= i < depth for i in take):
            raise ValueError(f"block indices {indices} out of range for depth {depth}")
        h, w = self.grid_size(pixels.shape[-2], pixels.shape[-1])

        x = self.embed(pixels, wavelengths, gsd, time, latlon)  # (B, 1+L, dim)
        last = max(take) if intermediates_only else depth - 1
        intermediates: list[torch.Tensor] = []
        for i, block in enumerate(self.transformer.layers[: last + 1]):
            x = block(x)  # (B, 1+L, dim)
            if i in take:
                y = self.transformer.norm(x) if norm else x
                y = y[:, 1:]  # (B, L, dim)
                if output_fmt == "NCHW":
                    y = y.transpose(1, 2).reshape(y.shape[0], -1, h, w)  # (B, dim, h, w)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.transformer.norm(x), intermediates  # (B, 1+L, dim), [...]

    def forward_features(
        self,
        pixels: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None,
        gsd: float | torch.Tensor = 1.0,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normed output tokens (B, 1+L, dim), CLS first."""
        x = self.embed(pixels, wavelengths, gsd, time, latlon)  # (B, 1+L, dim)
        for block in self.transformer.layers:
            x = block(x)  # (B, 1+L, dim)
        return self.transformer.norm(x)  # (B, 1+L, dim)

    def forward(
        self,
        pixels: torch.Tensor,
        wavelengths: torch.Tensor | Sequence[float] | None,
        gsd: float | torch.Tensor = 1.0,
        time: torch.Tensor | None = None,
        latlon: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.forward_features(pixels, wavelengths, gsd, time, latlon)


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def build_encoder(
    preset: str | ClayConfig | dict = "large", device: torch.device | str | None = None, **overrides: object
) -> ClayEncoder:
    """A :class:`ClayEncoder` from a preset name or config, with optional field overrides.

    ``device="meta"`` builds it without allocating weights (for counting parameters or for
    ``load_state_dict(..., assign=True)``).
    """
    config = resolve_config(preset)
    if overrides:
        config = replace(config, **overrides)
    with torch.device(device or "cpu"):
        return ClayEncoder(config)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
