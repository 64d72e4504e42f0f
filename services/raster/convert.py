"""The source GDAL's COG driver converts one tile window from: a local copy of the whole blob, a VRT
over the source itself, or a staged copy of the window.

A window that is the whole source (a raster converted as one tile) is converted from a local copy of
the blob, downloaded with parallel ranged GETs (``repositories/blob_download.py``, ``copy_source``):
the bytes as stored, nothing decoded or rewritten on the way, then the COG driver reads that file
like any local GeoTIFF (opened as a GTiff only). Measured with bench/cog_benchmark.py against GDAL's
COG driver reading the blob over /vsiaz/ (bench/README.md "COG conversion"): the copy costs one read
of the blob instead of the driver's two, and it writes the same COG byte for byte as the staged path.
A window that must be rewritten (below) is staged from that local copy instead of from the blob.

For a window of a larger source, staging it to a local uncompressed file
(``services/raster/cog.stage_window``) is a serial step before the conversion: one read of the
source, one uncompressed write; the COG driver then reads the local file twice (overviews, then the
copy). With ``read_directly`` (off by default, see below) the COG driver instead reads the window
straight from the source, where nothing has to be rewritten on the way, through a small VRT
(``window_vrt``): a ``SimpleSource`` per band with the window as its source rectangle (a pixel-for-
pixel copy, no resampling), the window's geotransform, the resolved CRS (an assumed one too),
nodata, the per-dataset mask (``mask,1``), colour interpretation, colour table, band descriptions,
units, scales, offsets and the dataset tags, which is everything ``stage_window`` carries over. GDAL
writes the same file byte for byte.

Why it is off by default: measured with bench/cog_paths.py (7168² float32, deflate, 2 GDAL threads,
Azurite on the same 2-CPU machine, 5 interleaved repeats on a quiet machine) the direct read took
5.5-6.2 s against 4.6-4.9 s staged (GDAL's own /vsiaz/ → local file: 3.6-4.4 s). The staging step
costs 0.6-0.9 s, but the COG driver then reads the source twice over HTTP (overviews, then the copy)
and decodes it twice, while the upload competes for the same storage endpoint: +0.6 CPU-s in the
worker and +1.2 CPU-s in Azurite per task, and ~+95 MiB peak RSS per task on the 28672² benchmark
raster (964 against 869 MiB). Worth measuring again against real remote storage.

The VRT opens the source again by name, with whichever GDAL driver recognises it, where the
pipeline's own open allows only GTiff (nothing that can reach other files). So the source's etag is
read before that open and compared before the COG is committed (``check_source_unchanged``): any
write to the blob in between changes it, so everything read was the version opened as a GTiff.

Staging stays where pixels or masks are rewritten (``needs_staging``): a warped source (the warped
view's alpha band becomes the internal mask), a lossy compression with a nodata value (nodata
becomes an internal mask), and a paletted source without a colour table.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from repositories.blob_download import download_to_file
from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError
from services.raster.cog import CogOptions, gdal_config, stage_window, write_cog
from services.raster.gdal_errors import gdal_error
from services.raster.inspect import RasterMetadata, has_dataset_mask
from services.raster.tiling import TileWindow
from services.raster.vrt import GDAL_DATA_TYPES
from services.raster.warp import staging_pixels


def needs_staging(dataset: DatasetReader, metadata: RasterMetadata, *, nodata_as_mask: bool) -> str | None:
    """Why this window must be staged locally (see the module docstring), or None when the COG
    driver can read it from the source directly."""
    if metadata.warp is not None:
        return "warped"
    if nodata_as_mask and dataset.nodata is not None:
        return "nodata becomes an internal mask"
    if dataset.dtypes[0] not in GDAL_DATA_TYPES or len(set(dataset.dtypes)) != 1:
        return f"data type {dataset.dtypes[0]}"
    if dataset.colorinterp[0] is ColorInterp.palette:
        try:
            dataset.colormap(1)
        except ValueError:
            return "a palette without a colour table"
    return None


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _source(parent: ET.Element, path: str, band: str, window: TileWindow) -> None:
    source = ET.SubElement(parent, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = path
    ET.SubElement(source, "SourceBand").text = band
    size = {"xSize": str(window.width), "ySize": str(window.height)}
    ET.SubElement(source, "SrcRect", {"xOff": str(window.col_off), "yOff": str(window.row_off), **size})
    ET.SubElement(source, "DstRect", {"xOff": "0", "yOff": "0", **size})


def window_vrt(dataset: DatasetReader, path: str, window: TileWindow, *, crs: CRS) -> str:
    """A VRT document exposing ``window`` of ``dataset`` (opened from ``path``, e.g. a /vsiaz/ path)
    as a raster of its own, with what ``stage_window`` would carry over (the module docstring).

    The VRT's blocks are the source's, so GDAL reads each source block once per pass."""
    block_rows, block_cols = dataset.block_shapes[0]
    block = (min(block_cols, window.width), min(block_rows, window.height))
    root = ET.Element("VRTDataset", rasterXSize=str(window.width), rasterYSize=str(window.height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    transform = dataset.window_transform(Window(window.col_off, window.row_off, window.width, window.height))
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in transform.to_gdal())
    tags = dataset.tags()
    if tags:
        metadata = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(metadata, "MDI", key=key).text = value
    vrt_type = GDAL_DATA_TYPES[dataset.dtypes[0]]
    for index in dataset.indexes:
        band = ET.SubElement(
            root,
            "VRTRasterBand",
            dataType=vrt_type,
            band=str(index),
            blockXSize=str(block[0]),
            blockYSize=str(block[1]),
        )
        if dataset.nodata is not None:
            ET.SubElement(band, "NoDataValue").text = _number(dataset.nodata)
        ET.SubElement(band, "ColorInterp").text = dataset.colorinterp[index - 1].name.capitalize()
        if dataset.descriptions[index - 1]:
            ET.SubElement(band, "Description").text = dataset.descriptions[index - 1]
        if dataset.units[index - 1]:
            ET.SubElement(band, "UnitType").text = dataset.units[index - 1]
        ET.SubElement(band, "Offset").text = _number(dataset.offsets[index - 1])
        ET.SubElement(band, "Scale").text = _number(dataset.scales[index - 1])
        if index == 1 and dataset.colorinterp[0] is ColorInterp.palette:
            colormap = dataset.colormap(1)
            table = ET.SubElement(band, "ColorTable")
            for entry in range(max(colormap) + 1 if colormap else 0):
                rgba = (*colormap.get(entry, (0, 0, 0, 0)), 255)
                ET.SubElement(table, "Entry", {f"c{i + 1}": str(v) for i, v in enumerate(rgba[:4])})
        _source(band, path, str(index), window)
    if dataset.nodata is None and has_dataset_mask(dataset):
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        _source(mask, path, "mask,1", window)
    return ET.tostring(root, encoding="unicode")


def write_window_vrt(dataset: DatasetReader, path: str, window: TileWindow, destination: Path, *, crs: CRS) -> Path:
    destination.write_text(window_vrt(dataset, path, window, crs=crs), encoding="utf-8")
    return destination


def window_source(
    dataset: DatasetReader,
    path: str,
    metadata: RasterMetadata,
    window: TileWindow,
    work: Path,
    *,
    nodata_as_mask: bool,
    read_directly: bool = False,
    local_copy: Path | None = None,
) -> tuple[Path, str | None]:
    """What the COG driver converts ``window`` from, written into ``work``, and why the window had
    to be staged (None when it was not): ``local_copy`` itself (a copy of the whole blob that
    ``dataset`` was opened from), a VRT over ``path`` (``dataset`` opened from it; with
    ``read_directly``), or the window staged locally (see the module docstring).
    GDAL's errors are translated (``gdal_error``)."""
    try:
        reason = needs_staging(dataset, metadata, nodata_as_mask=nodata_as_mask)
        if reason is None and local_copy is not None:
            if not metadata.crs_assumed and dataset.crs == metadata.crs:
                return local_copy, None
            reason = "the CRS is assumed"  # the copy has none (or another): stage it with the assumed one
        reason = reason or (None if read_directly else "staged")
        if reason is None:
            return write_window_vrt(dataset, path, window, work / "window.vrt", crs=metadata.crs), None
        staged = work / "staged.tif"
        with staging_pixels(dataset, metadata) as warped:
            stage_window(dataset, window, staged, crs=metadata.crs, nodata_as_mask=nodata_as_mask, **warped)
        return staged, reason
    except RasterioError as exc:
        raise gdal_error(exc, path) from exc


