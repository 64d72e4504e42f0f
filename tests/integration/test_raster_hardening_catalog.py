"""catalog_container item ids on real Azurite + Postgres: two blob names that got the same id from
the old 80-character slug + 32-bit hash both get their own item; a duplicate id fails loudly
instead of overwriting an item."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.inventory.catalog import DuplicateItemIdError, item_id_for, publish_in_place_catalog
from tests.support import rasters
from tests.support.engine import make_settings, pump_until_terminal

pytestmark = pytest.mark.integration


def old_item_id_for(name: str) -> str:
    """The id catalog_container used before: 80-character slug + 8 hex digits of SHA-256."""
    slug = re.sub(r"[^a-z0-9_.]+", "-", name.lower()).strip("-._")[:80] or "raster"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def colliding_names(prefix: str) -> tuple[str, str]:
    """Two blob names with the same old id (a birthday search over 32 bits: ~10^5 hashes)."""
    folder = f"{prefix}/" + "long-survey-folder-name-" * 4  # the slug's first 80 characters are shared
    seen: dict[str, str] = {}
    for counter in range(4_000_000):
        name = f"{folder}/scene-{counter}.tif"
        found = seen.setdefault(old_item_id_for(name), name)
        if found != name:
            return found, name
    raise AssertionError("no collision found")


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database)


def run_job(container: ServiceContainer, params: dict[str, Any], job_type: str) -> dict[str, Any]:
    job_id = container.job_service.submit(job_type, params).job.job_id
    return pump_until_terminal(container, job_id, workers=2)


def test_names_that_collided_before_get_distinct_items(
    container: ServiceContainer, storage: BlobStorage, tmp_path: Path
) -> None:
    run = f"ids-{secrets.token_hex(3)}"
    first, second = colliding_names(run)
    assert old_item_id_for(first) == old_item_id_for(second)
    assert item_id_for(first) != item_id_for(second)
    storage.upload_file("bronze", first, rasters.uint8_rgb(tmp_path / "a.tif", 40, 30), content_type="image/tiff")
    storage.upload_file("bronze", second, rasters.paletted(tmp_path / "b.tif", 30, 20), content_type="image/tiff")
    status = run_job(container, {"prefix": f"{run}/", "collection_id": f"{run}-c"}, "catalog_container")
    assert status["status"] == "completed", status["error"]
    collection_blob = status["result"]["collection"]["blob"]
    collection = json.loads(storage.download_range("silver", collection_blob))
    hrefs = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert len(hrefs) == len(set(hrefs)) == 2
    assets = set()
    for href in hrefs:
        blob = posixpath.normpath(posixpath.join(posixpath.dirname(collection_blob), href))
        item = json.loads(storage.download_range("silver", blob))
        assets.add(item["assets"]["data"]["href"].split("/bronze/", 1)[1])
    assert assets == {first, second}


def item_dict(item_id: str, asset: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "geometry": {"type": "Point", "coordinates": [1.0, 2.0]},
        "bbox": [1.0, 2.0, 1.0, 2.0],
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
        "links": [],
        "assets": {"data": {"href": asset}},
    }


def test_a_duplicate_item_id_fails_without_overwriting(storage: BlobStorage) -> None:
    collection_id = f"dup-{secrets.token_hex(3)}"
    items = [item_dict("same", "https://x/bronze/a.tif"), item_dict("same", "https://x/bronze/b.tif")]
    with pytest.raises(DuplicateItemIdError, match=re.escape("already used for https://x/bronze/a.tif")):
        publish_in_place_catalog(
            storage, items, source="bronze/", output_container="silver", collection_id=collection_id
        )
    written = json.loads(storage.download_range("silver", f"stac/{collection_id}/same/same.json"))
    assert written["assets"]["data"]["href"] == "https://x/bronze/a.tif"
    assert not storage.exists("silver", f"stac/{collection_id}/collection.json")
