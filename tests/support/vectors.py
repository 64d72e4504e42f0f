"""Small real vector files for stage_vector's tests, written with pyogrio (GDAL from its wheel)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import shapely
from pyogrio.raw import write

BOWTIE = shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])  # self-intersecting: invalid
# A Lambert conformal conic with no EPSG code.
CUSTOM_LCC = "+proj=lcc +lat_1=41 +lat_2=47 +lat_0=44 +lon_0=7.3 +x_0=600000 +y_0=200000 +ellps=GRS80 +units=m +no_defs"


def _wkb(geoms: list[shapely.Geometry | None]) -> np.ndarray:
    return np.asarray(shapely.to_wkb(np.array(geoms, dtype=object)), dtype=object)


def multi_layer_gpkg(path: Path) -> Path:
    """Layer ``parcels`` (polygons and a multipolygon, one invalid, unicode / reserved / mixed-case
    column names, every attribute type; EPSG:3857) and layer ``wells`` (3D points, EPSG:4326)."""
    geoms = [
        shapely.box(0, 0, 100, 100),
        BOWTIE,
        shapely.MultiPolygon([shapely.box(200, 200, 300, 300), shapely.box(400, 400, 500, 500)]),
        None,
    ]
    fields = ["Name", "Größe", "select", "user", "count", "ratio", "active", "surveyed", "updated", "1st"]
    data = [
        np.array(["alpha", "beta", "gamma", "delta"], dtype=object),
        np.array([1, 2, 3, 4], dtype=np.int32),
        np.array(["s1", "s2", "s3", "s4"], dtype=object),
        np.array(["u1", "u2", "u3", "u4"], dtype=object),
        np.array([10**10, 2, 3, 4], dtype=np.int64),
        np.array([0.5, 1.5, 2.5, 3.5]),
        np.array([True, False, True, False]),
        np.array(["2024-01-02", "2024-02-03", "2024-03-04", "2024-04-05"], dtype="datetime64[D]"),
        np.array([dt.datetime(2024, 1, 2, 3, 4, 5)] * 4, dtype="datetime64[ms]"),
        np.array(["x", "y", "z", "w"], dtype=object),
    ]
    write(
        path, _wkb(geoms), data, fields, layer="parcels", driver="GPKG", geometry_type="MultiPolygon", crs="EPSG:3857"
    )
    points = [shapely.Point(7.0, 46.0, 500.0), shapely.Point(7.5, 46.5, 600.0)]
    write(
        path,
        _wkb(points),
        [np.array([1, 2], dtype=np.int64)],
        ["depth"],
        layer="wells",
        driver="GPKG",
        geometry_type="Point Z",
        crs="EPSG:4326",
        append=True,
    )
    return path


def shapefile(folder: Path, name: str = "roads") -> list[Path]:
    """A polygon shapefile with one single and one multi-part feature: .shp .shx .dbf .prj .cpg."""
    folder.mkdir(parents=True, exist_ok=True)
    geoms = [shapely.box(0, 0, 1, 1), shapely.MultiPolygon([shapely.box(2, 2, 3, 3), shapely.box(4, 4, 5, 5)])]
    write(
        folder / f"{name}.shp",
        _wkb(geoms),
        [np.array(["one", "two"], dtype=object)],
        ["label"],
        driver="ESRI Shapefile",
        geometry_type="Polygon",
        crs="EPSG:2056",
    )
    return sorted(folder.glob(f"{name}.*"))


def zipped_shapefile(folder: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for part in shapefile(folder):
            archive.write(part, f"data/{part.name}")
    return path


def geojson_mixed(path: Path) -> Path:
    """A FeatureCollection mixing Polygon and MultiPolygon, a nested property and a null geometry."""
    features = [
        {"type": "Feature", "properties": {"kind": "a", "tags": {"x": 1}}, "geometry": shapely.geometry.mapping(g)}
        for g in (shapely.box(0, 0, 1, 1), shapely.MultiPolygon([shapely.box(2, 2, 3, 3)]))
    ]
    features.append({"type": "Feature", "properties": {"kind": "none", "tags": None}, "geometry": None})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def geojsonseq_3d(path: Path) -> Path:
    lines = [
        json.dumps(
            {"type": "Feature", "properties": {"id": i}, "geometry": {"type": "Point", "coordinates": [i, i, 10.0 * i]}}
        )
        for i in range(5)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def flatgeobuf_custom_crs(path: Path) -> Path:
    """Lines in a CRS that has no EPSG code."""
    geoms = [shapely.LineString([(600000, 200000), (600100, 200100)]), shapely.LineString([(1, 1), (2, 2)])]
    write(
        path,
        _wkb(geoms),
        [np.array([1.0, 2.0])],
        ["width"],
        driver="FlatGeobuf",
        geometry_type="LineString",
        crs=CUSTOM_LCC,
    )
    return path


def gpkg_without_crs(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "'crs' was not provided": that is the point
        geoms = _wkb([shapely.Point(1, 2), shapely.Point(3, 4)])
        write(path, geoms, [np.array([1, 2])], ["n"], driver="GPKG", geometry_type="Point")
    return path


def csv_wkt(path: Path) -> Path:
    path.write_text(
        'id,name,wkt\n1,first,"POINT (1 2)"\n2,second,"POINT (3 4)"\n3,third,"POLYGON ((0 0,1 0,1 1,0 0))"\n'
    )
    return path


def csv_lonlat(path: Path) -> Path:
    path.write_text("station,lon,lat,temp\nA,7.1,46.2,12.5\nB,8.2,47.3,9.75\nC,6.5,46.5,\n")
    return path


def zip_bomb(path: Path, inflated_bytes: int = 200 * 1024 * 1024) -> Path:
    """A zip whose one member inflates from a few hundred KB to ``inflated_bytes`` of zeros."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("bomb.geojson", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (4 * 1024 * 1024)
        for _ in range(inflated_bytes // len(chunk)):
            member.write(chunk)
    return path


def points_gpkg(path: Path, count: int, *, layer: str = "points") -> Path:
    """``count`` points in EPSG:4326 with an integer attribute (for fan-out and retry tests)."""
    xs = np.linspace(0, 10, count)
    geoms = shapely.points(xs, xs / 2)
    write(
        path,
        _wkb(list(geoms)),
        [np.arange(count, dtype=np.int64)],
        ["seq"],
        layer=layer,
        driver="GPKG",
        geometry_type="Point",
        crs="EPSG:4326",
    )
    return path


def _coords(points: list[tuple[float, float]]) -> bytes:
    return struct.pack("<I", len(points)) + b"".join(struct.pack("<dd", x, y) for x, y in points)


def _iso(code: int, body: bytes) -> bytes:
    return struct.pack("<BI", 1, code) + body


def _parts(code: int, *parts: bytes) -> bytes:
    return _iso(code, struct.pack("<I", len(parts)) + b"".join(parts))


ARC = [(0.0, 0.0), (1.0, 1.0), (2.0, 0.0), (1.0, -1.0), (0.0, 0.0)]  # a closed circular string: a circle
CIRCULAR_STRING = _iso(8, _coords([(0, 0), (1, 1), (2, 0)]))
COMPOUND_CURVE = _parts(9, CIRCULAR_STRING, _iso(2, _coords([(2, 0), (3, 0)])))
CURVE_POLYGON = _parts(10, _iso(8, _coords(ARC)))
MULTI_CURVE = _parts(11, _iso(2, _coords([(0, 5), (1, 5)])), CIRCULAR_STRING)
MULTI_SURFACE = _parts(12, CURVE_POLYGON, _iso(3, struct.pack("<I", 1) + _coords([(5, 5), (6, 5), (6, 6), (5, 5)])))


def curves_gpkg(path: Path) -> Path:
    """Layer ``arcs`` declared CURVEPOLYGON (a curve polygon, a plain polygon, a NULL) and layer
    ``curves`` of type GEOMETRY holding each curved type. pyogrio cannot declare a curved layer type,
    so the layer is written as GEOMETRY and its ``gpkg_geometry_columns`` row set to CURVEPOLYGON,
    as GDAL itself writes it."""
    arcs = np.array([CURVE_POLYGON, shapely.to_wkb(shapely.box(0, 0, 1, 1)), None], dtype=object)
    write(
        path, arcs, [np.array([1, 2, 3])], ["n"], layer="arcs", driver="GPKG", geometry_type="Unknown", crs="EPSG:2056"
    )
    every = np.array([CIRCULAR_STRING, COMPOUND_CURVE, CURVE_POLYGON, MULTI_CURVE, MULTI_SURFACE], dtype=object)
    names = np.array(["CircularString", "CompoundCurve", "CurvePolygon", "MultiCurve", "MultiSurface"], dtype=object)
    write(
        path,
        every,
        [names],
        ["kind"],
        layer="curves",
        driver="GPKG",
        geometry_type="Unknown",
        crs="EPSG:2056",
        append=True,
    )
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE gpkg_geometry_columns SET geometry_type_name = 'CURVEPOLYGON' WHERE table_name = 'arcs'")
    return path


def shapefile_upper_case(folder: Path) -> list[Path]:
    """The ``shapefile`` fixture named ``PARCELS.SHP`` with sidecars ``PARCELS.DBF``, ``.Shx``, ``.PRJ``, ``.cpg``."""
    cases = {".shp": ".SHP", ".dbf": ".DBF", ".shx": ".Shx", ".prj": ".PRJ", ".cpg": ".cpg"}
    return [part.rename(part.with_name("PARCELS" + cases[part.suffix])) for part in shapefile(folder, "parcels")]
