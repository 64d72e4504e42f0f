"""Window → Cloud-Optimized GeoTIFF, in two streamed steps with explicit options (rio-cogeo style).

1. ``stage_window`` copies one window of the source (a /vsiaz/ path read in place) into a local,
   uncompressed, 512-px tiled GeoTIFF, one 512-row strip at a time. Reading the source once,
   in strips that follow its block layout, is what keeps remote reads fast: GDAL's own
   whole-dataset copies walk a remote tiled source in scanline chunks and re-fetch it many times.
2. ``write_cog`` runs rio-cogeo's ``cog_translate`` on the staged file with ``in_memory=False``
   (its intermediate file goes to disk, never to a MemoryFile holding the raster), explicit GDAL
   threads, the predictor for the data type, nodata / internal mask / colour table carried over,
   and overviews down to one block.

GDAL's block cache (GDAL_CACHEMAX) is sized explicitly (``configure_gdal_block_cache``), so memory
stays near the worker baseline plus that cache whatever the window size
(services/raster/tiling.py budgets the rest).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.env import set_gdal_config
from rasterio.io import DatasetReader
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from services.raster.inspect import RasterMetadata, has_dataset_mask
from services.raster.tiling import COG_BLOCK_SIZE, TileWindow

logger = logging.getLogger(__name__)

Compression = Literal["deflate", "zstd", "lzw", "jpeg", "webp"]
OverviewResampling = Literal[
    "nearest", "mode", "average", "bilinear", "cubic", "cubic_spline", "lanczos", "gauss", "rms"
]
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
LOSSY_COMPRESSIONS = frozenset({"jpeg", "webp"})


@dataclass(frozen=True)
class CogOptions:
    compression: Compression = "deflate"
    overview_resampling: OverviewResampling = "average"
    threads: int = 2  # GDAL threads for compression, decoding and overviews
    deflate_level: int = 6
    zstd_level: int = 9
    jpeg_quality: int = 85
    webp_level: int = 85


def _last_band_is_alpha(metadata: RasterMetadata) -> bool:
    return bool(metadata.bands) and metadata.bands[-1].color_interp == ColorInterp.alpha.name


def compression_problem(compression: Compression, metadata: RasterMetadata) -> str | None:
    """Why ``compression`` cannot encode this raster, or None when it can."""
    if compression not in LOSSY_COMPRESSIONS:
        return None
    shape = f"the source is {metadata.dtype} with {metadata.count} band(s)"
    if metadata.colormap is not None:
        return f"compression {compression!r} is lossy and would corrupt the palette indices of a paletted raster"
    if compression == "jpeg":
        if metadata.dtype == "uint8" and (
            metadata.count in (1, 3) or (metadata.count == 4 and _last_band_is_alpha(metadata))
        ):
            return None
        return f"compression 'jpeg' needs uint8 data with 1 or 3 bands (or RGB + alpha); {shape}"
    if metadata.dtype == "uint8" and metadata.count in (3, 4):
        return None
    return f"compression 'webp' needs uint8 data with 3 (RGB) or 4 (RGBA) bands; {shape}"


def predictor_for(compression: Compression, dtype: str) -> int | None:
    """TIFF predictor: horizontal differencing (2) for integers, floating point (3) for floats."""
    if compression in LOSSY_COMPRESSIONS:
        return None
    return 3 if dtype.startswith("float") else 2


def default_overview_resampling(metadata: RasterMetadata) -> OverviewResampling:
    """Mode keeps categories (and palette indices) intact; average suits continuous data."""
    return "mode" if metadata.data_kind == "categorical" else "average"


def gdal_config(options: CogOptions) -> dict[str, Any]:
    """GDAL configuration for conversion (combine with BlobStorage.gdal_options for /vsiaz/)."""
    return {
        "GDAL_NUM_THREADS": str(options.threads),
        "GDAL_TIFF_INTERNAL_MASK": "YES",
        "GDAL_TIFF_OVR_BLOCKSIZE": str(COG_BLOCK_SIZE),
    }


def configure_gdal_block_cache(cache_bytes: int) -> None:
    """Size GDAL's block cache (GDAL_CACHEMAX), which is one per process, not per thread or Env.

    Left alone it is 5% of the machine's RAM, fixed at first use. Passing GDAL_CACHEMAX to
    ``rasterio.Env`` instead would set it for the whole process and restore the old value on exit,
    so one thread leaving its Env would resize the cache under another thread's conversion.
    """
    set_gdal_config("GDAL_CACHEMAX", int(cache_bytes))  # bytes (rasterio calls GDALSetCacheMax64)


def creation_profile(options: CogOptions, dtype: str) -> dict[str, Any]:
    """rio-cogeo's profile for the compression, with the predictor, level and threads made explicit."""
    profile: dict[str, Any] = dict(cog_profiles.get(options.compression))
    profile.update(blockxsize=COG_BLOCK_SIZE, blockysize=COG_BLOCK_SIZE, num_threads=str(options.threads))
    predictor = predictor_for(options.compression, dtype)
    if predictor is not None:
        profile["predictor"] = predictor
    if options.compression == "deflate":
        profile["zlevel"] = options.deflate_level
    elif options.compression == "zstd":
        profile["zstd_level"] = options.zstd_level
    elif options.compression == "jpeg":
        profile["jpeg_quality"] = options.jpeg_quality
    elif options.compression == "webp":
        profile["webp_level"] = options.webp_level
    profile["bigtiff"] = "IF_SAFER"
    return profile


