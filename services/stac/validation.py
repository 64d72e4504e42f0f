"""Offline validation of STAC objects: the core schema, every declared extension, links and assets.

Schemas come only from ``services/stac/schemas/`` (the published files, pinned; README there maps
URLs to files), loaded once at import into a ``jsonschema_rs.Registry`` whose retriever refuses
every URI: nothing is ever fetched. Each schema is compiled once (``validator``) and reused for
every object, which is what makes thousands of objects a second possible. An extension URL without
a bundled schema is reported as ``unknown_extension``.

Links and assets are resolved within the object's container: ``exists(name)`` and ``size(name)``
answer from a listing (the caller's), so nothing here does I/O. ``file:checksum`` verification
needs the blob's bytes and is done by the caller with ``parse_multihash`` / ``new_hasher``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema_rs

SCHEMA_ROOT = Path(__file__).resolve().parent / "schemas"
# URL prefix -> folder under SCHEMA_ROOT (schemas/README.md has the sources and licenses).
URL_PREFIXES = {
    "https://schemas.stacspec.org/v1.1.0/": "v1.1.0",
    "https://stac-extensions.github.io/projection/v2.0.0/": "extensions/projection/v2.0.0",
    "https://stac-extensions.github.io/raster/v1.1.0/": "extensions/raster/v1.1.0",
    "https://stac-extensions.github.io/file/v2.1.0/": "extensions/file/v2.1.0",
    "https://geojson.org/schema/": "geojson",
    "https://proj.org/schemas/v0.7/": "proj/v0.7",
}
STAC_VERSION = "1.1.0"
CORE_SCHEMAS = {
    "Feature": "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    "Collection": "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/collection.json",
    "Catalog": "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json",
}
MAX_SCHEMA_ERRORS = 10  # per object and schema; the rest are counted in the last message
MAX_MESSAGE = 300

# Problem types (the job groups its findings by these; lint.py adds its own).
NOT_JSON = "not_json"
NOT_STAC = "not_stac"
UNSUPPORTED_VERSION = "unsupported_stac_version"
SCHEMA = "schema"
EXTENSION_SCHEMA = "extension_schema"
UNKNOWN_EXTENSION = "unknown_extension"
BROKEN_LINK = "broken_link"
SELF_LINK = "self_link"
MISSING_ASSET = "missing_asset"
SIZE_MISMATCH = "size_mismatch"
CHECKSUM_MISMATCH = "checksum_mismatch"
CHECKSUM_UNSUPPORTED = "checksum_unsupported"


@dataclass(frozen=True)
class Problem:
    type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class OfflineSchemaError(LookupError):
    """A schema referenced a URI that is not bundled (never fetched)."""


def _refuse(uri: str) -> Any:
    raise OfflineSchemaError(f"{uri} is not a bundled schema (schemas are never fetched)")


def _bundled() -> dict[str, Any]:
    """Every bundled schema by its URL."""
    schemas: dict[str, Any] = {}
    for prefix, folder in URL_PREFIXES.items():
        base = SCHEMA_ROOT / folder
        for path in sorted(base.rglob("*.json")):
            schemas[prefix + path.relative_to(base).as_posix()] = json.loads(path.read_text(encoding="utf-8"))
    return schemas


SCHEMAS = _bundled()
REGISTRY = jsonschema_rs.Registry(list(SCHEMAS.items()), retriever=_refuse)


def schema_url(url: str) -> str:
    """``url`` without its fragment (``…/schema.json#`` is the same document)."""
    return url.split("#", 1)[0]


def is_supported(url: str) -> bool:
    return schema_url(url) in SCHEMAS


@cache
def validator(url: str) -> Any:
    """The compiled validator of a bundled schema (built once per process); KeyError if not bundled."""
    return jsonschema_rs.validator_for(SCHEMAS[schema_url(url)], registry=REGISTRY, retriever=_refuse)


def _leaves(error: Any) -> list[Any]:
    """The errors that say what is wrong: for a failed oneOf/anyOf, those of the branch that got
    furthest into the document (the Item branch of an extension schema, not "Collection expected")."""
    branches = getattr(error.kind, "context", None) or []
    if not branches:
        return [error]
    best = max(branches, key=lambda branch: max((len(e.instance_path) for e in branch), default=-1))
    return [leaf for branch_error in best for leaf in _leaves(branch_error)] or [error]


def _message(error: Any) -> str:
    where = "/".join(str(part) for part in error.instance_path) or "(document)"
    text = str(error.message)
    if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Not):  # "{} is not allowed for <value>"
        text = "not allowed without a geometry" if where == "bbox" else "not allowed here"
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return f"{where}: {text}"


