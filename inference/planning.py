"""What a run makes of its inputs, shared by the process step and the dry run: which inputs lie
outside the input prefix, a scene's identity, its ledger metadata, the run's block side and
each scene's blocks. Nothing here writes; the process step records what these functions decide,
the dry run only reports it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core import registry, storage
from inference import retry
from inference.blocks import BlockSizing, Throughput, block_sizing
from inference.errors import ChainError
from inference.settings import ChainSettings

if TYPE_CHECKING:
    from inference.predict import Block, TilingPlan

#: Quarantine reason of an input that resolves outside the input prefix (never read).
OUTSIDE_INPUT_ROOT = "outside_input_root"


def outside_input_root(settings: ChainSettings, uri: str) -> str | None:
    """Where a ``file://`` input really is, when a symlink takes it outside the input prefix."""
    root, local = storage.local_path(settings.input_uri), storage.local_path(uri)
    if root is None or local is None:
        return None
    target = local.resolve()
    return None if target.is_relative_to(root.resolve()) else str(target)


def scene_identity(uri: str) -> tuple[str, int]:
    """A scene's identity, the sha256 of its bytes, and their size: one image at two keys is one scene."""
    return storage.sha256_of(uri)


def raster_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """Ledger fields from ``validate_naip``'s metadata: bounds, WGS84 bbox and area."""
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    crs = CRS.from_user_input(info["crs"])
    minx, miny, maxx, maxy = (float(b) for b in info["bounds"])
    area_km2 = None
    if crs.is_projected:
        factor = float(crs.linear_units_factor[1])
        area_km2 = abs(maxx - minx) * abs(maxy - miny) * factor * factor / 1e6
    try:
        bbox = [float(v) for v in transform_bounds(crs, "EPSG:4326", minx, miny, maxx, maxy)]
    except Exception:  # a CRS PROJ cannot transform: keep the scene, skip the footprint
        bbox = None
    return {
        "width": int(info["width"]),
        "height": int(info["height"]),
        "crs": crs.to_string(),
        "bounds": [minx, miny, maxx, maxy],
        "bbox_wgs84": bbox,
        "area_km2": area_km2,
    }


def run_block_sizing(settings: ChainSettings, pointer: dict[str, Any]) -> BlockSizing:
    """The block side for this run: configured, or from the champion's measured throughput."""
    throughput = None
    if settings.block_chips is None:
        manifest = retry.call(
            lambda: registry.get_version(settings.registry_uri, settings.model_name, str(pointer["version"])),
            "read the champion's metrics",
        )
        throughput = Throughput.from_metrics(manifest.get("metrics"))
    try:
        return block_sizing(settings, throughput, settings.infer_memory_mb)
    except ValueError as exc:
        raise ChainError(f"champion {pointer['version']}: {exc}") from exc


def scene_blocks(
    settings: ChainSettings, height: int, width: int, block_chips: int
) -> tuple[TilingPlan, list[Block]]:
    """The chip plan of a ``height x width`` scene and the blocks of ``block_chips`` a side it splits into."""
    from inference.predict import PATCH_SIZE, plan_blocks, plan_tiling

    plan = plan_tiling(height, width, settings.chip_size, settings.overlap, PATCH_SIZE)
    return plan, plan_blocks(plan, block_chips)


def block_chip_counts(settings: ChainSettings, height: int, width: int, block_chips: int) -> list[int]:
    """Chips (halo included) of each block the process step plans for a ``height x width`` scene."""
    plan, blocks = scene_blocks(settings, height, width, block_chips)
    return [b.chips(plan) for b in blocks]
