"""One validate_stac chunk as a pipeline: objects are downloaded ahead of the checks by a pool of
threads, checked in order on the calling thread as they arrive, and each distinct checksummed asset
is hashed by the same pool as soon as the object naming it has been checked — downloads, listings,
checks and checksum reads overlap instead of running as phases.

Memory stays bounded: at most WINDOW_OBJECTS objects (and WINDOW_BYTES of listed bytes, at least one
object) are downloaded ahead of the checks, and an asset is hashed as a stream of blocks
(``repositories/blob_reader.py``), one block per thread at a time.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controllers.validate_stac_run import ContainerIndex, check_object
from repositories.blob_reader import BlobReader, open_blob_reader
from schemas.errors import BlobNotFoundError
from services.stac.validation import (
    BROKEN_LINK,
    CHECKSUM_MISMATCH,
    CHECKSUM_UNSUPPORTED,
    MISSING_ASSET,
    NOT_JSON,
    AssetFile,
    Problem,
    new_hasher,
    parse_multihash,
)

# Small objects: per-request cost, not bytes, bounds a task. On Azurite 8 to 64 threads reach the same
# rate (its own ceiling, bench/README.md "STAC validation"); 32 hide Azure Storage's latency of a few
# milliseconds per GET.
DOWNLOAD_THREADS = 32
MAX_OBJECT_BYTES = 64 * 1024 * 1024  # a STAC JSON larger than this is reported, not parsed
WINDOW_OBJECTS = 500  # objects downloaded ahead of the checks, at most
WINDOW_BYTES = 128 * 1024 * 1024  # and their listed bytes, at most (at least one object)


@dataclass
class ChunkOutcome:
    records: list[dict[str, Any]] = field(default_factory=list)  # objects with problems only
    objects: int = 0
    valid: int = 0
    by_stac_type: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    checksums_verified: int = 0
    checksums_not_verified: int = 0
    # the calling thread's time, which adds up to the chunk's: waiting for downloads, listing (and HEADs),
    # checking, then waiting for the checksums still running after the last check
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


def _listed_size(blob: dict[str, Any]) -> int:
    return min(int(blob.get("size") or 0), MAX_OBJECT_BYTES)


def _download(reader: BlobReader, blob: dict[str, Any]) -> bytes | Problem:
    if int(blob.get("size") or 0) > MAX_OBJECT_BYTES:
        return Problem(NOT_JSON, f"{blob['size']} bytes: larger than {MAX_OBJECT_BYTES} bytes, not read")
    if int(blob.get("size") or 0) == 0:
        return b""  # nothing to read (and a range read of an empty blob is a 416)
    try:
        return reader.read(blob["name"])
    except BlobNotFoundError:
        return Problem(BROKEN_LINK, "the object was deleted after it was listed")


def downloads(
    pool: ThreadPoolExecutor, reader: BlobReader, blobs: list[dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], bytes | Problem, float]]:
    """(blob, its bytes or problem, seconds waited for them) in the chunk's order, while the pool
    downloads the next ones: at most WINDOW_OBJECTS objects and WINDOW_BYTES ahead."""
    ahead: deque[tuple[dict[str, Any], Future[bytes | Problem]]] = deque()
    ahead_bytes, position = 0, 0
    while position < len(blobs) or ahead:
        while position < len(blobs):
            size = _listed_size(blobs[position])
            if ahead and (len(ahead) >= WINDOW_OBJECTS or ahead_bytes + size > WINDOW_BYTES):
                break
            ahead.append((blobs[position], pool.submit(_download, reader, blobs[position])))
            ahead_bytes += size
            position += 1
        blob, future = ahead.popleft()
        started = time.perf_counter()
        data = future.result()
        waited = time.perf_counter() - started
        ahead_bytes -= _listed_size(blob)
        yield blob, data, waited


def hash_blob(reader: BlobReader, asset: AssetFile) -> Problem | None:
    """The problem with ``asset``'s checksum, or None when the blob's bytes match it."""
    assert asset.checksum is not None
    try:
        algorithm, expected = parse_multihash(asset.checksum)
    except ValueError as exc:
        return Problem(CHECKSUM_UNSUPPORTED, f"asset {asset.key!r}: {exc}")
    hasher = new_hasher(algorithm)
    try:
        reader.stream(asset.blob, hasher.update, int(asset.size or 0))
    except BlobNotFoundError:
        return Problem(MISSING_ASSET, f"asset {asset.key!r}: blob {asset.blob[:200]} was deleted after it was listed")
    actual = hasher.hexdigest()
    if actual == expected:
        return None
    return Problem(
        CHECKSUM_MISMATCH, f"asset {asset.key!r}: file:checksum {algorithm} {expected[:16]}…, the blob's {actual[:16]}…"
    )


class ChecksumVerifier:
    """Each distinct (blob, checksum) hashed once, in the pool, while the byte budget lasts (in the
    order the objects are checked); every asset naming it gets the verdict."""

    def __init__(self, pool: ThreadPoolExecutor, reader: BlobReader, *, enabled: bool, budget: int) -> None:
        self._pool = pool
        self._reader = reader
        self._enabled = enabled
        self._budget = budget
        self._chosen: dict[tuple[str, str], tuple[AssetFile, Future[Problem | None]]] = {}
        self._refused: set[tuple[str, str]] = set()
        self._assets: list[tuple[dict[str, Any], AssetFile, tuple[str, str]]] = []

    def add(self, record: dict[str, Any], asset: AssetFile) -> None:
        key = (asset.blob, str(asset.checksum))
        size = int(asset.size or 0)
        if key not in self._chosen and key not in self._refused:
            if self._enabled and size <= self._budget:
                self._budget -= size
                self._chosen[key] = (asset, self._pool.submit(hash_blob, self._reader, asset))
            else:
                self._refused.add(key)
        self._assets.append((record, asset, key))

    def finish(self, outcome: ChunkOutcome) -> None:
        """Wait for every verdict; add them to the records, count verified and not verified."""
        for record, asset, key in self._assets:
            if key not in self._chosen:
                outcome.checksums_not_verified += 1
                continue
            outcome.checksums_verified += 1
            chosen, verdict = self._chosen[key][0], self._chosen[key][1].result()
            if verdict is not None:
                message = verdict.message.replace(f"asset {chosen.key!r}", f"asset {asset.key!r}", 1)
                record["problems"].append(Problem(verdict.type, message).to_dict())


def validate_chunk(
    storage: Any,
    container: str,
    blobs: list[dict[str, Any]],
    *,
    container_url: str | None = None,
    verify_checksums: bool = True,
    max_checksum_bytes: int = 0,
    index: ContainerIndex | None = None,
    reader: BlobReader | None = None,
) -> ChunkOutcome:
    """Download and check every object of a chunk; verify checksums until ``max_checksum_bytes``."""
    outcome = ChunkOutcome(objects=len(blobs))
    own_reader = reader is None
    reader = reader or open_blob_reader(storage, container)
    known = {b["name"]: int(b.get("size") or 0) for b in blobs}
    index = index or ContainerIndex(storage, container, known, lister=reader.list_sizes, head=reader.size_of)
    records: list[dict[str, Any]] = []
    timings = {"download": 0.0, "checks": 0.0}
    pool = ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="validate-stac")
    try:
        checksums = ChecksumVerifier(pool, reader, enabled=verify_checksums, budget=max_checksum_bytes)
        for blob, data, waited in downloads(pool, reader, blobs):
            timings["download"] += waited
            started, listing = time.perf_counter(), index.seconds
            if isinstance(data, Problem):
                record: dict[str, Any] = {"path": blob["name"], "stac_type": None, "id": None}
                record["problems"] = [data.to_dict()]
                to_verify: list[AssetFile] = []
            else:
                record, to_verify = check_object(blob["name"], data, index, container_url)
            records.append(record)
            for asset in to_verify:
                checksums.add(record, asset)
            timings["checks"] += time.perf_counter() - started - (index.seconds - listing)
        started = time.perf_counter()
        checksums.finish(outcome)
        checksum_wait = time.perf_counter() - started
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if own_reader:
            reader.close()
    outcome.seconds = {**timings, "listing": index.seconds, "checksums": checksum_wait}
    for record in records:
        outcome.by_stac_type[record["stac_type"] or "(not STAC)"] += 1
        if record["problems"]:
            outcome.records.append(record)
            outcome.problems.update({p["type"] for p in record["problems"]})
        else:
            outcome.valid += 1
    return outcome