# The memory model (services/raster/tiling.py) counts a tile's temporary file as the tile's pixels
# uncompressed, in case it is memory-backed: a blob bigger than that (uncompressed with overviews,
# several images) is staged, not copied whole. The download's parts in flight (2 x 32 MiB) come
# before the upload's blocks and GDAL's cache are used, within what the model counts for those.
COPY_SLACK_RATIO = 1.0
COPY_SLACK_BYTES = 1024 * 1024  # the TIFF header and tile offsets of an uncompressed file


def copies_whole_source(metadata: RasterMetadata, window: TileWindow, blob_bytes: int) -> bool:
    """Whether the cog task converts ``window`` from a local copy of the whole blob: the window is
    the whole (unwarped) source, and the blob is not much bigger than its pixels."""
    if metadata.warp is not None or (window.col_off, window.row_off) != (0, 0):
        return False
    if (window.width, window.height) != (metadata.width, metadata.height):
        return False
    pixel_bytes = window.width * window.height * metadata.count * np.dtype(metadata.dtype).itemsize
    return blob_bytes <= pixel_bytes * COPY_SLACK_RATIO + COPY_SLACK_BYTES


def copy_source(storage: BlobStorage, container: str, blob: str, destination: Path, *, size: int, etag: str) -> Path:
    """Download the blob (``size`` bytes at ``etag``, from its properties) to ``destination`` with
    parallel ranged GETs; refuse a blob written meanwhile (its etag changed), since each range is a
    request of its own."""
    download_to_file(storage, container, blob, destination, size=size)
    check_source_unchanged(storage, container, blob, etag)
    return destination


