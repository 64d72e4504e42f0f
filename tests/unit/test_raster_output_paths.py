"""process_raster output paths and default collection ids are injective in (source path, output
options, collection) (issue 12, item 2)."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from controllers.process_raster import ProcessRasterController
from controllers.process_raster_parameters import ProcessRasterParameters, collection_id_for
from services.raster.pipeline import MAX_OUTPUT_PREFIX_CHARS, escape_blob_path, output_prefix, tile_blob
from services.stac.builder import collection_id_problem

NAMES = [
    "dem.tif", "dem.tiff", "dem", "x/dem.tif", "x/dem.tiff", "x-dem.tif", "x/dem.tif/tile_r0_c0.tif",
    "a b.tif", "a~20b.tif", "a%20b.tif", "a@b.tif", "a~40b.tif", "Süd.tif", "S~c3~bcd.tif", "DEM.TIF",
    "a./b.tif", "a~2e/b.tif", "d/" + "x" * 1000 + ".tif", "d/" + "x" * 1001 + ".tif", "d/" + "é" * 300 + ".tif",
]  # fmt: skip


def test_escaping_is_injective_and_url_safe() -> None:
    escaped = [escape_blob_path(name) for name in NAMES]
    assert len(set(escaped)) == len(NAMES)
    assert all(re.fullmatch(r"[A-Za-z0-9._~/-]+", e) for e in escaped)
    assert escape_blob_path("x/dem.tif") == "x/dem.tif", "plain names stay readable, extension kept"
    assert escape_blob_path("a b/Süd.tif") == "a~20b/S~c3~bcd.tif"
    assert escape_blob_path("a./b.tif") == "a~2e/b.tif", "no segment ends in '.'"


def test_output_prefixes_are_injective_in_source_and_output_key() -> None:
    keys = [None, "0123456789ab", "ba9876543210"]
    prefixes = [output_prefix(name, key) for name, key in itertools.product(NAMES, keys)]
    assert len(set(prefixes)) == len(prefixes)
    assert all(len(p) <= MAX_OUTPUT_PREFIX_CHARS for p in prefixes)
    # No prefix's tiles are the direct children of another prefix (cleanup stays in its own folder).
    tiles = [tile_blob(name, "tile_r0_c0", key) for name, key in itertools.product(NAMES, keys)]
    assert len(set(tiles)) == len(tiles)
    assert output_prefix("x/dem.tif") == "cogs/x/dem.tif"
    assert output_prefix("x/dem.tif", "0123456789ab") == "cogs/x/dem.tif@0123456789ab"


def params(**values: Any) -> ProcessRasterParameters:
    return ProcessRasterParameters.model_validate({"blob_name": "x/dem.tif", **values})


def test_only_output_affecting_options_change_the_output_key() -> None:
    default = params()
    assert default.output_key is None and default.collection_id == collection_id_for("x/dem.tif")
    same = [params(compression="deflate"), params(datetime="2024-01-01T00:00:00Z"), params(source_etag="0x8D1")]
    assert {p.output_key for p in same} == {None}, "defaults, the STAC datetime and the source version"
    assert params(output_container="other").output_key is None, "another container is another namespace"
    options = [
        params(compression="lzw"),
        params(tile_size=512),
        params(overview_resampling="nearest"),
        params(assume_crs="EPSG:32633"),
        params(container="other"),
        params(collection_id="mine"),
    ]
    keys = [p.output_key for p in options]
    assert None not in keys and len(set(keys)) == len(keys)
    collections = [p.resolved_collection_id for p in options[:-1]]
    assert len(set(collections) | {default.collection_id}) == len(collections) + 1
    assert all(collection_id_problem(c) is None for c in collections)
    assert params(compression="lzw").collection_id == params(compression="lzw").default_collection_id
    assert params(collection_id="mine").output_key != params(collection_id="yours").output_key


def test_the_owner_is_the_source_and_its_options() -> None:
    assert ProcessRasterController.owner(params()).key == "process_raster:bronze/x/dem.tif:default"
    lzw = ProcessRasterController.owner(params(compression="lzw"))
    assert lzw.key != ProcessRasterController.owner(params()).key
    assert lzw.description == 'process_raster of bronze/x/dem.tif with {"compression": "lzw"}'
    assert ProcessRasterController.owner(params(collection_id="a")).key == ProcessRasterController.owner(params()).key


@pytest.mark.parametrize("name", ["dem.tif", "x/dem.tif"])
def test_default_collection_ids_with_options_are_hashed_and_distinct(name: str) -> None:
    plain = collection_id_for(name)
    hashed = collection_id_for(name, "0123456789ab")
    assert hashed != plain and re.fullmatch(r".+-[0-9a-f]{12}", hashed)
    assert hashed != collection_id_for(name, "ba9876543210")
