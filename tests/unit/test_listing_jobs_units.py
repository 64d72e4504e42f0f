"""Listing job types without storage: parameters, fan-out, summary aggregation, item ids."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
import rasterio
from pydantic import ValidationError

from controllers.catalog_container import CatalogContainerController, CatalogContainerParameters
from controllers.extract_metadata import ExtractMetadataController, ExtractMetadataParameters
from controllers.inventory_container import InventoryContainerController, InventoryContainerParameters
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.inventory.catalog import UPLOADS_IN_FLIGHT, item_id_for, publish_in_place_catalog
from services.inventory.chunks import ListingParameters, chunk_key
from services.inventory.probe import extension_of
from services.inventory.report import InventorySummary
from services.raster.inspect import inspect_dataset
from services.stac.builder import AssetFile, build_item
from tests.support import rasters

CONNECTION = "UseDevelopmentStorage=true"


def test_listing_parameters_defaults_and_rules() -> None:
    params = InventoryContainerParameters.model_validate({"container": "bronze"})
    assert (params.prefix, params.suffix, params.chunk_size, params.output_container) == ("", None, 1000, "silver")
    assert InventoryContainerParameters.model_validate({"prefix": "a/b/"}).prefix == "a/b/"
    for bad in (
        {"container": "Bad_Name"},
        {"prefix": "../x"},
        {"prefix": "https://x/y"},
        {"prefix": "a//b"},
        {"chunk_size": 0},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            InventoryContainerParameters.model_validate(bad)


def test_suffix_filter_is_case_insensitive() -> None:
    params = ListingParameters(suffix=".TIF")
    assert params.wants("a/b.tif") and params.wants("B.TIF") and not params.wants("b.tiff")
    assert ListingParameters().wants("anything")


def test_extract_metadata_needs_exactly_one_target() -> None:
    assert ExtractMetadataParameters.model_validate({"blob_name": "a.tif"}).prefix is None
    assert ExtractMetadataParameters.model_validate({"prefix": "a/"}).listing().prefix == "a/"
    for bad in ({}, {"blob_name": "a.tif", "prefix": "a/"}, {"blob_name": "../a.tif"}):
        with pytest.raises(ValidationError):
            ExtractMetadataParameters.model_validate(bad)


def test_catalog_needs_a_valid_collection_id() -> None:
    with pytest.raises(ValidationError):
        CatalogContainerParameters.model_validate({})
    with pytest.raises(ValidationError):
        CatalogContainerParameters.model_validate({"collection_id": "Has Spaces"})
    assert CatalogContainerParameters.model_validate({"collection_id": "dem-2024"}).collection_id == "dem-2024"


@pytest.mark.parametrize("controller_type", [InventoryContainerController, CatalogContainerController])
def test_fan_out_one_task_per_chunk(controller_type: Any) -> None:
    controller = controller_type(MagicMock(), MagicMock())
    params = controller.parse_parameters(
        {"collection_id": "c"} if controller_type is CatalogContainerController else {}
    )
    assert [t.key for t in controller.create_tasks(1, params, {})] == ["list"]
    tasks = controller.create_tasks(2, params, {"list": {"chunk_count": 3, "blobs": 2500, "bytes": 1}})
    assert [t.key for t in tasks] == ["chunk_00000", "chunk_00001", "chunk_00002"]
    assert all(t.parameters == {} for t in tasks), "blob names never travel in messages"
    assert len(controller.create_tasks(3, params, {})) == 1


def test_chunk_keys_and_extensions() -> None:
    assert chunk_key(7) == "chunk_00007"
    assert (extension_of("a/B.TIF"), extension_of("a/noext"), extension_of("a.b/c")) == (".tif", "", "")


def test_summary_aggregates_by_extension_kind_and_cog() -> None:
    summary = InventorySummary()
    entries = [
        {"name": "a.tif", "size": 10, "extension": ".tif", "kind": "raster", "raster": {"is_cog": True}},
        {"name": "b.tif", "size": 20, "extension": ".tif", "kind": "raster", "raster": {"is_cog": False}},
        {"name": "c.tif", "size": 5, "extension": ".tif", "kind": "unreadable", "error": "corrupt"},
        {"name": "d", "size": 1, "extension": "", "kind": "other"},
    ]
    for entry in entries:
        summary.add(entry)
    result = summary.to_dict()
    assert (result["blobs"], result["bytes"]) == (4, 36)
    assert result["by_extension"] == {"(none)": {"count": 1, "bytes": 1}, ".tif": {"count": 3, "bytes": 35}}
    assert result["by_kind"]["raster"] == {"count": 2, "bytes": 30}
    assert result["rasters"] == {"cog": 1, "not_cog": 1}
    assert result["unreadable"] == [{"name": "c.tif", "reason": "corrupt"}]


def test_item_ids_are_unique_and_valid() -> None:
    ids = {item_id_for(name) for name in ("Dir/DEM.tif", "dir/dem.tif", "dir/dem.tiff")}
    assert len(ids) == 3
    assert all(i.startswith("dir-dem.tif") for i in ids)


@pytest.mark.parametrize(
    ("controller_type", "required"),
    [
        (InventoryContainerController, {}),
        (CatalogContainerController, {"collection_id": "c"}),
        (ExtractMetadataController, {"prefix": "a/"}),
    ],
)
def test_listing_jobs_default_to_the_deployments_containers(controller_type: Any, required: dict[str, str]) -> None:
    settings = Settings.model_validate(
        {
            "AzureWebJobsStorage": CONNECTION,
            "bronze_container": "raw-in",
            "silver_container": "curated",
            "input_containers": "raw-in,other",
        }
    )
    controller = controller_type.from_settings(settings, BlobStorage(CONNECTION), MagicMock())
    params = controller.parse_parameters(required)
    assert (params.container, params.output_container) == ("raw-in", "curated")
    assert controller.parse_parameters({**required, "container": "other"}).container == "other"
    for field, container in (("container", "elsewhere"), ("container", "azure-webjobs-secrets")) + (
        (("output_container", "raw-in"),) if "output_container" in controller.parameters_model.model_fields else ()
    ):
        with pytest.raises(ValidationError, match=field):
            controller.parse_parameters({**required, field: container})
    with pytest.raises(ValidationError):
        controller.parse_parameters({**required, "container": "Not_Valid"})  # the name rules still apply
    fields = controller.parameters_model.model_json_schema()["properties"]
    assert fields["container"]["default"] == "raw-in" and fields["output_container"]["default"] == "curated"
    # With the usual settings: bronze and silver, and nothing else.
    plain = controller_type.from_settings(
        Settings.model_validate({"AzureWebJobsStorage": CONNECTION}), BlobStorage(CONNECTION), None
    )
    assert plain.parse_parameters(required).container == "bronze"
    with pytest.raises(ValidationError, match="not readable by this deployment"):
        plain.parse_parameters({**required, "container": "raw-in"})


class RecordingStorage:
    """Keeps what is uploaded (thread-safe enough for list.append) and nothing else."""

    def __init__(self) -> None:
        self.uploaded: list[str] = []

    def ensure_container(self, container: str) -> None:
        pass

    def upload_bytes(self, container: str, name: str, data: bytes, *, content_type: str) -> None:
        self.uploaded.append(name)


def test_the_in_place_catalog_streams_its_items(tmp_path: Path) -> None:
    with rasterio.open(rasters.uint8_rgb(tmp_path / "rgb.tif")) as dataset:
        metadata = inspect_dataset(dataset)
    storage = RecordingStorage()
    seen_when_produced: list[int] = []

    def items() -> Iterator[dict[str, Any]]:
        for i in range(300):
            seen_when_produced.append(len(storage.uploaded))
            asset = AssetFile(href=f"http://x/bronze/r{i}.tif", size=1, title=f"r{i}")
            item = build_item(f"r{i}", metadata, asset, item_datetime=datetime(2021, 1, 1 + i % 28, tzinfo=UTC))
            yield item.to_dict(include_self_link=False, transform_hrefs=False)

    published = publish_in_place_catalog(
        storage,  # type: ignore[arg-type]
        items(),
        source="bronze/x",
        output_container="silver",
        collection_id="c",
    )
    assert published is not None and published["items"] == 300
    assert storage.uploaded[-1] == "stac/c/collection.json" and len(set(storage.uploaded)) == 301
    # Items were written while later ones were still being produced: never all held at once.
    assert seen_when_produced[-1] >= 300 - 2 * UPLOADS_IN_FLIGHT
    empty = RecordingStorage()
    assert publish_in_place_catalog(empty, iter([]), source="s", output_container="o", collection_id="c") is None  # type: ignore[arg-type]
    assert empty.uploaded == []
