"""Geometries of a batch → EWKB for the layer's column: validity policy, promotion, dimensions, CRS.

Rules (documented in docs/job-types.md, stage_vector):
- **Column type** from the layer's declared type: point layers stay ``Point`` (``MultiPoint`` when
  declared multi), line and polygon layers are always ``MultiLineString`` / ``MultiPolygon``
  (Shapefiles declare ``Polygon`` yet hold multi-part features; single parts are promoted), and
  layers of unknown or mixed type get a generic ``Geometry`` column.
- **Z is kept** when the layer declares it (2D features get z = 0); **M is always dropped** (few
  PostGIS tools use it and a mixed M/non-M column is not loadable).
- **Invalid geometries** (GEOS validity): ``make_valid`` repairs them (polygons keep only their
  polygonal parts), ``skip`` leaves the feature out, ``fail`` fails the load naming the first one;
  ``unchecked`` does not look (no GEOS read at all for geometries that need no change, like
  ogr2ogr). A geometry that does not fit the column (a line in a polygon layer, a repair that collapsed it)
  is skipped with that reason; features with no geometry are loaded with a NULL geometry.
- **Curved geometries** (CircularString, CompoundCurve, CurvePolygon, MultiCurve, MultiSurface, and
  PolyhedralSurface / TIN / Triangle) are kept as they are, not linearized: a layer that declares
  curves gets a ``Geometry`` column; GEOS cannot read them, so they are never validated, and one
  that would need reprojection or a Z / M change is skipped with that reason.
"""

from __future__ import annotations

import re
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
from services.vector import wkb as wkb_io

