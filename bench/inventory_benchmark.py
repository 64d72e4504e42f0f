"""Inventory benchmark: inventory_container over many small blobs, blobs/s.

Run: ``.venv/bin/python -m bench.inventory_benchmark [--blobs 10000] [--chunk-size 1000] [--workers 2]``

1. private Azurite + throwaway Postgres database (migrated), bench/common.py;
2. uploads ``--blobs`` small blobs to bronze (a tenth tiny GeoTIFFs, the rest text), in threads;
3. the local Functions host (``--workers`` processes) runs inventory_container on them;
4. prints blobs/s (submit → completed) and writes JSON to bench/out/inventory-<timestamp>.json;
   everything is stopped and the database dropped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from bench import common, measure
from repositories.blob_storage import BlobStorage


def tiny_geotiff(path: Path) -> bytes:
    data = (np.arange(32 * 32, dtype="uint8").reshape(1, 32, 32) % 251).astype("uint8")
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", crs="EPSG:32633", transform=from_origin(500_000, 6_000_000, 10, 10), **profile) as ds:
        ds.write(data)
    return path.read_bytes()


def upload_blobs(storage: BlobStorage, prefix: str, count: int) -> int:
    with tempfile.TemporaryDirectory() as work:
        raster = tiny_geotiff(Path(work) / "tiny.tif")
    storage.ensure_container("bronze")

    def upload(index: int) -> int:
        if index % 10 == 0:
            name, data, kind = f"{prefix}/r/{index:06d}.tif", raster, "image/tiff"
        else:
            name, data, kind = f"{prefix}/t/{index:06d}.txt", f"blob {index}\n".encode(), "text/plain"
        return storage.upload_bytes("bronze", name, data, content_type=kind).size

    with ThreadPoolExecutor(32) as pool:
        return sum(pool.map(upload, range(count)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--blobs", type=int, default=10_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--job-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    common.sigterm_as_keyboard_interrupt()
    token = measure.unique_token()
    work_dir = measure.OUT_DIR / f"inventory-{token}"
    with common.running_stack(work_dir, azurite_in_memory=False) as stack:
        storage = BlobStorage(stack.storage_connection_string)
        started = time.monotonic()
        total_bytes = upload_blobs(storage, f"bench-{token}", args.blobs)
        measure.log(f"uploaded {args.blobs} blobs ({total_bytes} bytes) in {time.monotonic() - started:.1f}s")
        log_file = measure.OUT_DIR / f"inventory-host-{measure.utc_stamp()}.log"
        with common.running_host(stack, workers=args.workers, log_file=log_file) as host:
            params = {"prefix": f"bench-{token}/", "chunk_size": args.chunk_size}
            t0 = time.monotonic()
            submitted = measure.submit_job(host.base_url, "inventory_container", params)
            final = measure.wait_for_job(host.base_url, submitted["job_id"], timeout=args.job_timeout)
            elapsed = time.monotonic() - t0
    summary: dict[str, Any] = (final.get("result") or {}).get("summary") or {}
    if final.get("status") != "completed" or summary.get("blobs") != args.blobs:
        raise SystemExit(f"inventory did not complete as expected: {final.get('status')} {final.get('error')}")
    report = {
        "blobs": args.blobs,
        "chunk_size": args.chunk_size,
        "workers": args.workers,
        "seconds": round(elapsed, 2),
        "blobs_per_s": round(args.blobs / elapsed, 1),
        "by_kind": summary.get("by_kind"),
    }
    path = measure.write_report("inventory", report)
    print(f"inventory_container: {args.blobs} blobs in {elapsed:.1f}s = {report['blobs_per_s']} blobs/s ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
