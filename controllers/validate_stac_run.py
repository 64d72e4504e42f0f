"""The storage side of validate_stac: a container index for links and assets, downloading and
validating a chunk of STAC objects, verifying checksums within a byte budget, walking a catalog.

The checks themselves are pure functions in services/stac/validation.py and services/stac/lint.py.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from repositories.blob_storage import BlobStorage
from schemas.errors import BlobNotFoundError, PermanentTaskError
from services.stac.lint import lint_problems
from services.stac.validation import (
    BROKEN_LINK,
    CHECKSUM_MISMATCH,
    CHECKSUM_UNSUPPORTED,
    NOT_JSON,
    AssetFile,
    Problem,
    asset_problems,
    link_problems,
    linked_objects,
    new_hasher,
    parse_document,
    parse_multihash,
    schema_problems,
    stac_type,
)

DOWNLOAD_THREADS = 32  # STAC objects are small: per-request overhead, not bytes, bounds a task
CHECKSUM_THREADS = 16  # at most 16 x CHECKSUM_BLOCK (128 MiB) in memory
CHECKSUM_BLOCK = 8 * 1024 * 1024
MAX_OBJECT_BYTES = 64 * 1024 * 1024  # a STAC JSON larger than this is reported, not parsed
BATCH_OBJECTS = 500  # objects downloaded, then checked, at a time
BATCH_BYTES = 128 * 1024 * 1024


class ContainerIndex:
    """Which blobs exist and their sizes, from listings gathered once per directory.

    A name is looked up in the listing of its directory's subtree (``dir/``), listed on first use
    and kept; a directory inside one already listed is not listed again. Cheaper than one HEAD per
    link or asset: the objects of a chunk mostly point into the same few directories."""

    def __init__(
        self,
        storage: BlobStorage | None,
        container: str,
        known: dict[str, int] | None = None,
        *,
        listed: tuple[str, ...] = (),
    ) -> None:
        """``known``: blobs known to exist (name -> size); ``listed``: prefixes whose blobs ``known``
        holds completely ("" = the whole container: no listing at all)."""
        self._storage = storage
        self._container = container
        self._sizes: dict[str, int] = dict(known or {})
        self._listed: list[str] = list(listed)
        self._lock = threading.Lock()
        self.listings = 0
        self.seconds = 0.0  # spent listing

    def _covered(self, prefix: str) -> bool:
        return any(prefix.startswith(listed) for listed in self._listed)

    def size(self, name: str) -> int | None:
        with self._lock:
            if name in self._sizes:
                return self._sizes[name]
            directory = posixpath.dirname(name)
            prefix = f"{directory}/" if directory else ""
            if not self._covered(prefix):
                assert self._storage is not None, "an index without storage must be complete"
                started = time.perf_counter()
                for blob in self._storage.list_blobs(self._container, prefix):
                    self._sizes[blob.name] = blob.size
                self._listed.append(prefix)
                self.listings += 1
                self.seconds += time.perf_counter() - started
            return self._sizes.get(name)

    def exists(self, name: str) -> bool:
        return self.size(name) is not None


def _download(storage: BlobStorage, container: str, blob: dict[str, Any]) -> bytes | Problem:
    if int(blob.get("size") or 0) > MAX_OBJECT_BYTES:
        return Problem(NOT_JSON, f"{blob['size']} bytes: larger than {MAX_OBJECT_BYTES} bytes, not read")
    if int(blob.get("size") or 0) == 0:
        return b""  # a range read of an empty blob is a 416
    try:
        return storage.download_range(container, blob["name"])
    except BlobNotFoundError:
        return Problem(BROKEN_LINK, "the object was deleted after it was listed")


def check_object(
    path: str, data: bytes, index: ContainerIndex, container_url: str | None
) -> tuple[dict[str, Any], list[AssetFile]]:
    """Every problem of one object but its checksums; the assets whose checksum remains to verify."""
    document, problem = parse_document(data)
    record: dict[str, Any] = {"path": path, "stac_type": None, "id": None}
    if document is None:
        return {**record, "problems": [problem.to_dict()] if problem else []}, []
    record["stac_type"] = stac_type(document)
    record["id"] = document.get("id") if isinstance(document.get("id"), str) else None
    problems = schema_problems(document)
    to_verify: list[AssetFile] = []
    if record["stac_type"] is not None:
        problems += lint_problems(document)
        problems += link_problems(path, document, index.exists, container_url)
        found, to_verify = asset_problems(path, document, index.size, container_url)
        problems += found
    return {**record, "problems": [p.to_dict() for p in problems]}, to_verify


def hash_blob(storage: BlobStorage, container: str, asset: AssetFile) -> Problem | None:
    """The problem with ``asset``'s checksum, or None when the blob's bytes match it."""
    assert asset.checksum is not None
    try:
        algorithm, expected = parse_multihash(asset.checksum)
    except ValueError as exc:
        return Problem(CHECKSUM_UNSUPPORTED, f"asset {asset.key!r}: {exc}")
    hasher = new_hasher(algorithm)
    offset, size = 0, int(asset.size or 0)
    while offset < size:
        block = storage.download_range(container, asset.blob, offset, min(CHECKSUM_BLOCK, size - offset))
        hasher.update(block)
        offset += len(block)
        if not block:
            break
    actual = hasher.hexdigest()
    if actual == expected:
        return None
    return Problem(
        CHECKSUM_MISMATCH, f"asset {asset.key!r}: file:checksum {algorithm} {expected[:16]}…, the blob's {actual[:16]}…"
    )


@dataclass
class ChunkOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)  # objects with problems only
    objects: int = 0
    valid: int = 0
    by_stac_type: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    checksums_verified: int = 0
    checksums_not_verified: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "valid": self.valid,
            "by_stac_type": dict(sorted(self.by_stac_type.items())),
            "problems": dict(sorted(self.problems.items())),
            "checksums_verified": self.checksums_verified,
            "checksums_not_verified": self.checksums_not_verified,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "objects_per_second": self.rate(sum(self.seconds.values())),
            "checks_per_second": self.rate(self.seconds.get("checks", 0.0)),
        }

    def rate(self, seconds: float) -> int | None:
        return round(self.objects / seconds) if self.objects and seconds > 0 else None


def batches(blobs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The chunk in download batches of at most BATCH_OBJECTS objects and BATCH_BYTES listed bytes
    (at least one object each): a batch's bytes are all a task holds at a time."""
    batch: list[dict[str, Any]] = []
    size = 0
    for blob in blobs:
        blob_size = min(int(blob.get("size") or 0), MAX_OBJECT_BYTES)
        if batch and (len(batch) >= BATCH_OBJECTS or size + blob_size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(blob)
        size += blob_size
    if batch:
        yield batch


def validate_chunk(
    storage: BlobStorage,
    container: str,
    blobs: list[dict[str, Any]],
    *,
    container_url: str | None = None,
    verify_checksums: bool = True,
    max_checksum_bytes: int = 0,
    index: ContainerIndex | None = None,
) -> ChunkOutcome:
    """Download and check every object of a chunk; verify checksums until ``max_checksum_bytes``."""
    outcome = ChunkOutcome(objects=len(blobs))
    index = index or ContainerIndex(storage, container, {b["name"]: int(b.get("size") or 0) for b in blobs})
    records, pending = [], []
    timings = {"download": 0.0, "checks": 0.0}
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        for batch in batches(blobs):
            started = time.perf_counter()
            contents = list(pool.map(lambda blob: _download(storage, container, blob), batch))
            timings["download"] += time.perf_counter() - started
            started, listing = time.perf_counter(), index.seconds
            for blob, data in zip(batch, contents, strict=True):
                if isinstance(data, Problem):
                    record: dict[str, Any] = {"path": blob["name"], "stac_type": None, "id": None}
                    record["problems"] = [data.to_dict()]
                    to_verify: list[AssetFile] = []
                else:
                    record, to_verify = check_object(blob["name"], data, index, container_url)
                records.append(record)
                pending += [(record, asset) for asset in to_verify]
            timings["checks"] += time.perf_counter() - started - (index.seconds - listing)
    outcome.seconds = {"download": timings["download"], "listing": index.seconds, "checks": timings["checks"]}
    started = time.perf_counter()
    _verify(storage, container, pending, outcome, verify_checksums, max_checksum_bytes)
    outcome.seconds["checksums"] = time.perf_counter() - started
    for record in records:
        outcome.by_stac_type[record["stac_type"] or "(not STAC)"] += 1
        if record["problems"]:
            outcome.records.append(record)
            outcome.problems.update({p["type"] for p in record["problems"]})
        else:
            outcome.valid += 1
    return outcome


def _verify(
    storage: BlobStorage,
    container: str,
    pending: list[tuple[dict[str, Any], AssetFile]],
    outcome: ChunkOutcome,
    enabled: bool,
    budget: int,
) -> None:
    """Verify each distinct (blob, checksum) once, while the byte budget lasts."""
    chosen: dict[tuple[str, str], AssetFile] = {}
    for _record, asset in pending:
        key = (asset.blob, str(asset.checksum))
        if key in chosen:
            continue
        if enabled and int(asset.size or 0) <= budget:
            budget -= int(asset.size or 0)
            chosen[key] = asset
    outcome.checksums_not_verified = sum(1 for _r, a in pending if (a.blob, str(a.checksum)) not in chosen)
    if not chosen:
        return
    with ThreadPoolExecutor(CHECKSUM_THREADS) as pool:
        verdicts = dict(zip(chosen, pool.map(lambda a: hash_blob(storage, container, a), chosen.values()), strict=True))
    for record, asset in pending:
        key = (asset.blob, str(asset.checksum))
        if key not in verdicts:
            continue
        outcome.checksums_verified += 1
        verdict = verdicts[key]
        if verdict is not None:
            message = verdict.message.replace(f"asset {chosen[key].key!r}", f"asset {asset.key!r}", 1)
            record["problems"].append(Problem(verdict.type, message).to_dict())


def walk_catalog(
    storage: BlobStorage,
    container: str,
    catalog: str,
    *,
    limit: int,
    index: ContainerIndex | None = None,
    read: Callable[[str], bytes] | None = None,
) -> list[dict[str, Any]]:
    """Every object reachable from ``catalog`` through child and item links within the container
    (catalogs and collections are read to find their links; items are not read here). Each blob
    once, breadth first; link targets that do not exist are left to the parent's broken_link."""
    index = index or ContainerIndex(storage, container)
    read = read or (lambda name: storage.download_range(container, name))
    if index.size(catalog) is None:
        raise PermanentTaskError(f"catalog {container}/{catalog} does not exist")
    found: dict[str, int] = {catalog: int(index.size(catalog) or 0)}
    queue = deque([catalog])
    while queue:
        path = queue.popleft()
        document, _problem = parse_document(read(path))
        if document is None:
            continue
        children = set(linked_objects(path, document, ("child",)))
        for name in linked_objects(path, document, ("child", "item")):
            size = index.size(name)
            if name in found or size is None:
                continue
            if len(found) >= limit:
                raise PermanentTaskError(
                    f"the catalog {container}/{catalog} reaches more than {limit:,} objects (chunk_size x "
                    "MAX_TASKS_PER_STAGE): raise chunk_size or validate a sub-catalog"
                )
            found[name] = size
            if name in children:
                queue.append(name)
    return [{"name": name, "size": size} for name, size in found.items()]
