"""GeoParquet domain code without services: Hilbert keys, the geo metadata, the writer, the parameters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from pydantic import ValidationError
from pyproj import CRS

from controllers.export_geoparquet_parameters import ExportGeoParquetParameters, item_blob, part_blob
from services.vector.geometry import VectorInputError
from services.vector.geoparquet import (
    GeometrySummary,
    WriteOptions,
    cell_of,
    concatenate,
    geo_metadata,
    hilbert_index,
    hilbert_keys,
    hilbert_order,
    wkb_types,
    write_sorted,
)


def test_hilbert_index_on_a_2x2_grid_is_the_u_shape() -> None:
    x, y = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0])
    assert hilbert_index(x, y, 1).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("level", [2, 3, 5])
def test_hilbert_index_visits_every_cell_once_stepping_to_a_neighbour(level: int) -> None:
    side = 1 << level
    x, y = np.meshgrid(np.arange(side), np.arange(side))
    keys = hilbert_index(x.ravel(), y.ravel(), level)
    assert sorted(keys.tolist()) == list(range(side * side))
    order = np.argsort(keys)
    steps = np.abs(np.diff(x.ravel()[order])) + np.abs(np.diff(y.ravel()[order]))
    assert set(steps.tolist()) == {1}


def test_fine_keys_start_with_the_coarse_cell_key() -> None:
    """What makes parts of coarse cells concatenate into one ordered file."""
    rng = np.random.default_rng(3)
    extent = (100.0, -50.0, 400.0, 150.0)
    cx, cy = rng.uniform(100, 400, 5000), rng.uniform(-50, 150, 5000)
    bounds = np.stack([cx, cy, cx, cy], axis=1)
    fine = hilbert_keys(bounds, extent)
    coarse = hilbert_index(cell_of(cx, 100.0, 300.0, 8), cell_of(cy, -50.0, 200.0, 8), 8)
    assert np.array_equal(fine >> np.uint64(2 * (16 - 8)), coarse)


def test_hilbert_order_groups_nearby_rows_and_puts_missing_geometries_last() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 1000, (4000, 2))
    bounds = np.concatenate([points, points], axis=1)
    bounds[17] = np.nan
    order = hilbert_order(bounds, (0.0, 0.0, 1000.0, 1000.0))
    assert order[-1] == 17 and sorted(order.tolist()) == list(range(4000))
    ordered = points[order[:-1]]
    hilbert_step = np.median(np.hypot(*np.diff(ordered, axis=0).T))
    random_step = np.median(np.hypot(*np.diff(points, axis=0).T))
    assert hilbert_step < random_step / 10


def test_geo_metadata_follows_geoparquet_1_1() -> None:
    summary = GeometrySummary(bbox=[1.0, 2.0, 3.0, 4.0], types={"Polygon", "MultiPolygon"})
    meta = geo_metadata("geom", summary, CRS.from_epsg(2056), "1.1.0")
    assert meta["version"] == "1.1.0" and meta["primary_column"] == "geom"
    column = meta["columns"]["geom"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["MultiPolygon", "Polygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 2056} and column["bbox"] == [1.0, 2.0, 3.0, 4.0]
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    unknown = geo_metadata("geom", summary, None, "1.0.0")["columns"]["geom"]
    assert unknown["crs"] is None and "covering" not in unknown  # null = unknown, not the CRS84 default


def _table(count: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    points = shapely.points(rng.uniform(0, 100, count), rng.uniform(0, 50, count))
    wkb = [None if i == 2 else g for i, g in enumerate(shapely.to_wkb(points).tolist())]
    return pa.table({"id": pa.array(range(count), pa.int64()), "geometry": pa.array(wkb, pa.binary())})


def test_write_sorted_writes_row_groups_bbox_column_and_metadata(tmp_path: Path) -> None:
    table = _table(1000)
    path = tmp_path / "out.parquet"
    summary = write_sorted(path, table, "geometry", CRS.from_epsg(4326), WriteOptions(row_group_size=300), extent=None)
    assert summary["rows"] == 1000 and summary["row_groups"] == 4 and summary["geometry_types"] == ["Point"]
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(4)] == [300, 300, 300, 100]
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert [meta.row_group(0).column(i).path_in_schema for i in (1, 2)] == ["geometry", "bbox.xmin"]
    assert not meta.row_group(0).column(1).is_stats_set  # no min/max of WKB bytes
    written = pq.read_table(path)
    first_group = [b["xmin"] for b in written.column("bbox").to_pylist()[:300] if b is not None]
    assert meta.row_group(0).column(2).statistics.min == min(first_group)  # readers prune with these
    geo = json.loads(written.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["bbox"] == summary["bbox"]
    assert written.column("id").to_pylist()[-1] == 2  # the NULL geometry sorts last
    assert written.column("bbox").to_pylist()[-1] is None
    boxes = written.column("bbox").to_pylist()[:-1]
    geoms = shapely.from_wkb(written.column("geometry").to_pylist()[:-1])
    assert [[b["xmin"], b["ymin"], b["xmax"], b["ymax"]] for b in boxes] == shapely.bounds(geoms).tolist()
    assert sorted(written.column("id").to_pylist()) == list(range(1000))


def test_concatenate_re_cuts_row_groups_and_unions_the_metadata(tmp_path: Path) -> None:
    options = WriteOptions(row_group_size=250)
    parts = []
    for i, count in enumerate((400, 330)):
        parts.append(tmp_path / f"p{i}.parquet")
        write_sorted(parts[-1], _table(count, seed=i), "geometry", None, options, extent=(0.0, 0.0, 100.0, 50.0))
    summary = concatenate(tmp_path / "all.parquet", parts, "geometry", None, options)
    meta = pq.ParquetFile(tmp_path / "all.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [250, 250, 230]
    assert summary["rows"] == 730
    boxes = [json.loads(pq.read_schema(p).metadata[b"geo"])["columns"]["geometry"]["bbox"] for p in parts]
    expected = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    assert summary["bbox"] == expected


def test_parameters_need_exactly_one_source_and_a_parquet_name() -> None:
    assert ExportGeoParquetParameters.model_validate({"table": "Grid Über"}).compression == "zstd"
    for bad in ({}, {"table": "a", "source_blob": "b.gpkg"}, {"table": "a", "blob_name": "x.csv"}, {"table": ""}):
        with pytest.raises(ValidationError):
            ExportGeoParquetParameters.model_validate(bad)


def test_output_names() -> None:
    assert part_blob("a/b.parquet", "file", "j" * 64, 0, 1) == "a/b.parquet"
    assert part_blob("a/b.parquet", "dataset", "j" * 64, 3, 5) == "a/b.parquet/part-00003.parquet"
    assert part_blob("a/b.parquet", "file", "j" * 64, 3, 5) == f"a/b.parquet.parts/{'j' * 16}/part-00003.parquet"
    assert item_blob("a/b.parquet") == "a/b.item.json"


def test_wkb_types_read_the_header_like_shapely() -> None:
    geometries = [
        shapely.Point(1, 2),
        shapely.Point(1, 2, 3),
        shapely.box(0, 0, 1, 1),
        shapely.MultiPolygon([shapely.box(0, 0, 1, 1)]),
        shapely.LineString([(0, 0, 1), (1, 1, 1)]),
        None,
    ]
    little = [None if g is None else shapely.to_wkb(g, flavor="iso") for g in geometries]
    big = [None if g is None else shapely.to_wkb(g, byte_order=0, flavor="iso") for g in geometries]
    ewkb = [None if g is None else shapely.to_wkb(g, flavor="extended") for g in geometries]
    expected_ids = [0, 0, 3, 6, 1, -1]
    expected_z = [False, True, False, False, True, False]
    for values in (little, big, ewkb):
        ids, has_z = wkb_types(pa.array(values, pa.binary()).slice(0))
        assert ids.tolist() == expected_ids and has_z.tolist() == expected_z
    ids, _ = wkb_types(pa.array(little, pa.binary()).slice(2, 3))
    assert ids.tolist() == [3, 6, 1]  # offsets of a sliced array


def test_a_source_column_named_bbox_is_refused_with_a_reason(tmp_path: Path) -> None:
    table = _table(5).append_column("bbox", pa.array(["x"] * 5))
    with pytest.raises(VectorInputError, match="bbox covering column needs the name"):
        write_sorted(tmp_path / "x.parquet", table, "geometry", None, WriteOptions(), extent=None)
    summary = write_sorted(tmp_path / "y.parquet", table, "geometry", None, WriteOptions(version="1.0.0"), extent=None)
    geo = json.loads(pq.read_schema(tmp_path / "y.parquet").metadata[b"geo"])
    assert summary["rows"] == 5 and geo["version"] == "1.0.0" and "covering" not in geo["columns"]["geometry"]
