"""WKB values of an Arrow binary column, handled without GEOS: header parsing and EWKB byte surgery.

GDAL's Arrow stream gives ISO WKB in the machine's byte order. Most geometries need only a new
outer header to become the EWKB PostGIS's binary receive function takes: the SRID flag and SRID,
the Z flag instead of the ISO thousands, and a one-part multi around a single geometry when the
column is multi (inner parts keep their ISO header, which PostGIS reads too). Both steps run as
numpy / Arrow kernels over the whole batch, never one Python object per value. Curved types
(CircularString … MultiSurface), PolyhedralSurface, TIN and Triangle, which GEOS cannot read,
go through this path only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SRID_FLAG, Z_FLAG, M_FLAG = 0x20000000, 0x80000000, 0x40000000
TYPE_NAMES = {
    1: "Point",
    2: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
    8: "CircularString",
    9: "CompoundCurve",
    10: "CurvePolygon",
    11: "MultiCurve",
    12: "MultiSurface",
    13: "Curve",
    14: "Surface",
    15: "PolyhedralSurface",
    16: "TIN",
    17: "Triangle",
}
LINEAR_CODES = (1, 2, 3, 4, 5, 6, 7)  # what GEOS reads
NON_LINEAR_CODES = tuple(code for code in TYPE_NAMES if code not in LINEAR_CODES)  # loaded as they are
MULTI_CODES = {"MultiPoint": 4, "MultiLineString": 5, "MultiPolygon": 6}
_FAMILY_CODES = {  # column type → the WKB type codes it takes (single and multi)
    "Point": (1,),
    "MultiPoint": (1, 4),
    "MultiLineString": (2, 5),
    "MultiPolygon": (3, 6),
}


@dataclass(frozen=True)
class WkbHeaders:
    """The outer header of each value of a batch (zeros where ``present`` is false)."""

    present: np.ndarray  # not NULL and at least a header long
    null: np.ndarray  # NULL (no geometry)
    little_endian: np.ndarray
    code: np.ndarray  # the WKB type code (1 Point … 17 Triangle), dimensions removed
    has_z: np.ndarray
    has_m: np.ndarray
    has_srid: np.ndarray  # already EWKB with an SRID (not from GDAL): re-encoded through GEOS

    def fits(self, column_type: str) -> np.ndarray:
        """Whether each value's type fits a column of ``column_type`` (Geometry takes every type)."""
        if column_type not in _FAMILY_CODES:
            return self.present.copy()
        return self.present & np.isin(self.code, _FAMILY_CODES[column_type])

    def type_name(self, index: int) -> str:
        return TYPE_NAMES.get(int(self.code[index]), f"WKB type {int(self.code[index])}")


def as_binary(values: pa.Array | pa.ChunkedArray | np.ndarray | list[bytes | None]) -> pa.BinaryArray:
    """A geometry column (Arrow, or bytes / None values) as one Arrow binary array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(np.asarray(values, dtype=object), type=pa.binary())
    if not pa.types.is_binary(values.type):
        values = values.cast(pa.binary())
    return values


def _buffers(wkb: pa.BinaryArray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.frombuffer(wkb.buffers()[1], dtype=np.int32, count=len(wkb) + 1, offset=wkb.offset * 4)
    data_buffer = wkb.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    return offsets, data


def headers(wkb: pa.BinaryArray) -> WkbHeaders:
    n = len(wkb)
    null = np.asarray(wkb.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    offsets, data = _buffers(wkb)
    starts = offsets[:-1].astype(np.int64)
    present = ~null & (np.diff(offsets) >= 5)
    at = np.where(present, starts, 0)
    if not present.any():
        zeros = np.zeros(n, dtype=bool)
        return WkbHeaders(present, null, zeros, np.zeros(n, np.uint32), zeros, zeros, zeros)
    little = (data[at] == 1) & present
    raw = [data[at + k].astype(np.uint32) for k in range(1, 5)]
    le = raw[0] | (raw[1] << 8) | (raw[2] << 16) | (raw[3] << 24)
    be = (raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]
    full = np.where(little, le, be) * present
    plain = full & np.uint32(0x0FFFFFFF)
    thousands = plain // 1000
    has_z = present & (((full & np.uint32(Z_FLAG)) != 0) | np.isin(thousands, (1, 3)))
    has_m = present & (((full & np.uint32(M_FLAG)) != 0) | np.isin(thousands, (2, 3)))
    has_srid = present & ((full & np.uint32(SRID_FLAG)) != 0)
    return WkbHeaders(present, null, little, (plain % 1000).astype(np.uint32), has_z, has_m, has_srid)


def _header_array(code: np.ndarray, srid: int, count: int | None) -> pa.Array:
    """Little-endian EWKB headers: byte order, type code, SRID (when not 0), part count (when given)."""
    fields = [("order", "u1"), ("code", "<u4")] + ([("srid", "<u4")] if srid else [])
    fields += [("count", "<u4")] if count else []
    header = np.zeros(len(code), dtype=fields)
    header["order"], header["code"] = 1, code
    if srid:
        header["srid"] = srid
    if count:
        header["count"] = count
    width = header.dtype.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(code), [None, pa.py_buffer(header)])
    return fixed.cast(pa.binary())


def to_ewkb(wkb: pa.BinaryArray, heads: WkbHeaders, selected: np.ndarray, srid: int, multi_code: int) -> pa.Array:
    """EWKB of the ``selected`` values (little-endian, no M, no SRID of their own), NULL elsewhere;
    a single geometry becomes a one-part multi when ``multi_code`` (the column's) is given."""
    if not selected.any():
        return pa.nulls(len(wkb), pa.binary())
    flags = np.where(heads.has_z, np.uint32(Z_FLAG), np.uint32(0)) | np.uint32(SRID_FLAG if srid else 0)
    plain = _header_array(heads.code | flags, srid, None)
    # An explicit stop: pyarrow 26's binary_slice without one fails ("Negative buffer resize").
    encoded = pc.binary_join_element_wise(plain, pc.binary_slice(wkb, 5, 2**31 - 1), b"")
    promote = selected & (heads.code == multi_code - 3) if multi_code else np.zeros(len(wkb), dtype=bool)
    if promote.any():
        multi = _header_array(np.full(len(wkb), multi_code, dtype=np.uint32) | flags, srid, 1)
        encoded = pc.if_else(pa.array(promote), pc.binary_join_element_wise(multi, wkb, b""), encoded)
    return pc.if_else(pa.array(selected), encoded, pa.scalar(None, pa.binary()))
