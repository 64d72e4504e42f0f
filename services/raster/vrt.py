"""GDAL VRT mosaic of a source's COG tiles: one virtual raster, the tiles referenced relatively.

The tiles come from one source grid, so each is placed by its window offset with no resampling.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from services.raster.inspect import RasterMetadata
from services.raster.tiling import TileWindow

VRT_MEDIA_TYPE = "application/xml"
GDAL_DATA_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class MosaicTile:
    filename: str  # relative to the VRT
    window: TileWindow  # position in the source grid
    metadata: RasterMetadata


def _source(parent: ET.Element, tile: MosaicTile, band: str) -> None:
    source = ET.SubElement(parent, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = tile.filename
    ET.SubElement(source, "SourceBand").text = band
    block_rows, block_cols = tile.metadata.block_shape
    ET.SubElement(
        source,
        "SourceProperties",
        RasterXSize=str(tile.window.width),
        RasterYSize=str(tile.window.height),
        DataType="Byte" if band.startswith("mask") else GDAL_DATA_TYPES[tile.metadata.dtype],
        BlockXSize=str(block_cols),
        BlockYSize=str(block_rows),
    )
    width, height = str(tile.window.width), str(tile.window.height)
    ET.SubElement(source, "SrcRect", xOff="0", yOff="0", xSize=width, ySize=height)
    ET.SubElement(
        source, "DstRect", xOff=str(tile.window.col_off), yOff=str(tile.window.row_off), xSize=width, ySize=height
    )


def mosaic_vrt(tiles: Sequence[MosaicTile]) -> str:
    """The VRT XML of the mosaic of ``tiles`` (all from one source grid)."""
    if not tiles:
        raise ValueError("a mosaic needs at least one tile")
    first = min(tiles, key=lambda t: (t.window.row_off, t.window.col_off))
    reference = first.metadata
    width = max(t.window.col_off + t.window.width for t in tiles)
    height = max(t.window.row_off + t.window.height for t in tiles)
    a, b, c, d, e, f = reference.transform
    # The mosaic's origin is the source's: step back from the first tile by its offset.
    origin_x = c - first.window.col_off * a - first.window.row_off * b
    origin_y = f - first.window.col_off * d - first.window.row_off * e

    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = reference.crs_wkt
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in (origin_x, a, b, origin_y, d, e))
    for band in reference.bands:
        element = ET.SubElement(root, "VRTRasterBand", dataType=GDAL_DATA_TYPES[reference.dtype], band=str(band.index))
        if reference.nodata is not None:
            ET.SubElement(element, "NoDataValue").text = str(reference.nodata)
        ET.SubElement(element, "ColorInterp").text = band.color_interp.capitalize()
        if band.description:
            ET.SubElement(element, "Description").text = band.description
        if band.index == 1 and reference.colormap:
            table = ET.SubElement(element, "ColorTable")
            for value in range(max(int(k) for k in reference.colormap) + 1):
                r, g, bl, alpha = reference.colormap.get(str(value), [0, 0, 0, 0])
                ET.SubElement(table, "Entry", c1=str(r), c2=str(g), c3=str(bl), c4=str(alpha))
        for tile in tiles:
            _source(element, tile, str(band.index))
    if reference.has_dataset_mask:
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        for tile in tiles:
            _source(mask, tile, "mask,1")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
