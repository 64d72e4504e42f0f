"""Warp instead of refuse: a source that is not on a north-up grid in the wanted CRS is read through a
GDAL warped VRT onto one, and the rest of the pipeline (tiling, COG per tile window, STAC) works on
that target grid as if it were the source.

A source is warped (``warp_reason``) when its geotransform is rotated or sheared, when it is placed
by ground control points or by RPCs only, when ``target_crs`` differs from its CRS, or when
``web_optimized`` is asked for. ``warp: "never"`` keeps the refusal instead.

The target grid (``target_grid``) is the one ``gdalwarp`` chooses by default: GDAL's suggested warp
output (``GDALSuggestedWarpOutput2``, through rasterio's ``WarpedVRT`` defaults) for the source's own
georeferencing (geotransform, GCPs or RPCs) and the target CRS: the source's CRS unless
``target_crs`` is given; for RPCs, whose coefficients map to WGS 84, EPSG:4326. ``web_optimized``
(as rio-cogeo's web-optimized COGs) takes EPSG:3857 aligned to the GoogleMapsCompatible
(WebMercatorQuad) tile matrix of morecantile: the pixel size is that of the zoom level whose
resolution is the closest one finer than (or equal to) the source's suggested one
(``zoom_level_strategy="upper"``; rio-cogeo's CLI default "auto" takes the closest either way), and
the extent is whole 256-px tiles of that level.

Resampling defaults to nearest for categorical (paletted) rasters, whose values are classes, and
bilinear for everything else; ``resampling`` overrides it. Areas of the target grid outside the
source become nodata when the source has a nodata value; otherwise GDAL adds an alpha band to the
VRT, which the staging step writes as the COG's internal mask (as rio-cogeo does), so the output has
the source's bands and a mask.

Two warp options are pinned so that a pixel does not depend on how the job cuts the grid into tiles
(a warped VRT warps block by block, GDAL's warper chunk by chunk): the transformation is exact
(``ERROR_THRESHOLD_PIXELS``, gdalwarp ``-et 0``) and the resampling scale is computed once for the
whole raster (``warp_scale``, GDAL's XSCALE/YSCALE). With both, the output equals gdalwarp run with
``-et 0 -wo XSCALE=… -wo YSCALE=…`` pixel for pixel (tests/integration/test_process_raster_warp.py).

The decision is recorded in the metadata record (``RasterMetadata.warp``, with the grid itself in its
CRS/transform/size), so every cog task builds the same VRT for its window (``warped_view``).
Memory: GDAL's warper works in buffers of at most its WarpMemoryLimit (64 MiB by default) per read,
on top of the task's budgeted staging.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import morecantile
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio.errors does not re-export it
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT

from services.raster.crs import CrsInputError, crs_from_text
from services.raster.inspect import (
    MAX_SIDE_PIXELS,
    NEEDS_WARP,
    Georeferencing,
    RasterMetadata,
    TargetGrid,
    UnsupportedRasterError,
    check_size_and_type,
    georeferencing,
    inspect_dataset,
    resolve_crs,
    unusable_crs_reason,
)

WarpMode = Literal["auto", "never"]
WarpResampling = Literal["nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode"]
WEB_MERCATOR_CODE = "EPSG:3857"
WEB_MERCATOR = CRS.from_epsg(3857)
WGS84 = CRS.from_epsg(4326)
MAX_WEB_ZOOM = 30
# gdalwarp -et: 0 transforms every pixel exactly (PROJ per pixel, ~0.15 µs each) rather than
# interpolating between points transformed along each chunk (gdalwarp's default, 0.125 px), whose
# result depends on how the warp is cut into chunks: a warped VRT's blocks, the job's tiles. Exact,
# a pixel's value is the same whatever the tiling, and the same as gdalwarp -et 0 gives.
ERROR_THRESHOLD_PIXELS = 0.0
WARP_REASONS: dict[Georeferencing, str] = {
    "rotated": "rotated or sheared geotransform",
    "gcps": "georeferenced by ground control points only",
    "rpcs": "georeferenced by RPCs only",
}


@dataclass(frozen=True)
class WarpOptions:
    mode: WarpMode = "auto"
    target_crs: str | None = None  # canonical text (services/raster/crs.py), already validated
    web_optimized: bool = False
    resampling: WarpResampling | None = None  # None: default_resampling


DEFAULT_WARP_OPTIONS = WarpOptions()


def default_resampling(data_kind: str) -> WarpResampling:
    """Nearest keeps classes (palette indices) intact; bilinear suits continuous data."""
    return "nearest" if data_kind == "categorical" else "bilinear"


def wanted_crs(source_crs: CRS, options: WarpOptions) -> CRS:
    """The CRS of the output: EPSG:3857 for web-optimized, else ``target_crs``, else the source's."""
    if options.web_optimized:
        return WEB_MERCATOR
    if options.target_crs:
        try:
            return crs_from_text(options.target_crs)
        except CrsInputError as exc:
            raise UnsupportedRasterError(f"target_crs: {exc}") from exc
    return source_crs


