"""What a raster is: one JSON-serialisable metadata record from an open dataset, plus the checks that
decide whether geoetl can convert it.

``inspect_dataset`` is pure over an open rasterio dataset (a /vsiaz/ source, a local COG): it reads
headers only, never pixels. ``RasterMetadata`` is what the STAC item builder consumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from schemas.errors import PermanentTaskError
from services.raster.crs import CrsInputError, crs_from_text, gdal_messages, proj_reason
from services.raster.footprint import FootprintError, UnusableCrsError, footprint_wgs84

SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_SIDE_PIXELS = 1_000_000
MAX_BANDS = 256
MAX_UNCOMPRESSED_BYTES = 1024**4  # 1 TiB
TIFF_DATETIME_FORMAT = "%Y:%m:%d %H:%M:%S"

DataKind = Literal["categorical", "continuous"]
# How a raster's pixels are placed: a north-up (or south-up) geotransform, a rotated or sheared one,
# ground control points only, or RPCs only (the last three need warping: services/raster/warp.py).
Georeferencing = Literal["geotransform", "rotated", "gcps", "rpcs"]
NodataValue = float | str | None  # NaN and infinities as "nan", "inf", "-inf" (as STAC raster:bands)


class UnsupportedRasterError(PermanentTaskError):
    """The input is a raster geoetl cannot convert (no CRS, rotated, unsupported type, too large)."""


@dataclass(frozen=True)
class BandMetadata:
    index: int
    description: str | None
    color_interp: str
    scale: float
    offset: float
    unit: str | None


@dataclass(frozen=True)
class RasterMetadata:
    """Everything later stages and the STAC builder need to know about one raster."""

    driver: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str
    crs_code: str | None  # "EPSG:32633" when the CRS has one
    crs_assumed: bool  # the file had no CRS; the job's assume_crs was used
    transform: tuple[float, float, float, float, float, float]  # affine a, b, c, d, e, f
    bounds: tuple[float, float, float, float]  # left, bottom, right, top in the raster's CRS
    bbox_wgs84: tuple[float, float, float, float]  # west, south, east, north; west > east across ±180°
    footprint_wgs84: dict[str, Any]  # GeoJSON geometry
    nodata: NodataValue
    has_dataset_mask: bool  # validity comes from an internal mask band rather than a nodata value
    colormap: dict[str, list[int]] | None  # band 1 palette: {"value": [r, g, b, a]}
    data_kind: DataKind
    block_shape: tuple[int, int]  # rows, columns
    compression: str | None
    acquired_at: str | None  # the TIFF DateTime tag as ISO 8601 (taken as UTC), if any
    bands: tuple[BandMetadata, ...] = field(default_factory=tuple)
    # Set when the record describes the source warped onto a target grid (services/raster/warp.py):
    # reason, georeferencing, source_crs_wkt, resampling, adds_mask, scale. The grid is this record's own.
    warp: dict[str, Any] | None = None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform)

    @property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def resolution(self) -> tuple[float, float]:
        return (abs(self.transform[0]), abs(self.transform[4]))

    @property
    def itemsize(self) -> int:
        return int(self.dtype.removeprefix("float").removeprefix("uint").removeprefix("int")) // 8

    @property
    def uncompressed_bytes(self) -> int:
        return self.width * self.height * self.count * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RasterMetadata:
        values = dict(data)
        values["bands"] = tuple(BandMetadata(**band) for band in values.get("bands", ()))
        for name in ("transform", "bounds", "bbox_wgs84", "block_shape"):
            values[name] = tuple(values[name])
        return cls(**values)


@dataclass(frozen=True)
class TargetGrid:
    """A north-up grid a source is warped onto."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return grid_bounds(self.transform, self.width, self.height)


