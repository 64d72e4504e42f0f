"""stage_vector's pure parts: laundering, type mapping, geometry policy, plans, fan-out, parameters."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import shapely
from pydantic import ValidationError

from controllers.stage_vector import StageVectorController, StageVectorParameters, feature_ranges, swap_parameters
from devstack import bootstrap
from services.vector import wkb as wkb_io
from services.vector.geometry import GeometryColumn, VectorInputError, column_for, prepare_geometries, srid_of
from services.vector.names import default_table_name, identifier_problem, launder, unique_names
from services.vector.source import check_zip, extension_of
from services.vector.types import column_type, column_values
from tests.support import vectors


@pytest.mark.parametrize(
    "name, laundered",
    [
        ("Name", "name"),
        ("Größe", "grosse"),
        ("café au lait", "cafe_au_lait"),
        ("select", "select_"),
        ("user", "user_"),
        ("1st", "_1st"),
        ("a--b  c", "a_b_c"),
        ("日本", "col"),
        ("x" * 80, "x" * 63),
    ],
)
def test_launder(name: str, laundered: str) -> None:
    assert launder(name) == laundered
    assert identifier_problem(laundered) is None


def test_unique_names_keep_order_and_avoid_reserved_columns() -> None:
    assert unique_names(["fid", "Geom", "a", "A", "a"], taken=("fid", "geom")) == ["fid_2", "geom_2", "a", "a_2", "a_3"]


@pytest.mark.parametrize("name", ["Bad", "1a", "a-b", "select", "pg_x", "", "a" * 64])
def test_identifier_problems(name: str) -> None:
    assert identifier_problem(name) is not None


def test_default_table_names() -> None:
    assert default_table_name("dir/Survey 2024.gpkg", "parcels", 1) == "survey_2024"
    assert default_table_name("dir/survey.gpkg", "Parcels", 2) == "survey_parcels"
    assert default_table_name("roads.zip", None, 1) == "roads"


@pytest.mark.parametrize(
    "arrow_type, sql",
    [
        (pa.int8(), "smallint"),
        (pa.uint16(), "integer"),
        (pa.int32(), "integer"),
        (pa.int64(), "bigint"),
        (pa.uint64(), "numeric"),
        (pa.float32(), "real"),
        (pa.float64(), "double precision"),
        (pa.bool_(), "boolean"),
        (pa.date32(), "date"),
        (pa.time64("us"), "time"),
        (pa.timestamp("ms"), "timestamp"),
        (pa.timestamp("ms", tz="+02:00"), "timestamptz"),
        (pa.string(), "text"),
        (pa.large_string(), "text"),
        (pa.binary(), "bytea"),
        (pa.list_(pa.string()), "jsonb"),
        (pa.null(), "text"),
    ],
)
def test_arrow_types_map_to_postgres(arrow_type: pa.DataType, sql: str) -> None:
    assert column_type(pa.field("x", arrow_type)).sql == sql


def test_gdal_json_fields_are_jsonb_and_parsed() -> None:
    field = pa.field("x", pa.string(), metadata={b"ARROW:extension:name": b"arrow.json"})
    ctype = column_type(field)
    assert ctype.sql == "jsonb"
    assert column_values(pa.array(['{"a": 1}', None]), ctype) == [{"a": 1}, None]


def test_text_values_lose_nul_and_other_types_become_text() -> None:
    text = column_type(pa.field("x", pa.string()))
    assert column_values(pa.array(["a\x00b"]), text) == ["ab"]
    assert column_values(pa.array([None], pa.null()), text) == [None]


@pytest.mark.parametrize(
    "declared, expected",
    [
        ("Point", ("Point", False)),
        ("MultiPoint", ("MultiPoint", False)),
        ("LineString", ("MultiLineString", False)),
        ("Polygon", ("MultiPolygon", False)),
        ("MultiPolygon Z", ("MultiPolygon", True)),
        ("3D Point", ("Point", False)),
        ("Point Z", ("Point", True)),
        ("Polygon M", ("MultiPolygon", False)),
        ("Unknown", ("Geometry", False)),
        (None, ("Geometry", False)),
    ],
)
def test_geometry_column_rule(declared: str | None, expected: tuple[str, bool]) -> None:
    column = column_for(declared, 4326)
    assert (column.type_name, column.has_z) == expected


def _wkb(*geoms: Any) -> np.ndarray:
    return np.asarray(shapely.to_wkb(np.array(geoms, dtype=object)), dtype=object)


def test_make_valid_promotes_and_sets_the_srid() -> None:
    column = GeometryColumn("MultiPolygon", False, 3857)
    batch = prepare_geometries(_wkb(shapely.box(0, 0, 1, 1), vectors.BOWTIE, None), column, "make_valid")
    assert batch.keep.tolist() == [True, True, True] and batch.made_valid == 1 and batch.null_geometries == 1
    geoms = shapely.from_wkb(np.array([g for g in batch.ewkb.to_pylist() if g is not None], dtype=object))
    assert shapely.get_type_id(geoms).tolist() == [6, 6] and shapely.is_valid(geoms).all()
    assert shapely.get_srid(geoms).tolist() == [3857, 3857]
    assert batch.bounds == (0.0, 0.0, 10.0, 10.0)


def test_skip_counts_reasons_and_fail_names_the_feature() -> None:
    column = GeometryColumn("MultiPolygon", False, 0)
    skipped = prepare_geometries(_wkb(vectors.BOWTIE, shapely.Point(0, 0)), column, "skip")
    assert skipped.keep.tolist() == [False, False] and len(skipped.ewkb) == 0
    assert skipped.skipped == {
        "invalid geometry: Self-intersection": 1,
        "geometry type Point does not fit a MultiPolygon column": 1,
    }
    with pytest.raises(VectorInputError, match="feature 7 has an invalid geometry: Self-intersection"):
        prepare_geometries(_wkb(vectors.BOWTIE), column, "fail", first_fid=7)


def test_z_kept_or_dropped_and_m_always_dropped() -> None:
    zm = shapely.from_wkt("POINT ZM (1 2 3 4)")
    m = shapely.from_wkt("POINT M (1 2 4)")
    flat = shapely.Point(5, 6)
    with_z = prepare_geometries(_wkb(zm, m, flat), GeometryColumn("Point", True, 0), "make_valid")
    assert [shapely.to_wkt(g) for g in shapely.from_wkb(np.array(with_z.ewkb.to_pylist(), dtype=object))] == [
        "POINT Z (1 2 3)",
        "POINT Z (1 2 0)",
        "POINT Z (5 6 0)",
    ]
    without = prepare_geometries(_wkb(zm), GeometryColumn("Point", False, 0), "make_valid")
    assert shapely.to_wkt(shapely.from_wkb(without.ewkb.to_pylist()[0])) == "POINT (1 2)"


def test_srid_of_epsg_wkt_none_and_garbage() -> None:
    assert srid_of("EPSG:2056") == (2056, None)
    assert srid_of(None) == (0, None)
    srid, wkt = srid_of(vectors.CUSTOM_LCC)
    assert srid == 0 and wkt is not None and wkt.startswith("PROJCRS")
    with pytest.raises(VectorInputError, match="unknown CRS"):
        srid_of("not a crs at all")


def test_zip_bomb_and_not_a_zip_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VectorInputError, match="possible zip bomb"):
        check_zip(vectors.zip_bomb(tmp_path / "bomb.zip", inflated_bytes=80 * 1024 * 1024))
    (tmp_path / "fake.zip").write_bytes(b"nope")
    with pytest.raises(VectorInputError, match="not a readable zip"):
        check_zip(tmp_path / "fake.zip")
    assert extension_of("a/b.SHP") == ".shp" and extension_of("a.b/c") == ""


def test_feature_ranges_cover_the_layer_and_end_open() -> None:
    assert feature_ranges(0, 10) == [(0, None)]
    assert feature_ranges(10, 10) == [(0, None)]
    assert feature_ranges(25, 10) == [(0, 10), (10, 20), (20, None)]


def test_parameters_validate_table_and_schema_and_accept_schema_alias() -> None:
    params = StageVectorParameters.model_validate({"blob_name": "a.gpkg", "schema": "gis", "table": "roads"})
    assert params.target_schema == "gis" and params.if_exists == "fail" and params.geometry_policy == "make_valid"
    again = StageVectorParameters.model_validate(params.model_dump(mode="json"))
    assert again == params
    assert StageVectorParameters.model_validate({"prefix": "drop/"}).source_label == "bronze/drop/*"
    for both_or_none in ({}, {"blob_name": "a.gpkg", "prefix": "a/"}):
        with pytest.raises(ValidationError, match="exactly one of blob_name and prefix"):
            StageVectorParameters.model_validate(both_or_none)
    for bad in ({"table": "Roads"}, {"table": "select"}, {"schema": "1x"}, {"if_exists": "merge"}, {"extra": 1}):
        with pytest.raises(ValidationError) as caught:
            StageVectorParameters.model_validate({"blob_name": "a.gpkg", **bad})
        assert caught.value.errors()[0]["loc"][0] in {"table", "schema", "if_exists", "extra"}


def test_create_tasks_fan_out_per_layer_and_swap_collects_the_plans() -> None:
    controller = StageVectorController(storage=None, database=None, max_tasks_per_stage=100)  # type: ignore[arg-type]
    params = StageVectorParameters(blob_name="a.gpkg", features_per_task=10)
    assert [t.key for t in controller.create_tasks(1, params, {})] == ["source"]
    layers = [
        {"table": "a", "feature_count": 25, "staging": "_geoetl_stage_a"},
        {"table": "b", "feature_count": 0, "staging": "_geoetl_stage_b"},
    ]
    inspected = {"source": {"schema": "g", "extension_schema": "public", "layers": layers}}
    tasks = controller.create_tasks(2, params, inspected)
    assert [t.key for t in tasks] == ["l000_p00000", "l000_p00001", "l000_p00002", "l001_p00000"]
    assert [(t.parameters["start"], t.parameters["stop"]) for t in tasks] == [(0, 10), (10, 20), (20, None), (0, None)]
    assert tasks[0].parameters["staging_tables"] == ["_geoetl_stage_a", "_geoetl_stage_b"]
    loads = {
        "l000_p00000": {"table": "a", "written": 10, "plan": layers[0], "schema": "g", "extension_schema": "public"},
        "l000_p00001": {"table": "a", "written": 9, "schema": "g", "extension_schema": "public"},
        "l001_p00000": {"table": "b", "written": 0, "plan": layers[1], "schema": "g", "extension_schema": "public"},
    }
    swap = swap_parameters(loads)
    assert swap["schema"] == "g" and [(x["plan"]["table"], x["written"]) for x in swap["layers"]] == [
        ("a", 19),
        ("b", 0),
    ]
    [task] = controller.create_tasks(3, params, loads)
    assert task.key == "swap"


def test_bootstrap_installs_postgis_for_the_installed_postgres() -> None:
    requirement = bootstrap.REQUIREMENTS["postgis"]
    assert requirement.apt_packages == (f"postgresql-{bootstrap.postgres_major()}-postgis-3",)
    assert requirement.present(), "make system-deps installs PostGIS beside the Postgres server"


@pytest.mark.parametrize("srid, multi_code", [(0, 0), (2056, 0), (2056, 6), (0, 6)])
def test_ewkb_byte_surgery_sets_srid_and_promotes_without_geos(srid: int, multi_code: int) -> None:
    geoms = [
        shapely.box(0, 0, 1, 1),
        shapely.MultiPolygon([shapely.box(2, 2, 3, 3)]),
        shapely.Polygon([(0, 0, 1), (1, 0, 2), (1, 1, 3), (0, 0, 1)]),
        shapely.Point(1, 2),
    ]
    values = pa.array(list(_wkb(None, *geoms)), type=pa.binary()).slice(1)  # a slice: offsets start past 0
    heads = wkb_io.headers(values)
    assert heads.code.tolist() == [3, 6, 3, 1] and heads.has_z.tolist() == [False, False, True, False]
    encoded = wkb_io.to_ewkb(values, heads, np.array([True, True, True, False]), srid, multi_code)
    assert encoded.null_count == 1
    decoded = shapely.from_wkb(np.array(encoded.to_pylist()[:3], dtype=object))
    assert shapely.get_srid(decoded).tolist() == [srid] * 3
    assert shapely.equals(decoded, shapely.from_wkb(_wkb(*geoms[:3]))).all()
    expected_types = [6, 6, 6] if multi_code else [3, 6, 3]
    assert shapely.get_type_id(decoded).tolist() == expected_types


def test_unchecked_loads_an_invalid_geometry_as_it_is_and_leaves_bounds_to_the_database() -> None:
    column = GeometryColumn("MultiPolygon", False, 2056)
    batch = prepare_geometries(_wkb(vectors.BOWTIE, shapely.Point(0, 0), None), column, "unchecked")
    assert batch.keep.tolist() == [True, False, True] and batch.made_valid == 0 and batch.null_geometries == 1
    assert batch.skipped == {"geometry type Point does not fit a MultiPolygon column": 1}
    loaded = shapely.from_wkb(batch.ewkb.to_pylist()[0])
    assert not shapely.is_valid(loaded) and shapely.get_type_id(loaded) == 6
    assert not batch.bounds_complete


def test_curved_geometries_pass_through_a_geometry_column_and_misfit_elsewhere() -> None:
    curve = _curve_polygon_wkb()
    values = [curve, shapely.to_wkb(shapely.box(0, 0, 1, 1)), b"\x01\x63"]
    loaded = prepare_geometries(values, GeometryColumn("Geometry", False, 2056), "make_valid")
    assert loaded.keep.tolist() == [True, True, False] and loaded.skipped == {"unreadable geometry": 1}
    first = loaded.ewkb.to_pylist()[0]
    assert first[:1] == b"\x01" and int.from_bytes(first[1:5], "little") == 10 | wkb_io.SRID_FLAG
    assert int.from_bytes(first[5:9], "little") == 2056 and first[9:] == curve[5:]
    assert not loaded.bounds_complete
    misfit = prepare_geometries([curve], GeometryColumn("MultiPolygon", False, 0), "make_valid")
    assert misfit.skipped == {"geometry type CurvePolygon does not fit a MultiPolygon column": 1}
    flat = prepare_geometries([curve], GeometryColumn("Geometry", True, 0), "make_valid")
    assert list(flat.skipped) == [
        "geometry type CurvePolygon cannot be reprojected or change dimensions (GEOS cannot read it)"
    ]


def _curve_polygon_wkb() -> bytes:
    """CURVEPOLYGON(CIRCULARSTRING(0 0, 1 1, 2 0, 1 -1, 0 0)) as little-endian ISO WKB."""
    points = [(0, 0), (1, 1), (2, 0), (1, -1), (0, 0)]
    ring = struct.pack("<BII", 1, 8, len(points)) + b"".join(struct.pack("<dd", x, y) for x, y in points)
    return struct.pack("<BII", 1, 10, 1) + ring


def test_load_slices_halve_large_ranges_and_keep_the_open_end() -> None:
    from controllers.stage_vector_parameters import MIN_SLICE_FEATURES, load_slices

    assert load_slices(0, 100_000, 250_000) == [(0, 50_000), (50_000, 100_000)]
    assert load_slices(200_000, None, 250_000) == [(200_000, 225_000), (225_000, None)]
    small = 2 * MIN_SLICE_FEATURES - 1
    assert load_slices(0, small, 10**6) == [(0, small)]
    assert load_slices(5, None, 3) == [(5, None)]  # a count that was short: one open-ended slice
