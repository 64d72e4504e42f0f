"""The stack half of ``bench.stac_validation_benchmark --stack N``: a validate_stac task on Azurite.

N Items (each with its own small asset blob, correct file:size and file:checksum) and their collection
are uploaded to a private Azurite; then, ``--repeat`` times, alternating on that one Azurite:

1. ``raw GETs``: the ceiling — the same 2N GETs (N Items, N assets) a task needs, by a minimal asyncio
   HTTP/1.1 client (keep-alive, 16 connections, a container SAS, no parsing): what Azurite serves;
2. ``chunk, SDK reader``: ``validate_chunk`` in this process reading through the Azure SDK
   (``SdkBlobReader``, what validate_stac did before issue 15);
3. ``chunk, HTTP reader``: the same with ``HttpBlobReader`` (what validate_stac does);
4. ``job``: the validate_stac job through the local Functions host (1 worker), chunk_size N + 1 (one
   validate task), its task's own objects/s and seconds per phase;

and, once, the job with ``verify_checksums`` false (one GET per object). Every figure carries the
1-minute load average read when it was taken.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from controllers.validate_stac_chunk import validate_chunk
from repositories.blob_reader import SdkBlobReader
from repositories.blob_storage import BlobStorage

RAW_CONNECTIONS = 16


def load() -> float:
    return round(os.getloadavg()[0], 2)


async def _raw_gets(container_url: str, sas: str, names: list[str], connections: int) -> int:
    """GET every blob over ``connections`` keep-alive connections; the bytes received."""
    parts = urlsplit(container_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)
    received = 0

    async def connection() -> None:
        nonlocal received
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                path = f"{parts.path}/{quote(queue.get_nowait(), safe='/~')}?{sas}"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                received += len(await reader.readexactly(length))
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return received


def raw_gets_per_second(storage: BlobStorage, container: str, names: list[str]) -> float:
    credential = storage.client.credential
    now = datetime.now(UTC)
    sas = generate_container_sas(
        credential.account_name,
        container,
        account_key=credential.account_key,
        permission=ContainerSasPermissions(read=True),
        start=now - timedelta(minutes=5),
        expiry=now + timedelta(hours=1),
    )
    url = storage.client.get_container_client(container).url
    started = time.perf_counter()
    asyncio.run(_raw_gets(url, sas, names, RAW_CONNECTIONS))
    return len(names) / (time.perf_counter() - started)


def chunk_rate(storage: BlobStorage, container: str, blobs: list[dict[str, Any]], *, sdk: bool) -> dict[str, Any]:
    reader = SdkBlobReader(storage, container) if sdk else None
    started = time.perf_counter()
    outcome = validate_chunk(storage, container, blobs, max_checksum_bytes=10**12, reader=reader)
    seconds = time.perf_counter() - started
    assert outcome.valid == outcome.objects == outcome.checksums_verified + 1, outcome.summary()
    return {"objects_per_s": round(len(blobs) / seconds), "load_1m": load()}


def run_job(host_url: str, stack: Any, params: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    from bench import measure

    submitted = measure.submit_job(host_url, "validate_stac", params)
    final = measure.wait_for_job(host_url, submitted["job_id"], timeout=600)
    result = final.get("result") or {}
    if final.get("status") != "completed" or result.get("invalid") != 0:
        raise SystemExit(f"validate_stac did not complete cleanly: {final.get('status')} {final.get('error')}")
    with psycopg.connect(stack.conninfo()) as conn:
        row = conn.execute(
            f"SELECT result FROM {stack.schema}.tasks WHERE job_id = %s AND stage = 2", (submitted["job_id"],)
        ).fetchone()
    return {
        "objects_per_s": result.get("objects_per_second_per_task"),
        "checks_objects_per_s": result.get("checks_per_second_per_task"),
        "checksums_verified": result.get("checksums_verified"),
        "seconds": (row[0] or {}).get("seconds") if row else None,
        "load_1m": load(),
    }


def run_on_stack(items: list[tuple[str, bytes]], asset: bytes, repeat: int) -> dict[str, Any]:
    """The figures above for ``items`` (blob path, JSON bytes), each pointing at its own ``asset`` copy."""
    from bench import common, measure

    common.sigterm_as_keyboard_interrupt()
    token = measure.unique_token()
    count = len(items)
    collection = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": "dem",
        "description": "d",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2024-01-02T00:00:00Z", None]]},
        },
        "links": [{"rel": "item", "href": f"./{p.split('/', 2)[2]}"} for p, _ in items],
    }
    blobs = [(f"b{token}/{p}", d) for p, d in items]
    blobs.append((f"b{token}/stac/dem/collection.json", json.dumps(collection).encode()))
    assets = [(f"b{token}/cogs/dem.tif/tile_{n}.tif", asset) for n in range(count)]
    rounds: list[dict[str, Any]] = []
    with common.running_stack(measure.OUT_DIR / f"stac-validation-{token}") as stack:
        storage = BlobStorage(stack.storage_connection_string)
        storage.ensure_container("silver")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda b: storage.upload_bytes("silver", b[0], b[1], content_type="x/y"), blobs + assets))
        chunk = [{"name": name, "size": len(data)} for name, data in blobs]
        gets = [name for name, _ in blobs] + [name for name, _ in assets]
        log_file = measure.OUT_DIR / f"stac-validation-host-{measure.utc_stamp()}.log"
        with common.running_host(stack, workers=1, log_file=log_file) as host:
            for number in range(repeat):
                raw = raw_gets_per_second(storage, "silver", gets)
                rounds.append(
                    {
                        "raw_gets_per_s": round(raw),
                        "raw_load_1m": load(),
                        "chunk_sdk": chunk_rate(storage, "silver", chunk, sdk=True),
                        "chunk_http": chunk_rate(storage, "silver", chunk, sdk=False),
                        # a new chunk_size each round: a new job (the id hashes the parameters)
                        "job": run_job(
                            host.base_url,
                            stack,
                            {"container": "silver", "prefix": f"b{token}/stac/", "chunk_size": count + 1 + number},
                        ),
                    }
                )
                print(json.dumps(rounds[-1]), flush=True)
            without = {"container": "silver", "prefix": f"b{token}/stac/", "chunk_size": count + 1}
            no_checksums = run_job(host.base_url, stack, {**without, "verify_checksums": False})
    per_object_gets = len(gets) / (count + 1)

    def median(values: list[float]) -> float:
        return round(statistics.median(values))

    raw_median = median([r["raw_gets_per_s"] for r in rounds])
    return {
        "objects": count + 1,
        "gets_per_object": round(per_object_gets, 3),
        "rounds": rounds,
        "median": {
            "raw_gets_per_s": raw_median,
            "ceiling_objects_per_s": round(raw_median / per_object_gets),
            "chunk_sdk_objects_per_s": median([r["chunk_sdk"]["objects_per_s"] for r in rounds]),
            "chunk_http_objects_per_s": median([r["chunk_http"]["objects_per_s"] for r in rounds]),
            "job_objects_per_s": median([r["job"]["objects_per_s"] for r in rounds]),
        },
        "job_without_checksums": no_checksums,
    }
