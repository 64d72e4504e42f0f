"""validate_stac without a stack: bundled schemas offline, each check, lint, chunk validation with a
fake storage (checksums, budget), the catalog walk, parameters, fan-out and the job result."""

from __future__ import annotations

import copy
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import jsonschema_rs
import pytest
import rasterio
from pydantic import ValidationError

from controllers import validate_stac_chunk
from controllers.validate_stac import ValidateStacController, report_blob
from controllers.validate_stac_chunk import downloads, validate_chunk
from controllers.validate_stac_parameters import ValidateStacParameters
from controllers.validate_stac_run import ContainerIndex, check_object, walk_catalog
from repositories.blob_reader import SdkBlobReader
from repositories.blob_storage import BlobInfo
from schemas.errors import BlobNotFoundError, PermanentTaskError
from schemas.settings import Settings
from services.engine import JobOutcome
from services.raster.inspect import inspect_dataset
from services.stac import lint
from services.stac import validation as v
from services.stac.builder import AssetFile, build_item, file_checksum
from tests.support import rasters

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


@pytest.fixture(scope="module")
def item(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An Item as process_raster writes it: projection, raster, file extensions; relative links."""
    with rasterio.open(rasters.float32_nodata_nan(tmp_path_factory.mktemp("r") / "f.tif")) as dataset:
        meta = inspect_dataset(dataset)
    asset = AssetFile(href="../../../cogs/f.tif/f.tif", size=4, sha256=hashlib.sha256(b"data").hexdigest())
    document = build_item("f", meta, asset, item_datetime=datetime(2024, 1, 2, tzinfo=UTC)).to_dict(
        include_self_link=False
    )
    document["links"] = [{"rel": "parent", "href": "../collection.json"}, {"rel": "root", "href": "../collection.json"}]
    return document


ITEM_PATH = "stac/c/f/f.json"


def types(problems: list[v.Problem]) -> list[str]:
    return [p.type for p in problems]


# --- schemas --------------------------------------------------------------------------------------


def test_every_bundled_schema_compiles_offline() -> None:
    """Every $ref of every bundled schema resolves to a bundled file (the retriever refuses the rest)."""
    assert len(v.SCHEMAS) >= 25
    for url in v.SCHEMAS:
        assert v.validator(url) is not None, url
    with pytest.raises((jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError), match="never fetched"):
        jsonschema_rs.validator_for(
            {"$ref": "https://example.com/not-bundled.json"}, registry=v.REGISTRY, retriever=v._refuse
        )


def test_schema_files_are_the_published_ones() -> None:
    for url, folder in (
        ("https://stac-extensions.github.io/raster/v1.1.0/schema.json", "extensions/raster/v1.1.0/schema.json"),
        (
            "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
            "v1.1.0/item-spec/json-schema/item.json",
        ),
    ):
        assert v.SCHEMAS[url] == json.loads((v.SCHEMA_ROOT / folder).read_text())
        assert v.is_supported(url + "#")


def test_a_process_raster_item_is_valid(item: dict[str, Any]) -> None:
    assert v.schema_problems(item) == []
    assert lint.lint_problems(item) == []


@pytest.mark.parametrize(
    ("change", "kind", "text"),
    [
        (lambda d: d.pop("geometry"), v.SCHEMA, "geometry"),
        (lambda d: d.update({"bbox": [1, 2]}), v.SCHEMA, "bbox"),
        (lambda d: d["properties"].update({"proj:shape": [1, 2, 3]}), v.EXTENSION_SCHEMA, "proj:shape"),
        (lambda d: d["assets"]["data"].update({"file:checksum": "xyz"}), v.EXTENSION_SCHEMA, "file:checksum"),
        (
            lambda d: d["assets"]["data"]["raster:bands"][0].update({"data_type": "float99"}),
            v.EXTENSION_SCHEMA,
            "raster",
        ),
        (lambda d: d["stac_extensions"].append("https://ex.com/e/v1.0.0/schema.json"), v.UNKNOWN_EXTENSION, "ex.com"),
        (lambda d: d.update({"stac_version": "1.0.0"}), v.UNSUPPORTED_VERSION, "1.0.0"),
        (lambda d: d.pop("stac_version"), v.NOT_STAC, "not a STAC object"),
    ],
)
def test_each_schema_finding(item: dict[str, Any], change: Any, kind: str, text: str) -> None:
    broken = copy.deepcopy(item)
    change(broken)
    problems = v.schema_problems(broken)
    assert kind in types(problems), problems
    assert any(text in p.message for p in problems if p.type == kind), problems


def test_schema_errors_are_capped(item: dict[str, Any]) -> None:
    broken = copy.deepcopy(item)
    broken["links"] = [{"rel": 1}] * 30
    problems = [p for p in v.schema_problems(broken) if p.type == v.SCHEMA]
    assert len(problems) == v.MAX_SCHEMA_ERRORS + 1
    assert all(len(p.message) < 400 for p in problems)


def test_not_json() -> None:
    assert v.parse_document(b"{nope")[1].type == v.NOT_JSON  # type: ignore[union-attr]
    assert "list" in v.parse_document(b"[1]")[1].message  # type: ignore[union-attr]
    assert v.parse_document(b'{"a": 1}') == ({"a": 1}, None)


# --- links and assets -----------------------------------------------------------------------------


def test_resolve_href() -> None:
    url = "http://127.0.0.1:10000/devstoreaccount1/silver"
    assert v.resolve_href("stac/c/i/i.json", "../collection.json") == ("stac/c/collection.json", None)
    assert v.resolve_href("stac/c/i/i.json", "./a%20b.tif?x=1#f") == ("stac/c/i/a b.tif", None)
    assert v.resolve_href("c.json", "https://elsewhere/x.json", url) == (None, None)
    assert v.resolve_href("c.json", f"{url}/stac/x.json", url) == ("stac/x.json", None)
    assert v.resolve_href("a/c.json", "../../x.json")[1] is not None
    assert v.resolve_href("a/c.json", "/x.json")[1] is not None


def test_link_problems(item: dict[str, Any]) -> None:
    exists = {"stac/c/collection.json"}.__contains__
    assert v.link_problems(ITEM_PATH, item, exists) == []
    broken = copy.deepcopy(item)
    broken["links"] += [
        {"rel": "child", "href": "../missing.json"},
        {"rel": "license", "href": "../../../../LICENSE"},
        {"rel": "self", "href": "f.json"},
    ]
    problems = v.link_problems(ITEM_PATH, broken, exists)
    assert types(problems) == [v.BROKEN_LINK, v.BROKEN_LINK, v.SELF_LINK]
    assert "stac/c/missing.json" in problems[0].message and "leaves the container" in problems[1].message
    url = "https://acct/silver"
    wrong_self = {**item, "links": [{"rel": "self", "href": f"{url}/stac/c/other.json"}]}
    assert types(v.link_problems(ITEM_PATH, wrong_self, exists, url)) == [v.SELF_LINK]
    right_self = {**item, "links": [{"rel": "self", "href": f"{url}/{ITEM_PATH}"}]}
    assert v.link_problems(ITEM_PATH, right_self, exists, url) == []


def test_asset_problems(item: dict[str, Any]) -> None:
    sizes = {"cogs/f.tif/f.tif": 4}
    problems, to_verify = v.asset_problems(ITEM_PATH, item, sizes.get)
    assert problems == [] and [a.blob for a in to_verify] == ["cogs/f.tif/f.tif"]
    other: dict[str, int] = {"cogs/f.tif/f.tif": 5}
    problems, _ = v.asset_problems(ITEM_PATH, item, other.get)
    assert types(problems) == [v.SIZE_MISMATCH] and "file:size 4" in problems[0].message
    nothing: dict[str, int] = {}
    problems, to_verify = v.asset_problems(ITEM_PATH, item, nothing.get)
    assert types(problems) == [v.MISSING_ASSET] and to_verify == []


def test_parse_multihash() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert v.parse_multihash(file_checksum(digest)) == ("sha256", digest)
    assert v.parse_multihash("1340" + "00" * 64)[0] == "sha512"
    for bad in ("zz", "9920" + digest, "1221" + digest, "1220" + digest[:-2]):
        with pytest.raises(ValueError):
            v.parse_multihash(bad)


# --- chunks, checksums, walk (fake storage) ----------------------------------------------------------


class FakeStorage:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.downloads: list[str] = []
        self.listings: list[str] = []
        self.heads: list[str] = []

    def download_range(self, container: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name not in self.blobs:
            raise BlobNotFoundError(name)
        self.downloads.append(name)
        data = self.blobs[name]
        return data[offset : None if length is None else offset + length]

    def properties(self, container: str, name: str) -> BlobInfo:
        self.heads.append(name)
        if name not in self.blobs:
            raise BlobNotFoundError(name)
        return BlobInfo(container, name, len(self.blobs[name]), "e", None, None)

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        self.listings.append(prefix)
        return [BlobInfo(container, n, len(d), "e", None, None) for n, d in self.blobs.items() if n.startswith(prefix)]


def container_of(item: dict[str, Any], asset_bytes: bytes = b"data") -> dict[str, bytes]:
    collection = {"type": "Collection", "id": "c", "links": [{"rel": "item", "href": "./f/f.json"}]}
    return {
        ITEM_PATH: json.dumps(item).encode(),
        "stac/c/collection.json": json.dumps(collection).encode(),
        "cogs/f.tif/f.tif": asset_bytes,
    }


def chunk(storage: FakeStorage, *names: str) -> list[dict[str, Any]]:
    return [{"name": n, "size": len(storage.blobs[n])} for n in names]


def test_validate_chunk_verifies_checksums(item: dict[str, Any]) -> None:
    storage: Any = FakeStorage(container_of(item))
    outcome = validate_chunk(storage, "silver", chunk(storage, ITEM_PATH), max_checksum_bytes=100)
    assert (outcome.objects, outcome.valid, outcome.records, outcome.checksums_verified) == (1, 1, [], 1)
    # the collection, above the chunk's objects: one HEAD; the asset's directory: one listing
    assert (storage.heads, storage.listings) == (["stac/c/collection.json"], ["cogs/f.tif/"])

    storage = FakeStorage(container_of(item, b"DATA"))  # same size, other bytes
    outcome = validate_chunk(storage, "silver", chunk(storage, ITEM_PATH), max_checksum_bytes=100)
    assert outcome.valid == 0 and outcome.problems == {v.CHECKSUM_MISMATCH: 1}
    assert outcome.records[0]["path"] == ITEM_PATH and "'data'" in outcome.records[0]["problems"][0]["message"]


def test_checksums_within_the_budget_only(item: dict[str, Any]) -> None:
    storage: Any = FakeStorage(container_of(item, b"DATA"))
    outcome = validate_chunk(storage, "silver", chunk(storage, ITEM_PATH), max_checksum_bytes=3)
    assert (outcome.valid, outcome.checksums_verified, outcome.checksums_not_verified) == (1, 0, 1)
    assert "cogs/f.tif/f.tif" not in storage.downloads
    outcome = validate_chunk(
        storage, "silver", chunk(storage, ITEM_PATH), verify_checksums=False, max_checksum_bytes=99
    )
    assert outcome.checksums_not_verified == 1 and "cogs/f.tif/f.tif" not in storage.downloads


class CountingPool(ThreadPoolExecutor):
    """Counts the downloads submitted."""

    submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_downloads_run_ahead_within_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_stac_chunk, "WINDOW_OBJECTS", 3)
    monkeypatch.setattr(validate_stac_chunk, "WINDOW_BYTES", 100)
    sizes = [10, 10, 10, 10, 60, 50, 500, 1]
    storage = FakeStorage({str(i): b"x" * size for i, size in enumerate(sizes)})
    reader = SdkBlobReader(storage, "silver")
    blobs = [{"name": str(i), "size": size} for i, size in enumerate(sizes)]
    seen = []
    with CountingPool(4) as pool:
        for blob, data, _waited in downloads(pool, reader, blobs):
            seen.append((blob["name"], len(cast(bytes, data)), pool.submitted))
    # in order, every byte; submitted ahead: 3 objects at most, 100 listed bytes at most (one at least)
    assert [(name, size) for name, size, _ in seen] == [(str(i), size) for i, size in enumerate(sizes)]
    assert [submitted for _, _, submitted in seen] == [3, 4, 5, 5, 5, 6, 7, 8]


def test_a_chunk_in_several_batches(item: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_stac_chunk, "WINDOW_OBJECTS", 1)
    storage: Any = FakeStorage({**container_of(item), "x.json": b"not json"})
    outcome = validate_chunk(storage, "silver", chunk(storage, ITEM_PATH, "x.json", "stac/c/collection.json"))
    assert (outcome.objects, outcome.valid) == (3, 1)
    assert [r["path"] for r in outcome.records] == [
        "x.json",
        "stac/c/collection.json",
    ]  # the collection: no stac_version


def test_a_deleted_object_and_not_json(item: dict[str, Any]) -> None:
    storage: Any = FakeStorage({**container_of(item), "x.json": b"not json"})
    blobs = [*chunk(storage, "x.json"), {"name": "gone.json", "size": 3}]
    outcome = validate_chunk(storage, "silver", blobs)
    assert [r["problems"][0]["type"] for r in outcome.records] == [v.NOT_JSON, v.BROKEN_LINK]
    assert outcome.by_stac_type == {"(not STAC)": 2}


def test_check_object_skips_link_checks_of_non_stac() -> None:
    index = ContainerIndex(None, "c", {}, listed=("",))
    record, _ = check_object("a.json", b'{"type": "FeatureCollection", "links": [{"rel":"x","href":"y"}]}', index, None)
    assert [p["type"] for p in record["problems"]] == [v.NOT_STAC]


def test_walk_catalog(item: dict[str, Any]) -> None:
    blobs = container_of(item)
    root = {
        "type": "Catalog",
        "links": [
            {"rel": "child", "href": "c/collection.json"},
            {"rel": "child", "href": "nope.json"},
            {"rel": "self", "href": "catalog.json"},
        ],
    }
    blobs["stac/catalog.json"] = json.dumps(root).encode()
    collection = json.loads(blobs["stac/c/collection.json"])
    collection["links"] += [{"rel": "parent", "href": "../catalog.json"}, {"rel": "child", "href": "../catalog.json"}]
    blobs["stac/c/collection.json"] = json.dumps(collection).encode()
    blobs["stac/other/x.json"] = b"{}"
    storage: Any = FakeStorage(blobs)
    found = walk_catalog(storage, "silver", "stac/catalog.json", limit=10)
    assert [f["name"] for f in found] == ["stac/catalog.json", "stac/c/collection.json", ITEM_PATH]
    assert ITEM_PATH not in storage.downloads  # items are not read by the walk
    with pytest.raises(PermanentTaskError, match="more than 2"):
        walk_catalog(storage, "silver", "stac/catalog.json", limit=2)
    with pytest.raises(PermanentTaskError, match="does not exist"):
        walk_catalog(storage, "silver", "stac/nothing.json", limit=10)


# --- parameters and controller ------------------------------------------------------------------------


def test_parameters() -> None:
    params = ValidateStacParameters.model_validate({})
    assert (params.container, params.prefix, params.catalog, params.source) == ("silver", None, None, "silver/")
    assert (
        ValidateStacParameters.model_validate({"catalog": "stac/c/collection.json"}).source
        == "silver/stac/c/collection.json"
    )
    for bad in (
        {"prefix": "a/", "catalog": "a/c.json"},
        {"catalog": "../c.json"},
        {"prefix": "../"},
        {"chunk_size": 0},
        {"x": 1},
    ):
        with pytest.raises(ValidationError):
            ValidateStacParameters.model_validate(bad)


def controller(**settings: Any) -> ValidateStacController:
    return ValidateStacController.from_settings(
        Settings(AzureWebJobsStorage="UseDevelopmentStorage=true", **settings), cast(Any, object()), cast(Any, object())
    )


def test_the_container_may_be_any_readable_or_writable_one() -> None:
    model = controller(input_containers="bronze,raw", output_containers="silver,gold").parameters_model
    for name in ("bronze", "raw", "silver", "gold"):
        assert model.model_validate({"container": name}).container == name
    with pytest.raises(ValidationError):
        model.model_validate({"container": "other"})
    with pytest.raises(ValidationError):
        model.model_validate({"output_container": "bronze"})


def test_fan_out_and_result() -> None:
    job = controller()
    params = ValidateStacParameters()
    assert [t.key for t in job.create_tasks(1, params, {})] == ["list"]
    assert [t.key for t in job.create_tasks(2, params, {"list": {"chunk_count": 3}})] == [
        "chunk_00000",
        "chunk_00001",
        "chunk_00002",
    ]
    assert [t.key for t in job.create_tasks(3, params, {})] == ["report"]
    chunk_result = {
        "objects": 5,
        "valid": 3,
        "checksums_verified": 2,
        "checksums_not_verified": 0,
        "by_stac_type": {"Feature": 5},
        "objects_per_second": 4000,
    }
    outcome = JobOutcome(
        results_by_stage={
            "list": {"list": {"chunk_count": 2}},
            "validate": {"chunk_00000": chunk_result, "chunk_00001": {**chunk_result, "objects_per_second": 3000}},
            "report": {"report": {"errors": {"schema": {"objects": 4}}, "report": {"blob": "r"}}},
        },
        failed_by_stage={},
    )
    result = job.finalize(params, outcome)
    assert (result["objects"], result["valid"], result["invalid"], result["chunks"]) == (10, 6, 4, 2)
    assert result["by_stac_type"] == {"Feature": 10} and result["errors"] == {"schema": {"objects": 4}}
    assert result["objects_per_second_per_task"] == 3000
    assert report_blob("silver", "j") == "validation/silver/j.jsonl"


def test_domain_modules_stay_small() -> None:
    root = Path(__file__).resolve().parents[2]
    for module in (
        "services/stac/validation.py",
        "services/stac/lint.py",
        "controllers/validate_stac.py",
        "controllers/validate_stac_run.py",
        "controllers/validate_stac_chunk.py",
        "repositories/blob_reader.py",
    ):
        assert len((root / module).read_text().splitlines()) <= 400, module