def _errors(url: str, document: dict[str, Any], kind: str) -> list[Problem]:
    compiled = validator(url)
    if compiled.is_valid(document):
        return []
    label = "" if kind == SCHEMA else f"{schema_url(url)} "
    messages: list[str] = []
    for error in compiled.iter_errors(document):
        messages += [m for m in map(_message, _leaves(error)) if m not in messages]
        if len(messages) > MAX_SCHEMA_ERRORS:
            break
    problems = [Problem(kind, label + message) for message in messages[:MAX_SCHEMA_ERRORS]]
    if len(messages) > MAX_SCHEMA_ERRORS:
        problems.append(Problem(kind, f"{label}more errors not listed"))
    return problems


def parse_document(data: bytes) -> tuple[dict[str, Any] | None, Problem | None]:
    """The JSON object in ``data``, or the problem why there is none."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, Problem(NOT_JSON, f"not JSON: {str(exc)[:MAX_MESSAGE]}")
    if not isinstance(document, dict):
        return None, Problem(NOT_JSON, f"a JSON {type(document).__name__}, not an object")
    return document, None


def stac_type(document: dict[str, Any]) -> str | None:
    """Feature / Collection / Catalog, or None when ``document`` is not a STAC object."""
    kind = document.get("type")
    if kind in CORE_SCHEMAS and "stac_version" in document:
        return str(kind)
    return None


def schema_problems(document: dict[str, Any]) -> list[Problem]:
    """The core schema of the object's type and the schema of every extension it declares."""
    kind = stac_type(document)
    if kind is None:
        return [Problem(NOT_STAC, f"not a STAC object (type {str(document.get('type'))[:40]!r}, no stac_version)")]
    version = document.get("stac_version")
    if version != STAC_VERSION:
        return [Problem(UNSUPPORTED_VERSION, f"stac_version {str(version)[:40]!r}: only {STAC_VERSION} is validated")]
    problems = _errors(CORE_SCHEMAS[kind], document, SCHEMA)
    extensions = document.get("stac_extensions", [])
    for url in extensions if isinstance(extensions, list) else []:
        if not isinstance(url, str):
            continue  # the core schema reports it
        if is_supported(url):
            problems += _errors(url, document, EXTENSION_SCHEMA)
        else:
            problems.append(Problem(UNKNOWN_EXTENSION, f"{url[:MAX_MESSAGE]}: no bundled schema (not fetched)"))
    return problems


# --- links and assets -------------------------------------------------------------------------


