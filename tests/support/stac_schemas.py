"""Offline validation of STAC JSON against the official schemas in ../shared/stac-schemas.

Every ``$schema``, ``stac_extensions`` URL and ``$ref`` is resolved to a local file (see
../shared/stac-schemas/README.md for the mapping) through a ``referencing.Registry``; nothing is
fetched from the network. A clone without ../shared skips these checks (``requires_stac_schemas``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

SCHEMA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "stac-schemas"

URL_PREFIXES = {
    "https://schemas.stacspec.org/v1.1.0/": "v1.1.0/",
    "https://schemas.stacspec.org/v1.1.0-beta.1/": "v1.1.0/",
    "https://stac-extensions.github.io/projection/v2.0.0/": "extensions/projection/v2.0.0/",
    "https://stac-extensions.github.io/raster/v1.1.0/": "extensions/raster/v1.1.0/",
    "https://stac-extensions.github.io/file/v2.1.0/": "extensions/file/v2.1.0/",
    "https://geojson.org/schema/": "geojson/",
}
CORE_SCHEMAS = {
    "Feature": "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    "Collection": "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json",
    "Catalog": "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json",
}

requires_stac_schemas = pytest.mark.skipif(
    not SCHEMA_ROOT.is_dir(),
    reason=f"STAC schemas not found at {SCHEMA_ROOT} (../shared/stac-schemas beside the checkout); "
    "STAC schema validation skipped",
)


def local_file(uri: str) -> Path:
    address = uri.split("#", 1)[0]
    for prefix, folder in URL_PREFIXES.items():
        if address.startswith(prefix):
            return SCHEMA_ROOT / folder / address[len(prefix) :]
    raise NoSuchResource(uri)


def _retrieve(uri: str) -> Resource[Any]:
    path = local_file(uri)
    if not path.is_file():
        raise NoSuchResource(uri)
    return Resource.from_contents(json.loads(path.read_text(encoding="utf-8")))


@cache
def registry() -> Registry[Any]:
    return Registry(retrieve=_retrieve).combine(METASCHEMAS)  # type: ignore[call-arg]


def stac_errors(document: dict[str, Any]) -> list[str]:
    """Schema violations of a STAC Item, Collection or Catalog (core schema + its extensions)."""
    schema_urls = [CORE_SCHEMAS[document["type"]], *document.get("stac_extensions", [])]
    problems = []
    for url in schema_urls:
        schema = registry().get_or_retrieve(url).value.contents
        validator = Draft7Validator(schema, registry=registry())
        for error in validator.iter_errors(document):
            where = "/".join(map(str, error.absolute_path)) or "(document)"
            problems.append(f"{url} at {where}: {error.validator} failed: {error.message[:200]}")
    return problems
