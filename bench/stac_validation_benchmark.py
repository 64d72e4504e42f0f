"""STAC validation micro benchmark: objects/s of validate_stac's checks vs pystac's validation.

Run: ``.venv/bin/python -m bench.stac_validation_benchmark [--items 2000] [--pystac-items 300] [--stack N]``

In process, no stack: ``--items`` Items like process_raster's (projection, raster and file extensions,
a densified footprint, a data asset with file:size and file:checksum) built with
services/stac/builder.py from a small GeoTIFF, serialised to JSON bytes. Measured, single thread:

1. ``geoetl``: what a validate_stac task does per object once it has the bytes
   (controllers/validate_stac_run.check_object: parse, core + extension schemas, lint, links and assets
   against an in-memory container index);
2. ``geoetl schemas only``: parse + schema_problems;
3. ``jsonschema cached``: parse + the same schemas with jsonschema's Draft7Validator, built once per
   schema (the pure-Python alternative to jsonschema_rs);
4. ``pystac``: parse + ``pystac.validation.validate_dict`` (its schema cache filled from the bundled
   schemas first, so nothing is fetched).

With ``--stack N [--repeat R]`` it also runs validate_stac on a private Azurite + database
(bench/common.py) over N such Items, each with its own small asset blob (correct file:size and
file:checksum), R rounds alternating: the raw GET ceiling of that Azurite, validate_chunk with the SDK
reader and with the HTTP reader, and the job through the local host (one validate task); see
bench/stac_validation_stack.py.

Prints a table and writes JSON to bench/out/stac-validation-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from controllers.validate_stac_run import ContainerIndex, check_object
from services.raster.inspect import inspect_dataset
from services.stac.builder import AssetFile, build_item
from services.stac.validation import CORE_SCHEMAS, SCHEMAS, schema_problems, schema_url

OUT = Path(__file__).resolve().parent / "out"


def sample_items(count: int, asset: bytes | None = None) -> list[tuple[str, bytes]]:
    """(blob path, JSON bytes) of ``count`` Items shaped like process_raster's (with ``asset``: its
    true size and checksum)."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "dem.tif"
        profile = {"driver": "GTiff", "width": 512, "height": 512, "count": 1, "dtype": "float32", "nodata": -9999}
        transform = from_origin(500_000, 6_000_000, 10, 10)
        with rasterio.open(path, "w", crs="EPSG:32633", transform=transform, **profile) as dataset:
            dataset.write(np.ones((1, 512, 512), dtype="float32"))
        with rasterio.open(path) as dataset:
            metadata = inspect_dataset(dataset)
    items = []
    for number in range(count):
        item_id = f"dem-tile_r{number // 100}_c{number % 100}"
        href = f"../../../cogs/dem.tif/tile_{number}.tif"
        file = (
            AssetFile(href=href, size=len(asset), sha256=hashlib.sha256(asset).hexdigest())
            if asset is not None
            else AssetFile(href=href, size=1_000_000, sha256=f"{number:064x}")
        )
        item = build_item(item_id, metadata, file, item_datetime=datetime(2024, 1, 2, tzinfo=UTC))
        document = item.to_dict(include_self_link=False)
        document["links"] = [
            {"rel": "root", "href": "../collection.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ]
        document["collection"] = "dem"
        items.append((f"stac/dem/{item_id}/{item_id}.json", json.dumps(document).encode()))
    return items


def rate(label: str, items: list[tuple[str, bytes]], check: Callable[[str, bytes], Any]) -> dict[str, Any]:
    check(*items[0])  # warm: compiled validators, caches
    started = time.perf_counter()
    for path, data in items:
        check(path, data)
    seconds = time.perf_counter() - started
    return {
        "validator": label,
        "objects": len(items),
        "seconds": round(seconds, 3),
        "objects_per_s": len(items) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--pystac-items", type=int, default=300, help="pystac is slow: fewer items")
    parser.add_argument("--stack", type=int, default=0, help="also run the job on N items on a private stack")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the stack figures, alternating")
    args = parser.parse_args()
    items = sample_items(args.items)
    known = {path: len(data) for path, data in items}
    known["stac/dem/collection.json"] = 1000
    known.update({f"cogs/dem.tif/tile_{n}.tif": 1_000_000 for n in range(args.items)})
    index = ContainerIndex(None, "silver", known, listed=("",))

    def geoetl(path: str, data: bytes) -> None:
        record, _to_verify = check_object(path, data, index, None)
        assert not record["problems"], record["problems"]

    def schemas_only(path: str, data: bytes) -> None:
        assert not schema_problems(json.loads(data))

    import jsonschema
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        (url, Resource.from_contents(schema)) for url, schema in SCHEMAS.items()
    )
    cached = {url: jsonschema.Draft7Validator(SCHEMAS[url], registry=registry) for url in SCHEMAS}

    def python_jsonschema(path: str, data: bytes) -> None:
        document = json.loads(data)
        for url in [CORE_SCHEMAS[document["type"]], *document["stac_extensions"]]:
            assert not list(cached[schema_url(url)].iter_errors(document))

    import pystac.validation
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    validator.schema_cache.update(SCHEMAS)
    validator.schema_cache.update({f"{url}#": schema for url, schema in SCHEMAS.items()})
    pystac.validation.set_validator(validator)

    def with_pystac(path: str, data: bytes) -> None:
        pystac.validation.validate_dict(json.loads(data))

    rows = [
        rate("geoetl (check_object)", items, geoetl),
        rate("geoetl schemas only", items, schemas_only),
        rate("jsonschema, validators cached", items, python_jsonschema),
        rate("pystac validate_dict", items[: args.pystac_items], with_pystac),
    ]
    print(f"{'validator':32} {'objects':>8} {'seconds':>8} {'objects/s':>10}")
    for row in rows:
        print(f"{row['validator']:32} {row['objects']:>8} {row['seconds']:>8} {row['objects_per_s']:>10.0f}")
    job = None
    if args.stack:
        from bench.stac_validation_stack import run_on_stack

        asset = b"tile bytes " * 10
        job = run_on_stack(sample_items(args.stack, asset), asset, args.repeat)
        median = job["median"]
        print(
            f"one task of {job['objects']} objects ({job['gets_per_object']} GETs each), medians of {args.repeat}: "
            f"raw GETs {median['raw_gets_per_s']}/s = ceiling {median['ceiling_objects_per_s']} objects/s; "
            f"chunk SDK reader {median['chunk_sdk_objects_per_s']}, HTTP reader {median['chunk_http_objects_per_s']}; "
            f"job {median['job_objects_per_s']} objects/s; job without checksums "
            f"{job['job_without_checksums']['objects_per_s']} objects/s; load {os.getloadavg()[0]:.2f}"
        )
    OUT.mkdir(exist_ok=True)
    out = OUT / f"stac-validation-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps({"rows": rows, "item_bytes": len(items[0][1]), "job": job, "load_1m": os.getloadavg()[0]}, indent=2)
    )
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