def resolve_href(object_path: str, href: str, container_url: str | None = None) -> tuple[str | None, str | None]:
    """The blob an href names within the container: (blob name, None); (None, None) for a URL
    outside the container (not checked); (None, reason) for a relative href that cannot be one."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        base = container_url.rstrip("/") + "/" if container_url else None
        if base and href.startswith(base):
            return unquote(urlsplit(href[len(base) :]).path), None
        return None, None
    path = unquote(parts.path)
    if not path:
        return None, "empty href"
    if path.startswith("/"):
        return None, f"{href[:200]} is a root-absolute path, not relative to the object"
    name = posixpath.normpath(posixpath.join(posixpath.dirname(object_path), path))
    if name == ".." or name.startswith("../"):
        return None, f"{href[:200]} leaves the container"
    return name, None


@dataclass(frozen=True)
class AssetFile:
    """An asset that resolved to a blob of the container, with what the object claims about it."""

    object_path: str
    key: str
    blob: str
    size: int | None
    checksum: str | None


def _links(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    links = document.get("links")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and isinstance(link.get("href"), str):
            yield link


def _assets(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    assets = document.get("assets")
    for key, asset in assets.items() if isinstance(assets, dict) else []:
        if isinstance(asset, dict) and isinstance(asset.get("href"), str):
            yield str(key), asset


def linked_objects(path: str, document: dict[str, Any], rels: tuple[str, ...] = ("child", "item")) -> list[str]:
    """Blobs of the container that ``rels`` links name (for walking a catalog)."""
    names = []
    for link in _links(document):
        if link.get("rel") in rels:
            name, _reason = resolve_href(path, link["href"])
            if name:
                names.append(name)
    return names


def link_problems(
    path: str, document: dict[str, Any], exists: Callable[[str], bool], container_url: str | None = None
) -> list[Problem]:
    """Relative links that name no blob, and a self link that does not name this object."""
    problems = []
    for link in _links(document):
        rel, href = str(link.get("rel")), link["href"]
        name, reason = resolve_href(path, href, container_url)
        if rel == "self":
            if not (urlsplit(href).scheme or urlsplit(href).netloc):
                problems.append(Problem(SELF_LINK, f"self link {href[:200]!r} is not an absolute URL"))
            elif name is not None and name != path:
                problems.append(Problem(SELF_LINK, f"self link names {name[:200]}, not this object"))
            continue
        if reason:
            problems.append(Problem(BROKEN_LINK, f"{rel} link: {reason}"))
        elif name is not None and not exists(name):
            problems.append(Problem(BROKEN_LINK, f"{rel} link {href[:200]!r}: no blob {name[:200]}"))
    return problems


def asset_problems(
    path: str,
    document: dict[str, Any],
    size: Callable[[str], int | None],
    container_url: str | None = None,
) -> tuple[list[Problem], list[AssetFile]]:
    """Missing assets and ``file:size`` mismatches; the assets whose ``file:checksum`` remains to verify."""
    problems: list[Problem] = []
    to_verify: list[AssetFile] = []
    for key, asset in _assets(document):
        name, reason = resolve_href(path, asset["href"], container_url)
        if reason:
            problems.append(Problem(MISSING_ASSET, f"asset {key!r}: {reason}"))
            continue
        if name is None:
            continue  # outside the container: not checked
        actual = size(name)
        if actual is None:
            problems.append(Problem(MISSING_ASSET, f"asset {key!r}: no blob {name[:200]}"))
            continue
        claimed = asset.get("file:size")
        if isinstance(claimed, int) and claimed != actual:
            problems.append(Problem(SIZE_MISMATCH, f"asset {key!r}: file:size {claimed}, blob has {actual} bytes"))
        checksum = asset.get("file:checksum")
        if isinstance(checksum, str):
            to_verify.append(AssetFile(path, key, name, actual, checksum))
    return problems, to_verify


# --- checksums (multihash) ----------------------------------------------------------------------

# multihash code -> (hashlib name, digest bytes)
MULTIHASH = {
    0x11: ("sha1", 20),
    0x12: ("sha256", 32),
    0x13: ("sha512", 64),
    0x14: ("sha3_512", 64),
    0x16: ("sha3_256", 32),
}


def parse_multihash(checksum: str) -> tuple[str, str]:
    """(hashlib algorithm, expected hex digest) of a hex multihash; ValueError when unsupported."""
    try:
        raw = bytes.fromhex(checksum)
    except ValueError:
        raise ValueError(f"file:checksum {checksum[:80]!r} is not hex") from None
    if len(raw) < 2 or raw[0] not in MULTIHASH:
        code = f"0x{raw[0]:02x}" if raw else "none"
        raise ValueError(f"multihash function {code} is not supported (sha1, sha2-256/512, sha3-256/512 are)")
    algorithm, length = MULTIHASH[raw[0]]
    if raw[1] != length or len(raw) != 2 + length:
        raise ValueError(f"file:checksum {checksum[:80]!r}: digest length does not match {algorithm}")
    return algorithm, raw[2:].hex()


def new_hasher(algorithm: str) -> Any:
    return hashlib.new(algorithm)
