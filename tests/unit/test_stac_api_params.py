"""STAC API parameter parsing (services/stac_api/params.py) and pgstac token links, offline."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.errors import InvalidRequestError
from services.stac_api.params import search_body
from services.stac_api.service import _token


def field_of(raw: dict[str, Any], *, from_query: bool = True) -> str:
    with pytest.raises(InvalidRequestError) as refused:
        search_body(raw, 100, from_query=from_query)
    field: str = refused.value.details[0]["field"]
    return field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"bbox": "1,2,3"}, "bbox"),
        ({"bbox": "0,10,1,5"}, "bbox"),
        ({"bbox": "0,0,1,nan"}, "bbox"),
        ({"bbox": "0,0,0,1,1,-1"}, "bbox"),
        ({"datetime": "2022-01-01"}, "datetime"),
        ({"datetime": "1937-01-01T12:00:27.87+0100"}, "datetime"),
        ({"datetime": "1985-04-12T23:20:50.Z"}, "datetime"),
        ({"datetime": "../.."}, "datetime"),
        ({"datetime": "2022-02-01T00:00:00Z/2022-01-01T00:00:00Z"}, "datetime"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"intersects": '{"type": "Circle"}'}, "intersects"),
        ({"bbox": "0,0,1,1", "intersects": '{"type": "Point", "coordinates": [0, 0]}'}, "intersects"),
        ({"token": "abc"}, "token"),
        ({"filter": "{}", "filter-lang": "cql2-text"}, "filter-lang"),
    ],
)
def test_bad_get_parameters_name_the_parameter(raw: dict[str, Any], field: str) -> None:
    assert field_of(raw) == field


def test_a_post_bbox_must_be_a_list() -> None:
    assert field_of({"bbox": "0,0,1,1"}, from_query=False) == "bbox"


def test_good_parameters_become_pgstac_search_json() -> None:
    raw = {
        "bbox": "-10,-5,10,5",
        "datetime": "2022-01-01T00:00:00Z/..",
        "limit": "5000",
        "ids": "a,b",
        "collections": "c",
        "sortby": "-datetime,+id",
        "token": "next:c:a",
    }
    assert search_body(raw, 100, from_query=True) == {
        "limit": 100,
        "bbox": [-10.0, -5.0, 10.0, 5.0],
        "datetime": "2022-01-01T00:00:00Z/..",
        "ids": ["a", "b"],
        "collections": ["c"],
        "token": "next:c:a",
        "sortby": [{"field": "datetime", "direction": "desc"}, {"field": "id", "direction": "asc"}],
    }
    post = search_body({"filter": {"op": "=", "args": [{"property": "id"}, "a"]}}, 100, from_query=False)
    assert post["filter-lang"] == "cql2-json" and post["limit"] == 10


def test_tokens_come_from_pgstac_links() -> None:
    links = [{"rel": "next", "href": "./search?token=next:6331:693233"}, {"rel": "prev", "body": {"token": "prev:x"}}]
    assert (_token(links, "next"), _token(links, "prev"), _token([], "next")) == ("next:6331:693233", "prev:x", None)
