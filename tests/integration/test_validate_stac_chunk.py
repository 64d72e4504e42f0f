"""validate_stac's chunk pipeline and its blob reader on real Azurite: a chunk of hundreds of objects,
downloaded ahead of the checks with their checksummed assets hashed concurrently, reports exactly the
objects whose assets are missing, corrupt or deleted (once per object, shared assets hashed once) —
the same findings through the HTTP reader and the SDK one; the HTTP reader translates storage errors
like BlobStorage does and lists past a page."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import rasterio

from controllers import validate_stac_chunk, validate_stac_run
from controllers.validate_stac_chunk import validate_chunk
from controllers.validate_stac_run import ContainerIndex
from devstack.azurite import free_port, start_azurite
from repositories import blob_reader
from repositories.blob_reader import BlobReader, HttpBlobReader, SdkBlobReader, open_blob_reader
from repositories.blob_storage import BlobStorage
from repositories.storage_account import STORAGE_SCOPE, StorageAccount
from schemas.errors import BlobAccessDeniedError, BlobNotFoundError, StorageUnavailableError
from services.raster.inspect import inspect_dataset
from services.stac.builder import AssetFile, build_item
from tests.support import rasters
from tests.support.identity import EmulatorTokenCredential, private_ca_certificates

pytestmark = pytest.mark.integration

OBJECTS = 320
Chunk = tuple[list[dict[str, Any]], dict[str, str]]  # the chunk's blobs, the expected problem by path


@pytest.fixture(scope="module")
def storage(azurite_connection_string: str) -> BlobStorage:
    blobs = BlobStorage(azurite_connection_string)
    blobs.ensure_container("silver")
    return blobs


def asset_bytes(number: int) -> bytes:
    return f"asset bytes of tile {number:05d}".encode()


@pytest.fixture(scope="module")
def chunk(
    storage: BlobStorage, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """OBJECTS Items over 4 folders, each with a checksummed asset; the chunk's blobs and the expected
    problem type by object path. Every 7th asset is missing, every 11th (not 7th) corrupt (same size,
    other bytes), every 13th (neither) shares tile 1's asset blob; 3 listed objects were deleted and
    one is not JSON."""
    with rasterio.open(rasters.uint8_rgb(tmp_path_factory.mktemp("r") / "s.tif", 20, 20)) as dataset:
        meta = inspect_dataset(dataset)
    prefix = f"chunk-{secrets.token_hex(3)}/"
    collection = {"type": "Collection", "id": "c", "links": []}
    storage.upload_bytes("silver", f"{prefix}collection.json", json.dumps(collection).encode(), content_type="a/j")
    blobs: list[dict[str, Any]] = []
    expected: dict[str, str] = {}
    uploads: list[tuple[str, bytes]] = []
    for number in range(OBJECTS):
        shared = number % 13 == 0 and number % 7 and number % 11
        target = 1 if shared else number
        data = asset_bytes(target)
        href = f"../assets/tilé_{target:05d}.bin"  # not ASCII: quoted in the URL
        file = AssetFile(href=href, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        item = build_item(f"t{number}", meta, file, item_datetime=datetime(2024, 1, 2, tzinfo=UTC))
        document = item.to_dict(include_self_link=False)
        document["links"] = [{"rel": "parent", "href": "../collection.json"}]
        path = f"{prefix}f{number % 4}/t{number}.json"
        uploads.append((path, json.dumps(document).encode()))
        if number % 7 == 0:
            expected[path] = "missing_asset"
        elif number % 11 == 0:
            uploads.append((f"{prefix}assets/tilé_{number:05d}.bin", data.upper()))
            expected[path] = "checksum_mismatch"
        elif not shared:
            uploads.append((f"{prefix}assets/tilé_{number:05d}.bin", data))
    for path, data in uploads:
        storage.upload_bytes("silver", path, data, content_type="a/j")
    blobs = [{"name": path, "size": len(data)} for path, data in uploads if path.endswith(".json")]
    storage.upload_bytes("silver", f"{prefix}f0/bad.json", b"{not json", content_type="a/j")
    blobs.append({"name": f"{prefix}f0/bad.json", "size": 9})
    expected[f"{prefix}f0/bad.json"] = "not_json"
    for gone in range(3):
        blobs.insert(gone * 100, {"name": f"{prefix}f1/gone{gone}.json", "size": 500})
        expected[f"{prefix}f1/gone{gone}.json"] = "broken_link"
    return blobs, expected


def findings(outcome: validate_stac_chunk.ChunkOutcome) -> dict[str, str]:
    found = {}
    for record in outcome.records:
        assert len(record["problems"]) == 1, record
        found[record["path"]] = record["problems"][0]["type"]
    return found


@pytest.mark.parametrize("window", [None, 7])
def test_a_large_chunk_reports_exactly_its_missing_and_corrupt_assets(
    storage: BlobStorage,
    chunk: Chunk,
    window: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blobs, expected = chunk
    if window:
        monkeypatch.setattr(validate_stac_chunk, "WINDOW_OBJECTS", window)
    reader = open_blob_reader(storage, "silver")
    assert isinstance(reader, HttpBlobReader)
    outcome = validate_chunk(storage, "silver", blobs, max_checksum_bytes=10**9, reader=reader)
    assert findings(outcome) == expected
    assert outcome.objects == len(blobs) == OBJECTS + 4
    assert outcome.valid == len(blobs) - len(expected)
    assert outcome.problems == Counter(expected.values())
    checksummed = OBJECTS - sum(1 for n in range(OBJECTS) if n % 7 == 0)  # a missing asset is not hashed
    assert (outcome.checksums_verified, outcome.checksums_not_verified) == (checksummed, 0)
    assert [r["path"] for r in outcome.records] == [b["name"] for b in blobs if b["name"] in expected]  # in order


def test_the_sdk_reader_finds_the_same(storage: BlobStorage, chunk: Chunk) -> None:
    blobs, _expected = chunk
    fast = validate_chunk(storage, "silver", blobs, max_checksum_bytes=10**9)
    slow = validate_chunk(storage, "silver", blobs, max_checksum_bytes=10**9, reader=SdkBlobReader(storage, "silver"))
    assert fast.records == slow.records and fast.summary()["problems"] == slow.summary()["problems"]


def test_the_budget_is_spent_in_chunk_order(storage: BlobStorage, chunk: Chunk) -> None:
    blobs, expected = chunk
    outcome = validate_chunk(storage, "silver", blobs, max_checksum_bytes=5 * len(asset_bytes(0)))
    # the first 5 distinct assets in chunk order: items 1, 2, 3, 4, 5 (tile 1's also for every 13th)
    first = {1, 2, 3, 4, 5}
    numbers = [int(b["name"].rsplit("/t", 1)[1][:-5]) for b in blobs if "/t" in b["name"]]
    shared = [n for n in numbers if n % 13 == 0 and n % 7 and n % 11]
    assert outcome.checksums_verified == len(first) + len(shared)
    missing = sum(1 for kind in expected.values() if kind == "missing_asset")
    assert outcome.checksums_verified + outcome.checksums_not_verified == OBJECTS - missing
    corrupt = {path for path, kind in expected.items() if kind == "checksum_mismatch"}
    assert not corrupt & {r["path"] for r in outcome.records}  # tile 11, the first corrupt one: past the budget


def test_the_http_reader_reads_lists_and_translates_errors(
    storage: BlobStorage, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"reader-{secrets.token_hex(3)}/"
    names = [f"{prefix}a #{n} é%.json" for n in range(12)]
    for number, name in enumerate(names):
        storage.upload_bytes("silver", name, b"x" * number, content_type="a/j")
    reader = open_blob_reader(storage, "silver")
    assert isinstance(reader, HttpBlobReader)
    assert reader.read(names[5]) == b"xxxxx" and reader.read(names[0]) == b""
    streamed: list[bytes] = []
    assert reader.stream(names[11], streamed.append, 4) == 4 and b"".join(streamed) == b"xxxx"
    monkeypatch.setattr(blob_reader, "LIST_PAGE", 5)  # three pages
    assert sorted(reader.list_sizes(prefix)) == sorted((name, n) for n, name in enumerate(names))
    assert (reader.size_of(names[5]), reader.size_of(names[0]), reader.size_of(f"{prefix}nothing.json")) == (5, 0, None)
    with pytest.raises(BlobNotFoundError, match=r"nothing\.json"):
        reader.read(f"{prefix}nothing.json")
    wrong_key = azurite_connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    with pytest.raises(BlobAccessDeniedError, match="HTTP 403"):
        open_blob_reader(BlobStorage(wrong_key), "silver").read(names[1])
    unreachable = HttpBlobReader(f"http://127.0.0.1:{free_port()}/a/silver", api_version="2021-08-06")
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        unreachable.read(names[1])


def test_a_connection_string_with_a_sas_reads_with_it(storage: BlobStorage, azurite_connection_string: str) -> None:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    credential = storage.client.credential
    sas = generate_account_sas(
        credential.account_name,
        credential.account_key,
        ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True, list=True),
        expiry=datetime(2100, 1, 1, tzinfo=UTC),
    )
    endpoint = storage.client.url.rstrip("/")
    name = f"sas-{secrets.token_hex(3)}.json"
    storage.upload_bytes("silver", name, b"{}", content_type="a/j")
    reader = open_blob_reader(BlobStorage(f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"), "silver")
    assert isinstance(reader, HttpBlobReader) and reader.read(name) == b"{}"
    assert dict(reader.list_sizes(name)) == {name: 2}


def test_module_is_small() -> None:
    assert len(Path(blob_reader.__file__).read_text().splitlines()) <= 400


def test_with_an_identity_the_reader_sends_its_token_over_tls(tmp_path: Path) -> None:
    """Identity-based storage (Azure's case): a bearer token from the credential, TLS verified against
    the account's CA bundle (Azurite over HTTPS with --oauth basic refuses anonymous requests)."""
    ca, cert, key = private_ca_certificates(tmp_path / "tls")
    azurite = start_azurite(location=tmp_path / "data", tls=(cert, key), oauth=True, in_memory=True)
    try:
        uri = f"https://127.0.0.1:{azurite.blob_port}/devstoreaccount1"
        credential = EmulatorTokenCredential()
        storage = BlobStorage(StorageAccount.identity(credential, blob_service_uri=uri, verify=str(ca)))
        storage.ensure_container("silver")
        storage.upload_bytes("silver", "d/a.json", b'{"a": 1}', content_type="a/j")
        reader = open_blob_reader(storage, "silver")
        assert isinstance(reader, HttpBlobReader)
        assert reader.read("d/a.json") == b'{"a": 1}' and dict(reader.list_sizes("d/")) == {"d/a.json": 8}
        assert STORAGE_SCOPE in credential.calls
        anonymous = HttpBlobReader(f"{uri}/silver", api_version="2021-08-06", verify=str(ca))
        with pytest.raises(BlobAccessDeniedError, match=r"HTTP 40[13]"):
            anonymous.read("d/a.json")
        untrusted = HttpBlobReader(f"{uri}/silver", api_version="2021-08-06", token=lambda: "x")
        with pytest.raises(StorageUnavailableError):  # the private CA is not trusted by default
            untrusted.read("d/a.json")
    finally:
        azurite.stop()


class CountingReader:
    """A real reader that records its HEADs and listings."""

    def __init__(self, reader: BlobReader) -> None:
        self.reader = reader
        self.heads: list[str] = []
        self.listings: list[str] = []

    def size_of(self, name: str) -> int | None:
        self.heads.append(name)
        return self.reader.size_of(name)

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        self.listings.append(prefix)
        return self.reader.list_sizes(prefix)


def test_the_index_heads_above_the_chunk_then_lists(storage: BlobStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_stac_run, "HEADS_PER_DIRECTORY", 2)
    p = f"index-{secrets.token_hex(3)}/"
    blobs = {"s/c/i1/i1.json": b"1", "s/c/i2/i2.json": b"2", "s/c/collection.json": b"cc", "s/c/i1/a.tif": b"aaa"}
    blobs |= {"s/c/i2/a.tif": b"a", "s/c/x.json": b"x", "cogs/1.tif": b"1", "cogs/2.tif": b"22", "root.json": b"r"}
    for name, data in blobs.items():
        storage.upload_bytes("silver", p + name, data, content_type="x/y")
    reader = CountingReader(open_blob_reader(storage, "silver"))
    known = {f"{p}s/c/i1/i1.json": 1, f"{p}s/c/i2/i2.json": 1}
    index = ContainerIndex(None, "silver", known, lister=reader.list_sizes, head=reader.size_of)
    assert [index.size(p + n) for n in ("s/c/collection.json", "s/c/collection.json", "s/c/i1/a.tif")] == [2, 2, 3]
    assert index.size(p + "root.json") == 1 and not index.exists(p + "s/c/nothing.json")
    assert not index.exists(p + "nope.json")
    heads = ["s/c/collection.json", "s/c/i1/a.tif", "root.json", "s/c/nothing.json", "nope.json"]
    assert reader.heads == [p + n for n in heads] and reader.listings == []
    assert index.size(p + "s/c/x.json") == 1  # a third name in s/c/: listed instead
    assert reader.listings == [p + "s/c/"] and index.size(p + "s/c/i2/a.tif") == 1  # inside the listed tree
    assert (index.size(p + "cogs/2.tif"), index.size(p + "cogs/1.tif")) == (2, 1)  # not above the chunk: listed
    assert reader.listings == [p + "s/c/", p + "cogs/"] and (index.heads, index.listings) == (5, 2)
