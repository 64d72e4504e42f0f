"""The offline STAC check used by the tests finds real problems, with and without ../shared's schemas."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.raster.inspect import inspect_dataset
from services.stac.builder import AssetFile, build_item
from tests.support import rasters, stac_schemas
from tests.support.stac_schemas import stac_errors


@pytest.fixture(params=["with official schemas", "bundled schemas and own checks only"])
def layers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    if request.param != "with official schemas":
        monkeypatch.setattr(stac_schemas, "OFFICIAL_SCHEMA_ROOT", tmp_path / "absent")
    return str(request.param)


@pytest.fixture
def item(tmp_path: Path) -> dict[str, Any]:
    import rasterio

    with rasterio.open(rasters.float32_nodata_nan(tmp_path / "f.tif")) as dataset:
        meta = inspect_dataset(dataset)
    asset = AssetFile(href="f.tif", size=10, sha256="ab" * 32)
    return build_item("f", meta, asset, item_datetime=datetime(2024, 1, 2, tzinfo=UTC)).to_dict(include_self_link=False)


def test_a_valid_item_has_no_errors(item: dict[str, Any], layers: str) -> None:
    assert stac_errors(item) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["properties"].update({"proj:shape": [1, 2, 3]}), "proj:shape"),
        (lambda d: d["properties"].update({"proj:epsg": 4326}), "proj:epsg: not a field"),
        (lambda d: d["assets"]["data"].update({"file:checksum": "xyz"}), "file:checksum"),
        (lambda d: d["assets"]["data"]["raster:bands"][0].update({"data_type": "float99"}), "raster:bands"),
        (lambda d: d["stac_extensions"].remove(stac_schemas.FILE), "without"),
        (lambda d: d["stac_extensions"].append("https://example.com/ext/v1.0.0/schema.json"), "unknown extension"),
        (lambda d: d.pop("geometry"), "geometry"),
        (lambda d: d.update({"bbox": [1, 2]}), "bbox"),
    ],
)
def test_each_kind_of_mistake_is_reported(item: dict[str, Any], layers: str, change: Any, expected: str) -> None:
    broken = copy.deepcopy(item)
    change(broken)
    problems = stac_errors(broken)
    assert any(expected in p for p in problems), problems
