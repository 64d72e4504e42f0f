"""Window → Cloud-Optimized GeoTIFF, with explicit options.

1. Where pixels or masks must be rewritten first (a warped source; a lossy compression with a
   nodata value, which becomes an internal mask since JPEG/WebP would blur it), ``stage_window``
   copies one window of the source (a /vsiaz/ path read in place) into a local, uncompressed,
   512-px tiled GeoTIFF, one 512-row strip at a time. Every other window is staged like this by
   default, except a window that is the whole source, which process_raster converts from a local
   copy of the blob; services/raster/convert.py can also let the COG driver read the window straight
   from the source through a VRT where nothing is rewritten (opt-in ``read_directly``). All three
   write the same file byte for byte.
2. ``write_cog`` runs GDAL's COG driver on that with explicit creation options
   (``cog_creation_options``: compression and level, the predictor for the data type, 512-px
   blocks, overview resampling, GDAL threads); rio-cogeo still validates every output
   (``cog_problems``). Nodata, the internal mask, colour table, band descriptions, scales, offsets
   and tags are carried over by the driver.

The output file is written front to back and only its header is rewritten at the end, which is
what lets the caller upload it while it is being written (repositories/blob_upload.py).

GDAL's block cache (GDAL_CACHEMAX) is sized explicitly (``configure_gdal_block_cache``), so memory
stays near the worker baseline plus that cache whatever the window size
(services/raster/tiling.py budgets the rest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.env import set_gdal_config
from rasterio.io import DatasetReader
from rasterio.shutil import copy as gdal_copy
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

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


_PREDICTOR_NAMES = {2: "STANDARD", 3: "FLOATING_POINT"}


def cog_creation_options(options: CogOptions, dtype: str) -> dict[str, str]:
    """GDAL COG driver creation options for ``options`` and the data type (all explicit)."""
    creation = {
        "COMPRESS": options.compression.upper(),
        "BLOCKSIZE": str(COG_BLOCK_SIZE),
        "OVERVIEW_RESAMPLING": options.overview_resampling.upper(),
        "NUM_THREADS": str(options.threads),
        "BIGTIFF": "IF_SAFER",
    }
    predictor = predictor_for(options.compression, dtype)
    if predictor is not None:
        creation["PREDICTOR"] = _PREDICTOR_NAMES[predictor]
    if options.compression == "deflate":
        creation["LEVEL"] = str(options.deflate_level)
    elif options.compression == "zstd":
        creation["LEVEL"] = str(options.zstd_level)
    elif options.compression == "jpeg":
        creation["QUALITY"] = str(options.jpeg_quality)
    elif options.compression == "webp":
        creation["QUALITY"] = str(options.webp_level)
    return creation


def stage_window(
    source: DatasetReader,
    window: TileWindow,
    destination: Path,
    *,
    crs: CRS,
    nodata_as_mask: bool = False,
    strip_rows: int = COG_BLOCK_SIZE,
    pixels: DatasetReader | WarpedVRT | None = None,
    mask_band: int | None = None,
) -> None:
    """Copy ``window`` of ``source`` to an uncompressed tiled GeoTIFF at ``destination``, strip by strip.

    Carries the CRS (the file's or the assumed one), the window's transform, nodata, per-dataset
    mask, colour interpretation, colour table, band descriptions, scales, offsets, units and the
    dataset tags (TIFF DateTime among them). With ``nodata_as_mask`` (lossy compressions) a nodata
    value is written as an internal mask instead, since lossy codecs do not keep exact values.

    ``pixels`` (services/raster/warp.py: the source warped onto its target grid) supplies the
    window's pixels, mask and transform instead of ``source``, which still supplies the bands'
    description; its band ``mask_band`` (an alpha band the warp added) becomes the internal mask.
    """
    reader = source if pixels is None else pixels
    source_window = Window(window.col_off, window.row_off, window.width, window.height)
    profile = {
        "driver": "GTiff",
        "width": window.width,
        "height": window.height,
        "count": source.count,
        "dtype": source.dtypes[0],
        "crs": crs,
        "transform": reader.window_transform(source_window),
        "nodata": None if nodata_as_mask else source.nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK_SIZE,
        "blockysize": COG_BLOCK_SIZE,
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }
    copy_mask = (nodata_as_mask and source.nodata is not None) or (source.nodata is None and has_dataset_mask(reader))
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
            staged.write(reader.read(source.indexes, window=read_window), window=write_window)
            if mask_band is not None:
                alpha = reader.read(mask_band, window=read_window)
                staged.write_mask(np.where(alpha > 0, 255, 0).astype("uint8"), window=write_window)
            elif copy_mask:
                staged.write_mask(reader.dataset_mask(window=read_window), window=write_window)


def write_cog(staged: Path, destination: Path, options: CogOptions, *, dtype: str, driver: str | None = None) -> None:
    """Convert the window (staged, a local copy of the source, or a VRT over the source:
    services/raster/convert.py) to a COG with GDAL's COG driver (overviews down to one block), opening
    ``staged`` with ``driver`` only when given. Overviews are always computed from the pixels with
    the chosen resampling: a VRT or a copied source exposes the source's own overviews, which the
    driver would otherwise copy (OVERVIEWS=AUTO)."""
    creation = {**cog_creation_options(options, dtype), "OVERVIEWS": "IGNORE_EXISTING"}
    with rasterio.Env(**gdal_config(options)):
        if driver is None:
            gdal_copy(str(staged), str(destination), driver="COG", **creation)
            return
        with rasterio.open(staged, driver=driver) as source:
            gdal_copy(source, str(destination), driver="COG", **creation)


NOT_TILED = "The file is greater than 512xH or 512xW, but is not tiled"


def cog_problems(path: Path) -> list[str]:
    """rio-cogeo's validation errors for ``path``; empty when it is a valid COG.

    rio-cogeo takes a block as wide as the file for strips, so a file exactly one 512-px block wide
    and taller than that would be "not tiled"; GDAL's COG driver (LAYOUT=COG) always writes tiles, so
    that one is dropped for such a file (web-optimized grids are whole 256-px tiles: 512 wide happens).
    """
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    if valid:
        return []
    errors = errors or ["not a valid COG"]
    if NOT_TILED in errors:
        with rasterio.open(path) as written:
            rows, cols = written.block_shapes[0]
            layout = written.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
            if rows == cols == written.width == COG_BLOCK_SIZE and layout == "COG":
                errors = [error for error in errors if error != NOT_TILED]
    return errors
