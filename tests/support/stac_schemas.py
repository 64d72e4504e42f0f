"""Offline validation of STAC JSON: core schemas, extension fields, and the official extension schemas.

Three layers, none of which fetches anything:

1. The STAC 1.1.0 core and GeoJSON schemas bundled with pystac (``get_local_schema_cache``).
2. The project's own checks of the projection v2.0.0, raster v1.1.0 and file v2.1.0 fields it writes
   (``EXTENSION_FIELDS``): every prefixed field is one the extension defines, with the right type;
   a declared extension is used at least once; an undeclared prefix is an error.
3. The official extension schemas too, from the copies the project ships in ``services/stac/schemas``
   (its README maps URLs to files), so every clone runs all three layers.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from jsonschema_specifications import REGISTRY as METASCHEMAS
from pystac.validation.local_validator import get_local_schema_cache
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

# The official schemas the project ships (services/stac/schemas, the same layout as ../shared/stac-schemas).
OFFICIAL_SCHEMA_ROOT = Path(__file__).resolve().parents[2] / "services" / "stac" / "schemas"

CORE_SCHEMAS = {
    "Feature": "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    "Collection": "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json",
    "Catalog": "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json",
}
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
OFFICIAL_URL_PREFIXES = {
    "https://stac-extensions.github.io/projection/v2.0.0/": "extensions/projection/v2.0.0/",
    "https://stac-extensions.github.io/raster/v1.1.0/": "extensions/raster/v1.1.0/",
    "https://stac-extensions.github.io/file/v2.1.0/": "extensions/file/v2.1.0/",
    "https://schemas.stacspec.org/v1.1.0/": "v1.1.0/",
    "https://geojson.org/schema/": "geojson/",
}

_NUMBER = {"type": "number"}
_NUMBERS = {"type": "array", "items": _NUMBER}
_DATA_TYPES = [
    *("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    *("float16", "float32", "float64", "cint16", "cint32", "cfloat32", "cfloat64", "other"),
]
_RASTER_BAND = {
    "type": "object",
    "properties": {
        "nodata": {"oneOf": [_NUMBER, {"enum": ["nan", "inf", "-inf"]}]},
        "sampling": {"enum": ["area", "point"]},
        "data_type": {"enum": _DATA_TYPES},
        "bits_per_sample": {"type": "integer", "minimum": 1},
        "spatial_resolution": _NUMBER,
        "statistics": {
            "type": "object",
            "properties": {k: _NUMBER for k in ("minimum", "maximum", "mean", "stddev", "valid_percent")},
            "additionalProperties": False,
        },
        "unit": {"type": "string"},
        "scale": _NUMBER,
        "offset": _NUMBER,
        "histogram": {"type": "object"},
    },
}
# The fields each extension defines (prefix, field -> JSON schema of its value).
EXTENSION_FIELDS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    PROJECTION: (
        "proj:",
        {
            "proj:code": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$"},
            "proj:wkt2": {"type": ["string", "null"], "minLength": 1},
            "proj:projjson": {"type": ["object", "null"]},
            "proj:geometry": {"type": "object", "required": ["type", "coordinates"]},
            "proj:bbox": {**_NUMBERS, "oneOf": [{"minItems": 4, "maxItems": 4}, {"minItems": 6, "maxItems": 6}]},
            "proj:centroid": {
                "type": "object",
                "required": ["lat", "lon"],
                "properties": {
                    "lat": {"type": "number", "minimum": -90, "maximum": 90},
                    "lon": {"type": "number", "minimum": -180, "maximum": 180},
                },
            },
            "proj:shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
            "proj:transform": {**_NUMBERS, "oneOf": [{"minItems": 6, "maxItems": 6}, {"minItems": 9, "maxItems": 9}]},
        },
    ),
    RASTER: ("raster:", {"raster:bands": {"type": "array", "items": _RASTER_BAND, "minItems": 1}}),
    FILE: (
        "file:",
        {
            "file:size": {"type": "integer", "minimum": 0},
            "file:header_size": {"type": "integer", "minimum": 0},
            "file:checksum": {"type": "string", "pattern": r"^(?:[0-9a-f]{2})+$"},
            "file:byte_order": {"enum": ["big-endian", "little-endian"]},
            "file:values": {"type": "array", "minItems": 1},
            "file:local_path": {"type": "string", "minLength": 1},
        },
    ),
}


@cache
def _core_registry() -> Registry[Any]:
    resources = [(url, Resource.from_contents(schema)) for url, schema in get_local_schema_cache().items()]
    return Registry().with_resources(resources).combine(METASCHEMAS)


def official_file(uri: str) -> Path:
    address = uri.split("#", 1)[0]
    for prefix, folder in OFFICIAL_URL_PREFIXES.items():
        if address.startswith(prefix):
            return OFFICIAL_SCHEMA_ROOT / folder / address[len(prefix) :]
    raise NoSuchResource(uri)


def _retrieve_official(uri: str) -> Resource[Any]:
    path = official_file(uri)
    if not path.is_file():
        raise NoSuchResource(uri)
    return Resource.from_contents(json.loads(path.read_text(encoding="utf-8")))


@cache
def _official_registry() -> Registry[Any]:
    return Registry(retrieve=_retrieve_official).combine(METASCHEMAS)  # type: ignore[call-arg]


def official_schemas_present() -> bool:
    return OFFICIAL_SCHEMA_ROOT.is_dir()


def _schema_errors(document: dict[str, Any], url: str, registry: Registry[Any]) -> list[str]:
    schema = registry.get_or_retrieve(url).value.contents
    validator = Draft7Validator(schema, registry=registry)
    return [
        f"{url} at {'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.validator} failed: {e.message[:200]}"
        for e in validator.iter_errors(document)
    ]


def _field_holders(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The objects extension fields may stand in: (where, object)."""
    holders: list[tuple[str, dict[str, Any]]] = [("(document)", document)]
    if isinstance(document.get("properties"), dict):
        holders.append(("properties", document["properties"]))
    for group in ("assets", "item_assets"):
        for key, asset in (document.get(group) or {}).items():
            if isinstance(asset, dict):
                holders.append((f"{group}/{key}", asset))
    return holders


