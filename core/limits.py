"""Input limits, in a module that imports nothing: the Lambda settings read them without
loading the raster stack (importing rasterio and boto3 is a large part of a cold start)."""

from __future__ import annotations

#: Default size limit: a full NAIP quarter quad is ~6000x7500 = 45 Mpx, so 100 Mpx leaves room
#: while still refusing mosaics that would not fit a Lambda's memory.
DEFAULT_MAX_PIXELS: int = 100_000_000
