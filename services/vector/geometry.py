"""Geometries of a batch → EWKB for the layer's column: validity policy, promotion, dimensions, CRS.

Rules (documented in docs/job-types.md, stage_vector):
- **Column type** from the layer's declared type: point layers stay ``Point`` (``MultiPoint`` when
  declared multi), line and polygon layers are always ``MultiLineString`` / ``MultiPolygon``
  (Shapefiles declare ``Polygon`` yet hold multi-part features; single parts are promoted), and
  layers of unknown or mixed type get a generic ``Geometry`` column.
- **Z is kept** when the layer declares it (2D features get z = 0); **M is always dropped** (few
  PostGIS tools use it and a mixed M/non-M column is not loadable).
- **Invalid geometries** (GEOS validity): ``make_valid`` repairs them (polygons keep only their
  polygonal parts), ``skip`` leaves the feature out, ``fail`` fails the load naming the first one.
  A geometry that does not fit the column (a line in a polygon layer, a repair that collapsed it)
  is skipped with that reason; features with no geometry are loaded with a NULL geometry.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from schemas.errors import PermanentTaskError

GeometryPolicy = Literal["make_valid", "skip", "fail"]

# shapely type ids
POINT, LINESTRING, POLYGON, MULTIPOINT, MULTILINESTRING, MULTIPOLYGON = 0, 1, 3, 4, 5, 6
_FAMILIES: dict[str, tuple[int, int]] = {  # column type → (single id, multi id)
    "Point": (POINT, POINT),
    "MultiPoint": (POINT, MULTIPOINT),
    "MultiLineString": (LINESTRING, MULTILINESTRING),
    "MultiPolygon": (POLYGON, MULTIPOLYGON),
}
_PROMOTE = {
    MULTIPOINT: shapely.multipoints,
    MULTILINESTRING: shapely.multilinestrings,
    MULTIPOLYGON: shapely.multipolygons,
}
_REASON_DETAIL = re.compile(r"\[.*\]$")


class VectorInputError(PermanentTaskError):
    """Input the loader cannot take (bad file, CRS, geometry under the ``fail`` policy): permanent."""


@dataclass(frozen=True)
class GeometryColumn:
    """The geometry column of one layer's table."""

    type_name: str  # Point, MultiPoint, MultiLineString, MultiPolygon, Geometry
    has_z: bool
    srid: int  # 0: unknown or not an EPSG code (the WKT is recorded instead)

    @property
    def sql(self) -> str:
        return f"geometry({self.type_name}{'Z' if self.has_z else ''}, {self.srid})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "has_z": self.has_z, "srid": self.srid}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeometryColumn:
        return cls(str(data["type"]), bool(data["has_z"]), int(data["srid"]))


def column_for(declared: str | None, srid: int) -> GeometryColumn:
    """The column for a layer whose declared geometry type is ``declared`` (pyogrio's read_info
    names: ``Polygon``, ``MultiPolygon Z``, ``Point M``, ``Unknown``…; None: no geometry)."""
    text = (declared or "Unknown").replace("3D ", "").strip()
    base, _, dims = text.partition(" ")
    has_z = "Z" in dims
    if base == "Point":
        type_name = "Point"
    elif base == "MultiPoint":
        type_name = "MultiPoint"
    elif base in {"LineString", "MultiLineString"}:
        type_name = "MultiLineString"
    elif base in {"Polygon", "MultiPolygon"}:
        type_name = "MultiPolygon"
    else:
        type_name = "Geometry"
    return GeometryColumn(type_name, has_z, srid)


def srid_of(crs: str | None) -> tuple[int, str | None]:
    """(SRID, WKT): the EPSG code of ``crs`` when it has one (WKT None), else (0, its WKT);
    (0, None) for no CRS. An unparseable CRS is bad input."""
    if not crs:
        return 0, None
    try:
        parsed = CRS.from_user_input(crs)
    except CRSError as exc:
        raise VectorInputError(f"unknown CRS ({str(exc).splitlines()[0][:200]})") from exc
    epsg = parsed.to_epsg(min_confidence=90)
    if epsg is not None:
        return epsg, None
    return 0, parsed.to_wkt()


