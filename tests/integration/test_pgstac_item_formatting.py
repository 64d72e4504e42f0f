"""services/stac/item_formatting.format_items against pypgstac's own Loader.format_item, on real
Postgres with pgstac (the loader reads the collection's base item from it)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devstack.postgres import PostgresDatabase
from repositories.pgstac_migrator import apply_pgstac_migrations, one_connection
from services.stac.item_formatting import ewkb_hex, format_items
from services.stac.pgstac_loader import load_collections

pytestmark = pytest.mark.integration

GEOMETRIES: list[dict[str, Any] | None] = [
    {"type": "Point", "coordinates": [10.123456789012345, -20.5]},
    {"type": "Point", "coordinates": [1.0, 2.0, 3.5]},
    {"type": "LineString", "coordinates": [[0, 0], [1, 1], [2, 0.5]]},
    {
        "type": "Polygon",
        "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[2, 2], [3, 2], [3, 3], [2, 2]]],
    },
    {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[5, 5], [6, 5], [6, 6], [5, 5]]]]},
    {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
    {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Point", "coordinates": [1, 2]},
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
        ],
    },
    None,
]


@pytest.fixture(scope="module")
def conn(postgres_database: PostgresDatabase) -> Iterator[psycopg.Connection[Any]]:
    """One transaction for the module, rolled back: the session's other modules share pgstac."""
    conninfo = postgres_database.conninfo
    apply_pgstac_migrations(conninfo)
    with psycopg.connect(conninfo) as connection:
        connection.execute("SET search_path TO pgstac, public")
        yield connection
        connection.rollback()


def item(collection_id: str, index: int, geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"item-{index}",
        "collection": collection_id,
        "geometry": geometry,
        "bbox": [0, 0, 1, 1],
        "properties": {"datetime": f"2024-01-{1 + index:02d}T00:00:00Z", "eo:cloud_cover": index},
        "assets": {"data": {"href": f"https://example.com/{index}.tif", "type": "image/tiff"}},
        "links": [],
    }


def collection(collection_id: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "description": "formatting",
        "license": "other",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
        "item_assets": {"data": {"type": "image/tiff", "roles": ["data"]}},
        "links": [],
    }


def test_format_items_matches_pypgstac_format_item_for_every_geometry_type(conn: psycopg.Connection[Any]) -> None:
    from pypgstac.load import Loader

    collection_id = f"fmt-{secrets.token_hex(3)}"
    load_collections(conn, [collection(collection_id)], "insert")
    items = [item(collection_id, i, g) for i, g in enumerate(GEOMETRIES)]
    loader = Loader(one_connection(conn))
    expected = [loader.format_item(i) for i in items]

    assert format_items(loader, items) == expected
    assert [e["geometry"] is None for e in expected] == [g is None for g in GEOMETRIES]


def test_a_geometry_geos_cannot_read_takes_pypgstacs_path_and_its_error(conn: psycopg.Connection[Any]) -> None:
    from pypgstac.load import Loader

    collection_id = f"fmt-{secrets.token_hex(3)}"
    load_collections(conn, [collection(collection_id)], "insert")
    bad = {"type": "Polygon", "coordinates": "not coordinates"}
    assert ewkb_hex([GEOMETRIES[0], bad]) is None
    assert ewkb_hex([GEOMETRIES[0], {"type": "Feature", "geometry": GEOMETRIES[0]}]) is None
    loader = Loader(one_connection(conn))
    items = [item(collection_id, 0, GEOMETRIES[0]), item(collection_id, 1, bad)]
    with pytest.raises(Exception) as ours:
        format_items(loader, items)
    with pytest.raises(Exception) as theirs:
        loader.format_item(items[1])
    assert type(ours.value) is type(theirs.value)