def stage_window(
    source: DatasetReader, window: TileWindow, destination: Path, *, crs: CRS, strip_rows: int = COG_BLOCK_SIZE
) -> None:
    """Copy ``window`` of ``source`` to an uncompressed tiled GeoTIFF at ``destination``, strip by strip.

    Carries the CRS (the file's or the assumed one), the window's transform, nodata, per-dataset
    mask, colour interpretation, colour table, band descriptions, scales, offsets, units and the
    dataset tags (TIFF DateTime among them).
    """
    source_window = Window(window.col_off, window.row_off, window.width, window.height)
    profile = {
        "driver": "GTiff",
        "width": window.width,
        "height": window.height,
        "count": source.count,
        "dtype": source.dtypes[0],
        "crs": crs,
        "transform": source.window_transform(source_window),
        "nodata": source.nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK_SIZE,
        "blockysize": COG_BLOCK_SIZE,
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }
    copy_mask = source.nodata is None and has_dataset_mask(source)
    with rasterio.open(destination, "w", **profile) as staged:
        staged.colorinterp = source.colorinterp
        if source.colorinterp[0] is ColorInterp.palette:
            try:
                staged.write_colormap(1, source.colormap(1))
            except ValueError:
                logger.warning("source declares a palette but has no colour table")
        for index in source.indexes:
            if source.descriptions[index - 1]:
                staged.set_band_description(index, source.descriptions[index - 1])
            if source.units[index - 1]:
                staged.set_band_unit(index, source.units[index - 1])
        staged.scales = source.scales
        staged.offsets = source.offsets
        staged.update_tags(**source.tags())
        for row in range(0, window.height, strip_rows):
            rows = min(strip_rows, window.height - row)
            read_window = Window(window.col_off, window.row_off + row, window.width, rows)
            write_window = Window(0, row, window.width, rows)
            staged.write(source.read(window=read_window), window=write_window)
            if copy_mask:
                staged.write_mask(source.dataset_mask(window=read_window), window=write_window)


def write_cog(staged: Path, destination: Path, options: CogOptions, *, dtype: str) -> None:
    """Convert the staged window to a COG with rio-cogeo (intermediate file on disk)."""
    with warnings.catch_warnings():
        # rio-cogeo announces expected conversions (nodata → mask for JPEG) as warnings.
        warnings.simplefilter("ignore", UserWarning)
        cog_translate(
            str(staged),
            str(destination),
            creation_profile(options, dtype),
            in_memory=False,
            overview_resampling=options.overview_resampling,
            forward_band_tags=True,
            quiet=True,
            config=gdal_config(options),
        )


def cog_problems(path: Path) -> list[str]:
    """rio-cogeo's validation errors for ``path``; empty when it is a valid COG."""
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    return [] if valid else (errors or ["not a valid COG"])