def warp_reason(kind: Georeferencing, source_crs: CRS, options: WarpOptions) -> str | None:
    """Why the source must be warped (a few words), or None when it can be read as it is."""
    if kind in WARP_REASONS:
        return WARP_REASONS[kind]
    if options.web_optimized:
        return "web_optimized (EPSG:3857, GoogleMapsCompatible grid)"
    if options.target_crs and wanted_crs(source_crs, options) != source_crs:
        return "target_crs differs from the source's CRS"
    return None


def web_mercator_quad() -> morecantile.TileMatrixSet:
    return morecantile.tms.get("WebMercatorQuad")


def web_optimized_grid(suggested: TargetGrid, tms: morecantile.TileMatrixSet | None = None) -> TargetGrid:
    """The GoogleMapsCompatible-aligned grid covering ``suggested`` (a grid in EPSG:3857): pixel size
    of the closest finer zoom level, extent whole tiles of that level (rio-cogeo's web-optimized COG)."""
    tms = tms or web_mercator_quad()
    resolution = max(abs(suggested.transform.a), abs(suggested.transform.e))
    zoom = tms.zoom_for_res(resolution, max_z=MAX_WEB_ZOOM, zoom_level_strategy="upper")
    matrix = tms.matrix(zoom)
    origin_x, origin_y = matrix.pointOfOrigin
    cell = matrix.cellSize
    tile_x, tile_y = cell * matrix.tileWidth, cell * matrix.tileHeight
    west, south, east, north = suggested.bounds
    first_col, first_row = math.floor((west - origin_x) / tile_x), math.floor((origin_y - north) / tile_y)
    last_col = max(first_col + 1, math.ceil((east - origin_x) / tile_x))
    last_row = max(first_row + 1, math.ceil((origin_y - south) / tile_y))
    transform = Affine(cell, 0.0, origin_x + first_col * tile_x, 0.0, -cell, origin_y - first_row * tile_y)
    width = (last_col - first_col) * matrix.tileWidth
    height = (last_row - first_row) * matrix.tileHeight
    return TargetGrid(WEB_MERCATOR, transform, width, height)