def extension_field_errors(document: dict[str, Any]) -> list[str]:
    """The project's own checks of the projection / raster / file fields (layer 2)."""
    declared = list(document.get("stac_extensions", []))
    problems = [f"unknown extension {url} (not checked)" for url in declared if url not in EXTENSION_FIELDS]
    holders = _field_holders(document)
    for url, (prefix, fields) in EXTENSION_FIELDS.items():
        used = [(where, key, obj[key]) for where, obj in holders for key in obj if key.startswith(prefix)]
        if url not in declared:
            problems += [f"{where}/{key}: {prefix} field without {url} in stac_extensions" for where, key, _ in used]
            continue
        if not used:
            problems.append(f"{url} is declared but none of its fields is used")
        for where, key, value in used:
            if key not in fields:
                problems.append(f"{where}/{key}: not a field of {url}")
                continue
            for error in Draft7Validator(fields[key]).iter_errors(value):
                problems.append(f"{where}/{key}: {error.message[:200]}")
    return problems


def stac_errors(document: dict[str, Any]) -> list[str]:
    """Every problem found in a STAC Item, Collection or Catalog; [] when it is valid."""
    problems = _schema_errors(document, CORE_SCHEMAS[document["type"]], _core_registry())
    problems += extension_field_errors(document)
    if official_schemas_present():
        for url in document.get("stac_extensions", []):
            if url in EXTENSION_FIELDS:  # an unknown one is reported by layer 2, never fetched
                problems += _schema_errors(document, url, _official_registry())
    return problems
