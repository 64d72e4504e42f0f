"""The listing jobs end to end on real Azurite + Postgres: a few hundred generated blobs (small
rasters, a COG, a TIFF without extension, text files, a corrupt TIFF, text named .tif) listed in
several chunks. inventory_container's summary and JSON Lines inventory must match exactly what was
uploaded; catalog_container's STAC must validate, with one item per readable raster."""

from __future__ import annotations

import json
import math
import posixpath
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rasterio.shutil
from rio_cogeo.cogeo import cog_validate

from controllers.inventory_container import InventoryContainerController, InventoryContainerParameters
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import StorageUnavailableError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import TaskContext
from services.engine.registry import JobTypeRegistry
from services.inventory.chunks import ChunkStore
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_container, make_settings, sql
from tests.support.stac_schemas import stac_errors

pytestmark = pytest.mark.integration

CHUNK_SIZE = 37  # several chunks, the last one partial


@dataclass(frozen=True)
class Uploaded:
    name: str
    size: int
    kind: str  # raster / other / unreadable
    is_cog: bool | None


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database)


def local_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Distinct local files by role: path and expected kind."""
    files = {
        "rgb": (rasters.uint8_rgb(folder / "rgb.tif", 64, 48), "raster"),
        "multi": (rasters.uint16_multiband(folder / "multi.tif", 40, 30, 3), "raster"),
        "nan": (rasters.float32_nodata_nan(folder / "nan.tif", 33, 21), "raster"),
        "corrupt": (rasters.corrupt(folder / "corrupt.tif"), "unreadable"),
        "fake": (rasters.not_a_raster(folder / "fake.tif"), "unreadable"),
        "text": (rasters.not_a_raster(folder / "text.csv"), "other"),
    }
    cog = folder / "cog.tif"
    rasterio.shutil.copy(files["multi"][0], cog, driver="COG", compress="deflate", blocksize=256)
    files["cog"] = (cog, "raster")
    note = folder / "note.txt"
    note.write_text("hello\n")
    files["note"] = (note, "other")
    return files


def plan_uploads(run: str) -> list[tuple[str, str]]:
    """(blob name, local file role): 300 blobs in nested folders."""
    plan = [(f"{run}/rasters/r{i:03d}.tif", ("rgb", "multi", "nan")[i % 3]) for i in range(90)]
    plan += [(f"{run}/cog/dem.tif", "cog"), (f"{run}/bad/corrupt.tif", "corrupt"), (f"{run}/bad/fake.tif", "fake")]
    plan += [(f"{run}/noext/raster_without_extension", "rgb")]
    plan += [(f"{run}/text/t{i:03d}.csv", "text") for i in range(120)]
    plan += [(f"{run}/text/n{i:03d}.txt", "note") for i in range(86)]
    return plan


@pytest.fixture(scope="module")
def uploaded(storage: BlobStorage, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Uploaded]]:
    run = f"inv-{secrets.token_hex(3)}"
    files = local_files(tmp_path_factory.mktemp("inventory"))
    is_cog = {
        role: bool(cog_validate(str(path), quiet=True)[0]) for role, (path, kind) in files.items() if kind == "raster"
    }

    def upload(item: tuple[str, str]) -> Uploaded:
        name, role = item
        path, kind = files[role]
        storage.upload_file("bronze", name, path, content_type="application/octet-stream")
        return Uploaded(name, path.stat().st_size, kind, is_cog.get(role))

    with ThreadPoolExecutor(16) as pool:
        blobs = {u.name: u for u in pool.map(upload, plan_uploads(run))}
    # Outside the prefix: must not be listed.
    storage.upload_bytes("bronze", f"{run}-sibling/x.txt", b"x", content_type="text/plain")
    return run, blobs


def run_job(
    container: ServiceContainer, params: dict[str, Any], job_type: str = "inventory_container", timeout: float = 45
) -> dict[str, Any]:
    job_id = container.job_service.submit(job_type, params).job.job_id
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=timeout)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


@pytest.fixture(scope="module")
def inventory(container: ServiceContainer, uploaded: tuple[str, dict[str, Uploaded]]) -> dict[str, Any]:
    run, _ = uploaded
    return run_job(container, {"container": "bronze", "prefix": f"{run}/", "chunk_size": CHUNK_SIZE})


def test_summary_counts_match_the_uploads(inventory: dict[str, Any], uploaded: tuple[str, dict[str, Uploaded]]) -> None:
    _, blobs = uploaded
    assert inventory["status"] == "completed", inventory["error"]
    summary = inventory["result"]["summary"]
    assert summary["blobs"] == len(blobs) == 300
    assert summary["bytes"] == sum(b.size for b in blobs.values())
    kinds = Counter(b.kind for b in blobs.values())
    assert {k: v["count"] for k, v in summary["by_kind"].items()} == dict(kinds)
    for kind in kinds:
        assert summary["by_kind"][kind]["bytes"] == sum(b.size for b in blobs.values() if b.kind == kind)
    extensions = Counter(Path(b.name).suffix or "(none)" for b in blobs.values())
    assert {k: v["count"] for k, v in summary["by_extension"].items()} == dict(extensions)
    cogs = sum(1 for b in blobs.values() if b.is_cog)
    assert summary["rasters"] == {"cog": cogs, "not_cog": kinds["raster"] - cogs}
    assert cogs >= 1
    assert summary["unreadable_count"] == 2
    reasons = {u["name"].rsplit("/", 1)[-1]: u["reason"] for u in summary["unreadable"]}
    assert set(reasons) == {"corrupt.tif", "fake.tif"} and all(reasons.values())


def test_inventory_jsonl_lists_every_blob_once(
    inventory: dict[str, Any], uploaded: tuple[str, dict[str, Uploaded]], storage: BlobStorage
) -> None:
    _, blobs = uploaded
    ref = inventory["result"]["inventory"]
    assert (ref["container"], ref["blob"]) == ("silver", f"inventories/bronze/{inventory['job_id']}.jsonl")
    lines = storage.download_range(ref["container"], ref["blob"]).decode().splitlines()
    entries = [json.loads(line) for line in lines]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)) == len(blobs)
    assert set(names) == set(blobs)
    for entry in entries:
        expected = blobs[entry["name"]]
        assert (entry["kind"], entry["size"]) == (expected.kind, expected.size), entry["name"]
        if expected.kind == "raster":
            assert entry["raster"]["is_cog"] == expected.is_cog
            assert entry["raster"]["crs"] and entry["raster"]["width"] > 0
    dem = next(e for e in entries if e["name"].endswith("/cog/dem.tif"))
    assert dem["raster"]["bands"] == 3 and dem["raster"]["dtype"] == "uint16"
    assert dem["raster"]["compression"] == "deflate"


def test_blobs_were_chunked_in_postgres(
    inventory: dict[str, Any], uploaded: tuple[str, dict[str, Uploaded]], settings: Settings
) -> None:
    _, blobs = uploaded
    rows = sql(
        settings,
        "SELECT chunk_key, blob_count, jsonb_array_length(results) FROM blob_chunks WHERE job_id = %s ORDER BY 1",
        (inventory["job_id"],),
    )
    chunks = math.ceil(len(blobs) / CHUNK_SIZE)
    assert [r[0] for r in rows] == [f"chunk_{i:05d}" for i in range(chunks)]
    assert all(count == results for _, count, results in rows)
    assert sum(r[1] for r in rows) == len(blobs)
    tasks = sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s AND stage = 2", (inventory["job_id"],))
    assert tasks == [(chunks,)]


def test_suffix_filter_and_empty_listing(
    container: ServiceContainer, uploaded: tuple[str, dict[str, Uploaded]]
) -> None:
    run, blobs = uploaded
    tifs = run_job(container, {"prefix": f"{run}/", "suffix": ".TIF", "chunk_size": 50})
    assert tifs["status"] == "completed", tifs["error"]
    assert tifs["result"]["summary"]["blobs"] == sum(1 for name in blobs if name.endswith(".tif"))
    empty = run_job(container, {"prefix": f"{run}/nothing-here/"})
    assert empty["status"] == "completed", empty["error"]
    assert empty["result"]["summary"]["blobs"] == 0


@pytest.fixture(scope="module")
def catalog(container: ServiceContainer, uploaded: tuple[str, dict[str, Uploaded]]) -> dict[str, Any]:
    run, _ = uploaded
    params = {"prefix": f"{run}/", "collection_id": f"{run}-catalog", "chunk_size": CHUNK_SIZE}
    return run_job(container, params, "catalog_container")


def test_catalog_has_one_valid_item_per_readable_raster(
    catalog: dict[str, Any], uploaded: tuple[str, dict[str, Uploaded]], storage: BlobStorage
) -> None:
    run, blobs = uploaded
    assert catalog["status"] == "completed", catalog["error"]
    result = catalog["result"]
    rasters = {name for name, b in blobs.items() if b.kind == "raster"}
    assert result["items"] == len(rasters)
    assert result["blobs"] == len(blobs)
    assert result["unreadable"] == 2 and result["not_raster"] == len(blobs) - len(rasters) - 2
    collection_ref = result["collection"]
    assert collection_ref == {"container": "silver", "blob": f"stac/{run}-catalog/collection.json"}
    collection = json.loads(storage.download_range("silver", collection_ref["blob"]))
    assert stac_errors(collection) == []
    item_links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    assert len(item_links) == len(rasters)
    assets = set()
    bboxes = []
    for href in item_links:
        blob = posixpath.normpath(posixpath.join(posixpath.dirname(collection_ref["blob"]), href))
        item = json.loads(storage.download_range("silver", blob))
        assert stac_errors(item) == [], blob
        asset = item["assets"]["data"]
        assert asset["href"].startswith("http") and "/bronze/" in asset["href"]
        assets.add(asset["href"].split("/bronze/", 1)[1])
        assert asset["file:size"] == blobs[asset["href"].split("/bronze/", 1)[1]].size
        bboxes.append(item["bbox"])
    assert assets == rasters  # every readable raster once, pointing at the source blob
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    assert west <= min(b[0] for b in bboxes) and east >= max(b[2] for b in bboxes)
    assert south <= min(b[1] for b in bboxes) and north >= max(b[3] for b in bboxes)


def test_catalog_fails_with_a_reason_when_no_blob_is_a_raster(
    container: ServiceContainer, uploaded: tuple[str, dict[str, Uploaded]]
) -> None:
    run, _ = uploaded
    params = {"prefix": f"{run}/bad/", "collection_id": f"{run}-bad"}
    status = run_job(container, params, "catalog_container")
    assert status["status"] == "failed"
    assert "no readable GeoTIFF" in json.dumps(status["error"]) and "2 unreadable" in json.dumps(status["error"])


def test_extract_metadata_of_one_blob(container: ServiceContainer, uploaded: tuple[str, dict[str, Uploaded]]) -> None:
    run, _ = uploaded
    status = run_job(container, {"blob_name": f"{run}/cog/dem.tif"}, "extract_metadata")
    assert status["status"] == "completed", status["error"]
    entry = status["result"]["blob"]
    assert entry["name"] == f"{run}/cog/dem.tif" and entry["raster"]["is_cog"] is True
    metadata = entry["raster"]["metadata"]
    assert (metadata["count"], metadata["dtype"], metadata["crs_code"]) == (3, "uint16", "EPSG:32633")
    bad = run_job(container, {"blob_name": f"{run}/bad/corrupt.tif"}, "extract_metadata")
    assert bad["status"] == "failed" and "corrupt.tif" in json.dumps(bad["error"])


def test_extract_metadata_under_a_prefix_writes_jsonl(
    container: ServiceContainer, uploaded: tuple[str, dict[str, Uploaded]], storage: BlobStorage
) -> None:
    run, blobs = uploaded
    status = run_job(container, {"prefix": f"{run}/rasters/", "chunk_size": 25}, "extract_metadata")
    assert status["status"] == "completed", status["error"]
    wanted = {name for name in blobs if name.startswith(f"{run}/rasters/")}
    assert status["result"]["by_kind"] == {"raster": len(wanted)}
    ref = status["result"]["output"]
    assert ref["blob"] == f"metadata/bronze/{status['job_id']}.jsonl"
    entries = [json.loads(line) for line in storage.download_range("silver", ref["blob"]).decode().splitlines()]
    assert sorted(e["name"] for e in entries) == sorted(wanted)
    assert all(e["raster"]["metadata"]["width"] > 0 for e in entries)


class ListingRetriedOnce(InventoryContainerController):
    """The first list attempt stores a different chunking (chunk_size 7), then fails transiently."""

    def list_blobs(self, ctx: TaskContext[InventoryContainerParameters]) -> dict[str, Any]:
        if ctx.attempt == 1:
            first = ctx.job_parameters.model_copy(update={"chunk_size": 7})
            ChunkStore(self._db, ctx.job_id).list_into_chunks(self._storage, first)
            raise StorageUnavailableError("connection dropped after listing (test)")
        return super().list_blobs(ctx)


def test_a_retried_list_task_replaces_the_chunks_of_its_first_attempt(
    container: ServiceContainer, settings: Settings, uploaded: tuple[str, dict[str, Uploaded]]
) -> None:
    run, blobs = uploaded
    chunk_size = CHUNK_SIZE - 1  # not the parameters of the module's inventory job (that would be resubmitting it)
    controller = ListingRetriedOnce.from_settings(settings, container.blob_storage, container.db)
    retrying = make_container(settings, JobTypeRegistry([controller]))
    try:
        status = run_job(retrying, {"prefix": f"{run}/", "chunk_size": chunk_size})
    finally:
        retrying.close()
    assert status["status"] == "completed", status["error"]
    job_id = status["job_id"]
    assert sql(settings, "SELECT attempts FROM tasks WHERE job_id = %s AND stage = 1", (job_id,)) == [(2,)]
    # Only the second attempt's chunks remain (none of the first attempt's 43), each blob in one.
    chunks = math.ceil(len(blobs) / chunk_size)
    rows = sql(settings, "SELECT chunk_key, blob_count FROM blob_chunks WHERE job_id = %s ORDER BY 1", (job_id,))
    assert [key for key, _ in rows] == [f"chunk_{i:05d}" for i in range(chunks)]
    assert sum(count for _, count in rows) == len(blobs) == status["result"]["summary"]["blobs"]
    assert sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s AND stage = 2", (job_id,)) == [(chunks,)]