def convert_window(
    storage: BlobStorage,
    source: Path,
    destination: Path,
    options: CogOptions,
    *,
    dtype: str,
    path: str,
    direct: bool,
    local_copy: bool = False,
) -> None:
    """``write_cog`` from ``window_source``'s file. A VRT (``direct``) reads ``path`` as it goes: inside
    the storage's GDAL environment, GDAL's errors translated as reading ``path``'s. A local copy of
    the blob (``local_copy``) is opened as a GTiff only, like the blob itself; a staged file is
    converted as it always was."""
    if not direct:
        try:
            write_cog(source, destination, options, dtype=dtype, driver="GTiff" if local_copy else None)
        except RasterioError as exc:
            if not local_copy:
                raise
            raise gdal_error(exc, path) from exc
        return
    try:
        with storage.gdal_env(**gdal_config(options)):
            write_cog(source, destination, options, dtype=dtype)
    except RasterioError as exc:
        raise gdal_error(exc, path) from exc


def check_source_unchanged(storage: BlobStorage, container: str, blob: str, etag: str) -> None:
    """Refuse to commit a COG read from a source whose blob was written since ``etag`` was read."""
    now = storage.properties(container, blob).etag
    if now != etag:
        raise PermanentTaskError(
            f"the source {container}/{blob} changed while it was converted (etag {etag}, now {now}); "
            "nothing was written"
        )