def suggested_grid(dataset: DatasetReader, source_crs: CRS, target_crs: CRS) -> TargetGrid:
    """gdalwarp's default output grid for ``dataset`` (geotransform, GCPs or RPCs) in ``target_crs``."""
    try:
        with WarpedVRT(dataset, src_crs=source_crs, crs=target_crs) as vrt:
            return TargetGrid(target_crs, vrt.transform, vrt.width, vrt.height)
    except (RasterioError, CPLE_BaseError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UnsupportedRasterError(f"the raster cannot be warped to {crs_label(target_crs)}: {reason}") from exc


def crs_label(crs: CRS) -> str:
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else crs.name


def warp_scale(suggested: TargetGrid, target: TargetGrid, width: int, height: int) -> tuple[float, float]:
    """Destination pixels per source pixel along x and y over the whole warp (GDAL's XSCALE/YSCALE):
    the source's extent on the suggested grid, in target pixels, over the source's size.

    GDAL's warper otherwise computes it per chunk, and a warped VRT warps block by block, so the
    bilinear/cubic kernel (widened when downsampling) would differ between blocks, tiles and from
    gdalwarp's one-chunk warp of the whole raster; with it fixed, every tile warps the same way."""
    x = suggested.width * abs(suggested.transform.a) / abs(target.transform.a) / width
    y = suggested.height * abs(suggested.transform.e) / abs(target.transform.e) / height
    return (x, y)


def target_grid(
    dataset: DatasetReader, source_crs: CRS, options: WarpOptions
) -> tuple[TargetGrid, tuple[float, float]]:
    """The target grid, and the warp's scale (``warp_scale``)."""
    suggested = suggested_grid(dataset, source_crs, wanted_crs(source_crs, options))
    grid = web_optimized_grid(suggested) if options.web_optimized else suggested
    scale = warp_scale(suggested, grid, dataset.width, dataset.height)
    if not (1 <= grid.width <= MAX_SIDE_PIXELS and 1 <= grid.height <= MAX_SIDE_PIXELS):
        raise UnsupportedRasterError(
            f"the warped raster would be {grid.width}x{grid.height} pixels, outside 1..{MAX_SIDE_PIXELS} a side"
        )
    return grid, scale


def source_crs_of(dataset: DatasetReader, kind: Georeferencing, assume_crs: str | None) -> tuple[CRS, bool]:
    """The CRS the source's georeferencing is in, and whether it was assumed: RPCs are always in
    WGS 84; GCPs in their own CRS (or assume_crs); a geotransform in the file's CRS (or assume_crs)."""
    if kind == "rpcs":
        return WGS84, False
    own = dataset.gcps[1] if kind == "gcps" else dataset.crs
    file_crs = own if own is not None and own.to_wkt() else None
    unusable = None if file_crs is not None or assume_crs else unusable_crs_reason(dataset)
    return resolve_crs(file_crs, assume_crs, unusable_reason=unusable)


def adds_mask(dataset: DatasetReader) -> bool:
    """Without nodata (or an alpha band) the area outside the source is marked by an alpha band in
    the VRT, written as the COG's internal mask."""
    return dataset.nodata is None and dataset.colorinterp[-1] is not ColorInterp.alpha


def inspect_source(dataset: DatasetReader, *, assume_crs: str | None, options: WarpOptions) -> RasterMetadata:
    """The metadata record of what the job converts: the source itself, or its warp onto the target
    grid (``RasterMetadata.warp`` says how). ``warp: "never"`` refuses what would need warping."""
    check_size_and_type(dataset)
    kind = georeferencing(dataset)
    if options.mode == "never":
        if kind != "geotransform":
            raise UnsupportedRasterError(f'{NEEDS_WARP[kind]}, and warp is "never"')
        return inspect_dataset(dataset, assume_crs=assume_crs)
    source_crs, assumed = source_crs_of(dataset, kind, assume_crs)
    if warp_reason(kind, source_crs, options) is None:
        return inspect_dataset(dataset, assume_crs=assume_crs)
    grid, scale = target_grid(dataset, source_crs, options)
    metadata = inspect_dataset(dataset, grid=grid)
    warp = {
        "reason": warp_reason(kind, source_crs, options),
        "georeferencing": kind,
        "source_crs_wkt": source_crs.to_wkt(),
        "resampling": options.resampling or default_resampling(metadata.data_kind),
        "adds_mask": adds_mask(dataset),
        "scale": list(scale),
    }
    return replace(
        metadata, crs_assumed=assumed, has_dataset_mask=metadata.has_dataset_mask or warp["adds_mask"], warp=warp
    )


@contextmanager
def warped_view(dataset: DatasetReader, metadata: RasterMetadata) -> Iterator[DatasetReader]:
    """``dataset`` warped onto the grid of ``metadata`` as ``metadata.warp`` says (a GDAL warped VRT:
    pixels are warped when a window is read). With ``adds_mask`` its last band is the alpha band.

    GDAL builds the VRT as gdalwarp does (``GDALAutoCreateWarpedVRTEx``: the transformer follows
    the source's geotransform, GCPs or RPCs), on its default grid. When the target grid is another
    one (web_optimized) the VRT's XML is given that grid (``retarget_warped_vrt``): rasterio's
    WarpedVRT with an explicit transform would build its transformer from the geotransform alone,
    which for GCP- or RPC-only sources is the identity."""
    warp: dict[str, Any] = metadata.warp or {}
    with WarpedVRT(
        dataset,
        src_crs=CRS.from_wkt(warp["source_crs_wkt"]),
        crs=metadata.crs,
        resampling=Resampling[warp["resampling"]],
        add_alpha=bool(warp["adds_mask"]),
        tolerance=ERROR_THRESHOLD_PIXELS,
        XSCALE=repr(warp["scale"][0]),
        YSCALE=repr(warp["scale"][1]),
    ) as vrt:
        if (vrt.width, vrt.height, tuple(vrt.transform)[:6]) == (metadata.width, metadata.height, metadata.transform):
            yield vrt
            return
        document = vrt.tags(ns="xml:VRT")["xml:VRT"]  # GDAL's serialisation of the VRT it just built
    document = retarget_warped_vrt(document, metadata.affine, metadata.width, metadata.height)
    with rasterio.open(document) as retargeted:
        yield retargeted


def _gdal_geotransform(transform: Affine) -> str:
    return ",".join(repr(float(v)) for v in transform.to_gdal())


def retarget_warped_vrt(document: str, transform: Affine, width: int, height: int) -> str:
    """A GDAL warped VRT's XML with another output grid: the dataset's size and geotransform and the
    transformer's destination geotransform (and its inverse); the warp itself is unchanged."""
    root = ET.fromstring(document)  # noqa: S314 - GDAL's own serialisation of a VRT, not outside input
    root.set("rasterXSize", str(width))
    root.set("rasterYSize", str(height))
    elements = {name: root.findall(f".//{name}") for name in ("GeoTransform", "DstGeoTransform", "DstInvGeoTransform")}
    if any(len(found) != 1 for found in elements.values()):
        raise ValueError("not a warped VRT with one destination grid")
    elements["GeoTransform"][0].text = _gdal_geotransform(transform)
    elements["DstGeoTransform"][0].text = _gdal_geotransform(transform)
    elements["DstInvGeoTransform"][0].text = _gdal_geotransform(~transform)
    return ET.tostring(root, encoding="unicode")


@contextmanager
def staging_pixels(dataset: DatasetReader, metadata: RasterMetadata) -> Iterator[dict[str, Any]]:
    """``stage_window``'s keyword arguments for reading ``dataset`` as ``metadata`` describes it:
    none for a source read as it is; the warped view (and its alpha band as the mask) otherwise."""
    if metadata.warp is None:
        yield {}
        return
    with warped_view(dataset, metadata) as vrt:
        yield {"pixels": vrt, "mask_band": dataset.count + 1 if metadata.warp["adds_mask"] else None}
