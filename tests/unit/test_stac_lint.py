"""services/stac/lint.py: ids, datetimes, bbox vs geometry, the antimeridian."""

from __future__ import annotations

from typing import Any

import pytest

from services.stac import lint
from services.stac.validation import Problem

ITEM: dict[str, Any] = {"type": "Feature", "properties": {}}


def types(problems: list[Problem]) -> list[str]:
    return [p.type for p in problems]


# --- lint ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a b", "a/b", "..", "ü", "", "x" * 257])
def test_bad_ids(bad: str) -> None:
    assert types(lint.id_problems({"id": bad})) == [lint.INVALID_ID]


def test_good_ids() -> None:
    assert lint.id_problems({"id": "dem-tile_r0_c1.v2~x"}) == []


def test_datetime_lint() -> None:
    def problems(**props: Any) -> list[str]:
        return [p.message for p in lint.datetime_problems({**ITEM, "properties": props})]

    assert problems(datetime="2024-01-02T00:00:00Z") == []
    assert problems(datetime="2024-01-02T00:00:00+02:00") == []
    assert "RFC 3339" in problems(datetime="2024-01-02")[0]
    assert "RFC 3339" in problems(datetime="2024-01-02T00:00:00")[0]  # no time zone
    assert "RFC 3339" in problems(datetime="2024-13-02T00:00:00Z")[0]
    assert "null without" in problems(datetime=None)[0]
    assert problems(datetime=None, start_datetime="2024-01-01T00:00:00Z", end_datetime="2024-01-02T00:00:00Z") == []
    assert (
        "after"
        in problems(datetime=None, start_datetime="2024-01-03T00:00:00Z", end_datetime="2024-01-02T00:00:00Z")[0]
    )
    assert (
        "outside"
        in problems(
            datetime="2025-01-01T00:00:00Z", start_datetime="2024-01-01T00:00:00Z", end_datetime="2024-01-02T00:00:00Z"
        )[0]
    )
    collection = {
        "type": "Collection",
        "extent": {"temporal": {"interval": [["2024-02-01T00:00:00Z", "2024-01-01T00:00:00Z"]]}},
    }
    assert "starts after" in lint.datetime_problems(collection)[0].message


def square(west: float, south: float, east: float, north: float) -> list[list[float]]:
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]


def feature(geometry: dict[str, Any], bbox: list[float]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "bbox": bbox}


def test_bbox_must_contain_the_geometry() -> None:
    polygon = {"type": "Polygon", "coordinates": [square(10, 50, 11, 51)]}
    assert lint.geometry_problems(feature(polygon, [10, 50, 11, 51])) == []
    assert lint.geometry_problems(feature(polygon, [10, 50, 11, 51.00000001])) == []  # rounding
    found = lint.geometry_problems(feature(polygon, [10, 50, 10.5, 51]))
    assert types(found) == [lint.BBOX_GEOMETRY] and "2 geometry position(s)" in found[0].message
    assert lint.BBOX_GEOMETRY in types(lint.geometry_problems(feature(polygon, [10, 52, 11, 51])))
    assert lint.BBOX_GEOMETRY in types(lint.geometry_problems(feature(polygon, [10, 50, 200, 51])))
    point3d = {"type": "Point", "coordinates": [10.5, 50.5, 3]}
    assert lint.geometry_problems(feature(point3d, [10, 50, 0, 11, 51, 5])) == []
    assert types(lint.geometry_problems(feature(point3d, [11, 50, 0, 12, 51, 5]))) == [lint.BBOX_GEOMETRY]


def test_antimeridian() -> None:
    unsplit = {"type": "Polygon", "coordinates": [square(179, 0, -179, 1)]}
    assert lint.ANTIMERIDIAN in types(lint.geometry_problems(feature(unsplit, [179, 0, -179, 1])))
    split = {"type": "MultiPolygon", "coordinates": [[square(179, 0, 180, 1)], [square(-180, 0, -179, 1)]]}
    assert lint.geometry_problems(feature(split, [179, 0, -179, 1])) == []  # bbox crossing: west > east
    assert types(lint.geometry_problems(feature(split, [179.5, 0, -179, 1]))) == [lint.BBOX_GEOMETRY]
    band = {"type": "Polygon", "coordinates": [square(-180, 80, 180, 90)]}
    assert lint.geometry_problems(feature(band, [-180, 80, 180, 90])) == []