def grid_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """left, bottom, right, top of a grid (any sign of pixel size)."""
    xs, ys = zip(*(transform @ corner for corner in ((0, 0), (width, 0), (0, height), (width, height))), strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


def encode_nodata(value: float | None) -> NodataValue:
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def decode_nodata(value: NodataValue) -> float | None:
    return None if value is None else float(value)


def parse_tiff_datetime(text: str | None) -> str | None:
    """The TIFF DateTime tag ("YYYY:MM:DD HH:MM:SS", no zone: taken as UTC) as ISO 8601, or None."""
    if not text:
        return None
    try:
        return datetime.strptime(text.strip(), TIFF_DATETIME_FORMAT).replace(tzinfo=UTC).isoformat()
    except ValueError:
        return None


def crs_code(crs: CRS) -> str | None:
    """The CRS as "AUTHORITY:CODE" when it matches one exactly, else None (proj:wkt2 carries it then)."""
    authority = crs.to_authority(confidence_threshold=100)
    return f"{authority[0]}:{authority[1]}" if authority else None


def unusable_crs_message(reason: str) -> str:
    return f"the source's CRS is not usable: {reason}; pass assume_crs to replace it"


def resolve_crs(
    file_crs: CRS | None, assume_crs: str | None, *, unusable_reason: str | None = None
) -> tuple[CRS, bool]:
    """(CRS to use, whether it was assumed). The file's own CRS wins when it has a usable one;
    ``unusable_reason`` is why PROJ refused the one it has (GDAL then gives none)."""
    if file_crs is not None and file_crs.to_wkt():
        return file_crs, False
    if not assume_crs:
        if unusable_reason:
            raise UnsupportedRasterError(unusable_crs_message(unusable_reason))
        raise UnsupportedRasterError('the raster has no CRS; pass assume_crs (for example "EPSG:4326") to set one')
    try:
        return crs_from_text(assume_crs), True
    except CrsInputError as exc:
        raise UnsupportedRasterError(f"assume_crs: {exc}") from exc


def georeferencing(dataset: DatasetReader) -> Georeferencing:
    """How the dataset's pixels are placed; raises when they are not placed at all."""
    transform = dataset.transform
    if transform.is_identity:
        if dataset.gcps[0]:
            return "gcps"
        if dataset.rpcs is not None:
            return "rpcs"
        raise UnsupportedRasterError("the raster has no geotransform (no georeferencing)")
    if transform.b != 0 or transform.d != 0:
        return "rotated"
    if transform.a == 0 or transform.e == 0:
        raise UnsupportedRasterError("the raster's geotransform has a zero pixel size")
    return "geotransform"


NEEDS_WARP: dict[Georeferencing, str] = {
    "rotated": "the raster has a rotated or sheared geotransform; it must be warped to a north-up grid",
    "gcps": "the raster is georeferenced by ground control points only; it must be warped to a map grid",
    "rpcs": "the raster is georeferenced by RPCs only (rational polynomial coefficients, no geotransform): "
    "it must be warped (orthorectified) to a map grid",
}
RPC_ONLY = NEEDS_WARP["rpcs"]


def check_geotransform(dataset: DatasetReader) -> Affine:
    """The dataset's affine transform, if it is a usable one (north-up or south-up, not rotated); a
    raster that needs warping is refused (services/raster/warp.py warps it unless warp is "never")."""
    kind = georeferencing(dataset)
    if kind != "geotransform":
        raise UnsupportedRasterError(NEEDS_WARP[kind])
    return dataset.transform


def unusable_crs_reason(dataset: DatasetReader) -> str | None:
    """Why GDAL gave ``dataset`` no CRS although its GeoKeys define one that PROJ refuses (e.g. a
    Mercator 1SP with a latitude of origin other than 0 and a scale factor other than 1), or None
    when it simply has none. GDAL says so only in a message logged while the file is opened, so the
    file is opened again (headers only, from GDAL's cache for /vsiaz/) to hear it."""
    if dataset.driver != "GTiff" or not dataset.name:
        return None
    try:
        with gdal_messages() as messages, rasterio.open(dataset.name, driver="GTiff") as again:
            _ = again.crs
    except RasterioError:
        return None
    return proj_reason(messages)


def check_size_and_type(dataset: DatasetReader) -> None:
    dtypes = set(dataset.dtypes)
    if len(dtypes) != 1:
        raise UnsupportedRasterError(f"bands of different data types are not supported: {sorted(dtypes)}")
    dtype = dataset.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedRasterError(f"data type {dtype} is not supported (supported: {', '.join(SUPPORTED_DTYPES)})")
    if not (1 <= dataset.width <= MAX_SIDE_PIXELS and 1 <= dataset.height <= MAX_SIDE_PIXELS):
        raise UnsupportedRasterError(
            f"raster size {dataset.width}x{dataset.height} is outside 1..{MAX_SIDE_PIXELS} pixels a side"
        )
    if not 1 <= dataset.count <= MAX_BANDS:
        raise UnsupportedRasterError(f"{dataset.count} bands; between 1 and {MAX_BANDS} are supported")
    itemsize = int(dtype.removeprefix("float").removeprefix("uint").removeprefix("int")) // 8
    if dataset.width * dataset.height * dataset.count * itemsize > MAX_UNCOMPRESSED_BYTES:
        raise UnsupportedRasterError(f"the raster is over {MAX_UNCOMPRESSED_BYTES // 1024**4} TiB uncompressed")


def colormap_of(dataset: DatasetReader) -> dict[str, list[int]] | None:
    if dataset.colorinterp[0] is not ColorInterp.palette:
        return None
    try:
        entries = dataset.colormap(1)
    except ValueError:  # palette interpretation without a color table
        return None
    return {str(value): [int(c) for c in rgba] for value, rgba in sorted(entries.items())}


def has_dataset_mask(dataset: DatasetReader) -> bool:
    return MaskFlags.per_dataset in dataset.mask_flag_enums[0] and MaskFlags.alpha not in dataset.mask_flag_enums[0]


def inspect_dataset(
    dataset: DatasetReader, *, assume_crs: str | None = None, grid: TargetGrid | None = None
) -> RasterMetadata:
    """The metadata record of an open dataset; raises UnsupportedRasterError when it cannot be converted.

    With ``grid`` the record describes the dataset warped onto that grid (CRS, transform, size,
    bounds, footprint), its bands, types and tags still the dataset's."""
    check_size_and_type(dataset)
    if grid is not None:
        try:
            footprint, bbox = footprint_wgs84(grid.crs, grid.transform, grid.width, grid.height)
        except FootprintError as exc:
            raise UnsupportedRasterError(f"has no WGS 84 footprint: {exc}") from exc
        return _record(dataset, grid, False, footprint, bbox)
    transform = check_geotransform(dataset)
    file_crs = dataset.crs if dataset.crs is not None and dataset.crs.to_wkt() else None
    # Why GDAL gave no CRS matters only when nothing replaces it (it costs a second open).
    unusable = None if file_crs is not None or assume_crs else unusable_crs_reason(dataset)
    crs, assumed = resolve_crs(file_crs, assume_crs, unusable_reason=unusable)
    try:
        footprint, bbox = footprint_wgs84(crs, transform, dataset.width, dataset.height)
    except UnusableCrsError as exc:
        if assumed:
            raise UnsupportedRasterError(f"assume_crs is not usable: {exc.reason}") from exc
        if not assume_crs:
            raise UnsupportedRasterError(unusable_crs_message(exc.reason)) from exc
        crs, assumed = resolve_crs(None, assume_crs)  # the file's CRS is unusable: the assumed one replaces it
        try:
            footprint, bbox = footprint_wgs84(crs, transform, dataset.width, dataset.height)
        except FootprintError as again:
            raise UnsupportedRasterError(f"has no WGS 84 footprint: {again}") from again
    except FootprintError as exc:
        raise UnsupportedRasterError(f"has no WGS 84 footprint: {exc}") from exc
    return _record(dataset, TargetGrid(crs, transform, dataset.width, dataset.height), assumed, footprint, bbox)


def _record(
    dataset: DatasetReader,
    grid: TargetGrid,
    assumed: bool,
    footprint: dict[str, Any],
    bbox: tuple[float, float, float, float],
) -> RasterMetadata:
    crs, transform = grid.crs, grid.transform
    colormap = colormap_of(dataset)
    bands = tuple(
        BandMetadata(
            index=index,
            description=dataset.descriptions[index - 1] or None,
            color_interp=dataset.colorinterp[index - 1].name,
            scale=float(dataset.scales[index - 1]),
            offset=float(dataset.offsets[index - 1]),
            unit=dataset.units[index - 1] or None,
        )
        for index in dataset.indexes
    )
    return RasterMetadata(
        driver=dataset.driver,
        width=grid.width,
        height=grid.height,
        count=dataset.count,
        dtype=dataset.dtypes[0],
        crs_wkt=crs.to_wkt(),
        crs_code=crs_code(crs),
        crs_assumed=assumed,
        transform=(transform.a, transform.b, transform.c, transform.d, transform.e, transform.f),
        bounds=grid.bounds,
        bbox_wgs84=bbox,
        footprint_wgs84=footprint,
        nodata=encode_nodata(dataset.nodata),
        has_dataset_mask=dataset.nodata is None and has_dataset_mask(dataset),
        colormap=colormap,
        data_kind="categorical" if colormap is not None else "continuous",
        block_shape=(int(dataset.block_shapes[0][0]), int(dataset.block_shapes[0][1])),
        compression=dataset.compression.name.lower() if dataset.compression else None,
        acquired_at=parse_tiff_datetime(dataset.tags().get("TIFFTAG_DATETIME")),
        bands=bands,
    )


def tiff_truncation_problem(dataset: DatasetReader, file_size: int) -> str | None:
    """Why a GeoTIFF's data blocks do not fit in ``file_size`` bytes (a truncated upload), or None.

    Reads only the TIFF's block offset and size arrays (headers), not the pixels.
    """
    if dataset.driver != "GTiff":
        return None
    rows, cols = dataset.block_shapes[0]
    blocks_down = math.ceil(dataset.height / rows)
    blocks_across = math.ceil(dataset.width / cols)
    separate_planes = dataset.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND" and dataset.count > 1
    end = 0
    for band in dataset.indexes if separate_planes else (1,):
        for y in range(blocks_down):
            for x in range(blocks_across):
                offset = dataset.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
                size = dataset.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
                if offset and size:  # a sparse (unwritten) block has neither
                    end = max(end, int(offset) + int(size))
    if end > file_size:
        return f"the file is truncated: its data blocks need {end} bytes but the blob has {file_size}"
    return None