def transformer_for(source_crs: str | None, target_srid: int | None) -> Transformer | None:
    """The reprojection from the source CRS to EPSG:``target_srid`` (None: keep the source CRS)."""
    if target_srid is None:
        return None
    if not source_crs:
        raise VectorInputError(f"the source has no CRS, so it cannot be reprojected to EPSG:{target_srid}")
    source = CRS.from_user_input(source_crs)
    target = CRS.from_epsg(target_srid)
    if source == target:
        return None
    return Transformer.from_crs(source, target, always_xy=True)


@dataclass
class BatchGeometries:
    """A batch's geometries ready for COPY: EWKB per kept row (None = NULL geometry)."""

    keep: np.ndarray  # bool per input row
    ewkb: list[bytes | None]  # one per kept row
    skipped: Counter[str]
    made_valid: int
    null_geometries: int
    bounds: tuple[float, float, float, float] | None


def _reason(text: str) -> str:
    return _REASON_DETAIL.sub("", text).strip() or text


def _fits(ids: np.ndarray, column: GeometryColumn) -> np.ndarray:
    """Whether each geometry (by shapely type id; -1 = none) fits the column (single or multi)."""
    if column.type_name == "Geometry":
        return np.ones(len(ids), dtype=bool)
    single, multi = _FAMILIES[column.type_name]
    return (ids == single) | (ids == multi)


def _promoted(geoms: np.ndarray, column: GeometryColumn) -> np.ndarray:
    """Single geometries as one-part multis when the column is multi."""
    if column.type_name == "Geometry":
        return geoms
    single, multi = _FAMILIES[column.type_name]
    if single == multi:
        return geoms
    promote = np.flatnonzero(shapely.get_type_id(geoms) == single)
    if promote.size:
        geoms = geoms.copy()
        geoms[promote] = _PROMOTE[multi](geoms[promote], indices=np.arange(promote.size))
    return geoms


def _dimensions(geoms: np.ndarray, column: GeometryColumn) -> np.ndarray:
    if not column.has_z:
        return shapely.force_2d(geoms)
    # XYZM keeps its Z (to_wkb with output_dimension 3 drops the M; force_3d would zero the Z);
    # XYM loses its M first, then every geometry without Z gets z = 0.
    geoms = geoms.copy()
    m_only = shapely.has_m(geoms) & ~shapely.has_z(geoms)
    if m_only.any():
        geoms[m_only] = shapely.force_2d(geoms[m_only])
    flat = ~shapely.has_z(geoms) & ~shapely.is_missing(geoms)
    if flat.any():
        geoms[flat] = shapely.force_3d(geoms[flat])
    return geoms