GeometryPolicy = Literal["make_valid", "skip", "fail", "unchecked"]

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
    """A batch's geometries ready for COPY: EWKB per kept row (NULL = no geometry)."""

    keep: np.ndarray  # bool per input row
    ewkb: pa.Array  # binary, one per kept row
    skipped: Counter[str]
    made_valid: int
    null_geometries: int
    bounds: tuple[float, float, float, float] | None
    bounds_complete: bool = True  # False: some kept geometries were never read by GEOS (not in bounds)


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
    geoms: np.ndarray, unreadable: np.ndarray, policy: GeometryPolicy, fids: np.ndarray, skipped: Counter[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(geometries, keep, invalid, made valid): unreadable ones left out, invalid ones repaired,
    left out or failed on by ``policy`` (``unchecked``: validity is not looked at)."""
    keep = ~unreadable
    if unreadable.any():
        skipped["unreadable geometry"] += int(unreadable.sum())
    invalid = np.zeros(len(geoms), dtype=bool)
    if policy == "unchecked":
        return geoms, keep, invalid, 0
    invalid = ~shapely.is_missing(geoms) & keep & ~shapely.is_valid(geoms)
    made_valid = 0
    if invalid.any():
        where = np.flatnonzero(invalid)
        reasons = shapely.is_valid_reason(geoms[where])
        if policy == "fail":
            raise VectorInputError(f"feature {int(fids[where[0]])} has an invalid geometry: {reasons[0]}")
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


def _from_wkb(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(geometries, non-linear): GEOS geometries of WKB values; a collection holding curves, which
    GEOS cannot read, comes back missing and flagged."""
    try:
        return shapely.from_wkb(raw, on_invalid="ignore"), np.zeros(len(raw), dtype=bool)
    except NotImplementedError:  # "Nonlinear geometry types are not currently supported"
        geoms = np.full(len(raw), None, dtype=object)
        nonlinear = np.zeros(len(raw), dtype=bool)
        for i, value in enumerate(raw):
            try:
                geoms[i] = shapely.from_wkb(value, on_invalid="ignore")
            except NotImplementedError:
                nonlinear[i] = True
        return geoms, nonlinear


def prepare_geometries(
    wkb: Any,
    column: GeometryColumn,
    policy: GeometryPolicy,
    *,
    transformer: Transformer | None = None,
    first_fid: int = 0,
) -> BatchGeometries:
    """EWKB for one batch (``wkb``: an Arrow binary column, or WKB values / None) under ``policy``.

    Values that need no change (right type and dimensions, no reprojection, valid or not checked)
    keep their WKB under a new header (``services/vector/wkb.py``); only the others, and every linear
    geometry when validity is checked, are read by GEOS. Curved types, which GEOS cannot read, load
    as they are when they fit (a ``Geometry`` column, same dimensions, no reprojection)."""
    values = wkb_io.as_binary(wkb)
    heads = wkb_io.headers(values)
    skipped: Counter[str] = Counter()
    keep = heads.null | heads.present
    if (~keep).any():
        skipped["unreadable geometry"] += int((~keep).sum())
    fits = heads.fits(column.type_name)
    as_is = heads.little_endian & ~heads.has_m & ~heads.has_srid & (heads.has_z == column.has_z)
    as_is &= transformer is None
    linear = heads.present & np.isin(heads.code, wkb_io.LINEAR_CODES)
    surgery = ~linear & heads.present & fits & as_is
    via_geos = linear if policy != "unchecked" else linear & ~(fits & as_is)
    if policy == "unchecked":
        surgery |= linear & fits & as_is
    measured = np.zeros(len(values), dtype=bool)
    geos_ewkb, made_valid, bounds = None, 0, None
    if via_geos.any():
        geos_ewkb, made_valid, bounds = _through_geos(
            values, via_geos, column, policy, transformer, first_fid, keep, surgery, measured, skipped, fits & as_is
        )
    unusable = heads.present & keep & ~surgery & ~measured
    for i in np.flatnonzero(unusable):
        name = heads.type_name(int(i))
        if not fits[i]:
            skipped[f"geometry type {name} does not fit a {column.type_name} column"] += 1
        elif int(heads.code[i]) not in wkb_io.TYPE_NAMES:
            skipped["unreadable geometry"] += 1
        else:
            skipped[f"geometry type {name} cannot be reprojected or change dimensions (GEOS cannot read it)"] += 1
    keep &= ~unusable
    ewkb = wkb_io.to_ewkb(values, heads, surgery, column.srid, wkb_io.MULTI_CODES.get(column.type_name, 0))
    if geos_ewkb is not None:
        ewkb = pc.if_else(pa.array(surgery), ewkb, pa.array(geos_ewkb, type=pa.binary()))
    return BatchGeometries(
        keep=keep,
        ewkb=ewkb.filter(pa.array(keep)),
        skipped=skipped,
        made_valid=made_valid,
        null_geometries=int((keep & heads.null).sum()),
        bounds=bounds,
        bounds_complete=not (surgery & keep & ~measured).any(),
    )


def _through_geos(
    values: pa.BinaryArray,
    via_geos: np.ndarray,
    column: GeometryColumn,
    policy: GeometryPolicy,
    transformer: Transformer | None,
    first_fid: int,
    keep: np.ndarray,
    surgery: np.ndarray,
    measured: np.ndarray,
    skipped: Counter[str],
    as_is: np.ndarray,
) -> tuple[np.ndarray | None, int, tuple[float, float, float, float] | None]:
    """Read the ``via_geos`` values with GEOS: policy, misfits, and EWKB of those that change.
    Updates ``keep``, ``surgery`` (unchanged: byte surgery after all) and ``measured`` in place;
    (GEOS EWKB per row or None, made valid, bounds)."""
    index = np.flatnonzero(via_geos)
    raw = values.filter(pa.array(via_geos)).to_numpy(zero_copy_only=False)
    geoms, nonlinear = _from_wkb(raw)
    unreadable = shapely.is_missing(geoms) & ~nonlinear
    geoms, keep_g, invalid, made_valid = _apply_policy(geoms, unreadable, policy, first_fid + index, skipped)
    present = ~shapely.is_missing(geoms) & keep_g
    misfit = present & ~_fits(shapely.get_type_id(geoms), column)
    for type_id in shapely.get_type_id(geoms[misfit]):
        found = _TYPE_NAMES.get(int(type_id), str(type_id))
        skipped[f"geometry type {found} does not fit a {column.type_name} column"] += 1
    keep_g &= ~misfit
    present &= ~misfit
    changed = shapely.has_m(geoms) | (shapely.has_z(geoms) != column.has_z) | ~as_is[index] | invalid
    surgery[index[present & ~changed]] = True
    measured[index[present]] = True
    bounds = _bounds(geoms[present & ~changed])
    geos_ewkb = None
    if (present & changed).any():
        encoded, changed_bounds = _encode(geoms[present & changed], column, transformer)
        geos_ewkb = np.full(len(values), None, dtype=object)
        geos_ewkb[index[present & changed]] = encoded
        bounds = union_bounds(bounds, changed_bounds)
    keep[index] = keep_g | nonlinear
    surgery[index[nonlinear]] = as_is[index[nonlinear]]  # a collection holding curves: as it is, if it fits
    return geos_ewkb, made_valid, bounds


def _encode(
    geoms: np.ndarray, column: GeometryColumn, transformer: Transformer | None
) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """EWKB through GEOS (promoted, reprojected, re-dimensioned) and the bounds of what it encoded."""
    changed = _promoted(geoms, column)
    if transformer is not None:
        changed = shapely.transform(changed, _reprojection(transformer), include_z=column.has_z)
    changed = _dimensions(changed, column)
    if column.srid:
        changed = shapely.set_srid(changed, column.srid)
    dimension = 3 if column.has_z else 2
    encoded = shapely.to_wkb(changed, output_dimension=dimension, flavor="extended", include_srid=bool(column.srid))
    return encoded, _bounds(changed)


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