def _apply_policy(
    geoms: np.ndarray, raw: np.ndarray, policy: GeometryPolicy, first_fid: int, skipped: Counter[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(geometries, keep, invalid, made valid): unreadable ones left out, invalid ones repaired,
    left out or failed on by ``policy``."""
    keep = np.ones(len(geoms), dtype=bool)
    unreadable = shapely.is_missing(geoms) & np.array([v is not None for v in raw], dtype=bool)
    if unreadable.any():
        skipped["unreadable geometry"] += int(unreadable.sum())
        keep &= ~unreadable
    present = ~shapely.is_missing(geoms) & keep
    invalid = present & ~shapely.is_valid(geoms)
    made_valid = 0
    if invalid.any():
        where = np.flatnonzero(invalid)
        reasons = shapely.is_valid_reason(geoms[where])
        if policy == "fail":
            raise VectorInputError(f"feature {first_fid + int(where[0])} has an invalid geometry: {reasons[0]}")
        if policy == "skip":
            for reason in reasons:
                skipped[f"invalid geometry: {_reason(str(reason))}"] += 1
            keep[where] = False
        else:
            geoms = geoms.copy()
            geoms[where] = shapely.make_valid(geoms[where], method="structure", keep_collapsed=False)
            made_valid = int(where.size)
    empty = keep & ~shapely.is_missing(geoms) & shapely.is_empty(geoms) & invalid
    if empty.any():
        skipped["invalid geometry collapsed when made valid"] += int(empty.sum())
        keep &= ~empty
    return geoms, keep, invalid, made_valid


def prepare_geometries(
    wkb: Any,
    column: GeometryColumn,
    policy: GeometryPolicy,
    *,
    transformer: Transformer | None = None,
    first_fid: int = 0,
) -> BatchGeometries:
    """EWKB for one batch (``wkb``: an array of WKB values or None) under ``policy``."""
    raw = np.asarray(wkb, dtype=object)
    skipped: Counter[str] = Counter()
    geoms, keep, invalid, made_valid = _apply_policy(
        shapely.from_wkb(raw, on_invalid="ignore"), raw, policy, first_fid, skipped
    )
    present = ~shapely.is_missing(geoms) & keep
    ids = shapely.get_type_id(geoms)
    fits = _fits(ids, column)
    misfit = present & ~fits
    if misfit.any():
        for type_id in ids[misfit]:
            found = _TYPE_NAMES.get(int(type_id), str(type_id))
            skipped[f"geometry type {found} does not fit a {column.type_name} column"] += 1
        keep &= ~misfit
        present &= ~misfit
    changed = shapely.has_m(geoms) | (shapely.has_z(geoms) != column.has_z)
    if transformer is not None:
        changed[:] = True
    if made_valid:
        changed |= invalid
    ewkb, bounds = _encode(geoms, raw, present & ~changed, present & changed, column, transformer)
    nulls = int((keep & ~present).sum())
    return BatchGeometries(keep, list(ewkb[keep]), skipped, made_valid, nulls, bounds)


def _encode(
    geoms: np.ndarray,
    raw: np.ndarray,
    fast: np.ndarray,
    slow: np.ndarray,
    column: GeometryColumn,
    transformer: Transformer | None,
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """EWKB per geometry (None elsewhere) and the bounds of those encoded. Geometries that need no
    change (``fast``: valid, right dimensions, no reprojection) keep their source WKB, given an
    EWKB header (and a multi wrapper) by byte surgery; the others (``slow``) go through GEOS."""
    ewkb = np.full(len(geoms), None, dtype=object)
    multi_code = _MULTI_WKB.get(column.type_name, 0)
    ewkb[fast] = _ewkb_many(raw[fast], column.srid, multi_code)
    bounds = _bounds(geoms[fast])
    if slow.any():
        changed_geoms = _promoted(geoms[slow], column)
        if transformer is not None:
            changed_geoms = shapely.transform(changed_geoms, _reprojection(transformer), include_z=column.has_z)
        changed_geoms = _dimensions(changed_geoms, column)
        if column.srid:
            changed_geoms = shapely.set_srid(changed_geoms, column.srid)
        dimension = 3 if column.has_z else 2
        ewkb[slow] = shapely.to_wkb(
            changed_geoms, output_dimension=dimension, flavor="extended", include_srid=bool(column.srid)
        )
        bounds = union_bounds(bounds, _bounds(changed_geoms))
    return ewkb, bounds


_MULTI_WKB = {"MultiPoint": 4, "MultiLineString": 5, "MultiPolygon": 6}
_SRID_FLAG, _Z_FLAG = 0x20000000, 0x80000000


def _ewkb(raw: bytes, srid: int, multi_code: int) -> bytes:
    """EWKB of a (2D or Z, no M) ISO/OGC WKB value: SRID flag and SRID in the outer header, and a
    one-part multi around a single geometry when the column is multi (parts keep their ISO header,
    which PostGIS reads too)."""
    order = "<I" if raw[0] == 1 else ">I"
    code = struct.unpack_from(order, raw, 1)[0]
    plain = code & 0x0FFFFFFF
    base = plain % 1000
    flags = (_Z_FLAG if code & _Z_FLAG or plain // 1000 in (1, 3) else 0) | (_SRID_FLAG if srid else 0)
    srid_bytes = struct.pack(order, srid) if srid else b""
    if multi_code and base == multi_code - 3:
        return raw[:1] + struct.pack(order, multi_code | flags) + srid_bytes + struct.pack(order, 1) + raw
    return raw[:1] + struct.pack(order, base | flags) + srid_bytes + raw[5:]


def _header(order: np.ndarray, code: np.ndarray, srid: int, count: int | None) -> pa.Array:
    """Little-endian EWKB headers: byte order, type code, SRID (when not 0), part count (when given)."""
    fields = (
        [("order", "u1"), ("code", "<u4")] + ([("srid", "<u4")] if srid else []) + ([("count", "<u4")] if count else [])
    )
    header = np.zeros(len(code), dtype=fields)
    header["order"], header["code"] = order, code
    if srid:
        header["srid"] = srid
    if count:
        header["count"] = count
    width = header.dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(code), [None, pa.py_buffer(header)]).cast(
        pa.binary()
    )


def _ewkb_many(values: np.ndarray, srid: int, multi_code: int) -> list[bytes]:
    """``_ewkb`` of many values at once (Arrow kernels); per value when any is big-endian."""
    if not len(values):
        return []
    wkb = pa.array(values, type=pa.binary())
    offsets = np.frombuffer(wkb.buffers()[1], dtype=np.int32, count=len(wkb) + 1)
    data = np.frombuffer(wkb.buffers()[2], dtype=np.uint8)
    starts = offsets[:-1]
    order = data[starts]
    if not (order == 1).all():
        return [_ewkb(value, srid, multi_code) for value in values]
    code = sum(data[starts + k].astype(np.uint32) << np.uint32(8 * (k - 1)) for k in range(1, 5))
    plain = code & np.uint32(0x0FFFFFFF)
    base = plain % 1000
    has_z = ((code & np.uint32(_Z_FLAG)) != 0) | np.isin(plain // 1000, (1, 3))
    flags = np.where(has_z, np.uint32(_Z_FLAG), np.uint32(0)) | np.uint32(_SRID_FLAG if srid else 0)
    plain_header = _header(order, base.astype(np.uint32) | flags, srid, None)
    # An explicit stop: pyarrow 26's binary_slice without one fails ("Negative buffer resize").
    tail = pc.binary_slice(wkb, 5, 2**31 - 1)
    encoded = pc.binary_join_element_wise(plain_header, tail, b"")
    promote = (base == multi_code - 3) if multi_code else np.zeros(len(values), dtype=bool)
    if promote.any():
        multi_header = _header(order, np.uint32(multi_code) | flags, srid, 1)
        wrapped = pc.binary_join_element_wise(multi_header, wkb, b"")
        encoded = pc.if_else(pa.array(promote), wrapped, encoded)
    return list(encoded.to_pylist())


def _bounds(geoms: np.ndarray) -> tuple[float, float, float, float] | None:
    if not geoms.size:
        return None
    box = shapely.total_bounds(geoms)
    return None if np.isnan(box).any() else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


def _reprojection(transformer: Transformer) -> Any:
    def apply(coords: np.ndarray) -> np.ndarray:
        if coords.shape[1] == 3:
            x, y, z = transformer.transform(coords[:, 0], coords[:, 1], coords[:, 2])
            return np.column_stack([x, y, z])
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return apply


def union_bounds(
    a: tuple[float, float, float, float] | None, b: tuple[float, float, float, float] | None
) -> tuple[float, float, float, float] | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
