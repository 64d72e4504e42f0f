"""Loading STAC collections and items into pgstac with pypgstac's ``Loader`` (COPY), on a connection
of the app's own pool (never a pool of pypgstac's).

Documents read from blob storage are made standalone first: relative asset hrefs become absolute
blob URLs (resolved against the document's own URL) and the structural links (self, root, parent,
collection, item, child) are dropped, since the STAC API builds those from the request. Modes are
pypgstac's: ``insert`` (fails on an existing id), ``ignore`` (keeps existing rows), ``upsert``
(replaces them), ``delsert`` (deletes then inserts; for collections the same as upsert).

Every load runs in one transaction of the caller, ``search_path`` set to ``pgstac`` first for that
transaction only (``SET LOCAL``), so the pooled connection comes back as it was; loads of one
collection are serialised by a transaction advisory lock (pgstac creates the partitions an item
needs on the way, which two concurrent loaders would race on).
"""

from __future__ import annotations

import itertools
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from repositories.blob_storage import BlobStorage
from repositories.database import Database
from repositories.pgstac_migrator import one_connection
from schemas.errors import PermanentTaskError
from services.stac.item_formatting import format_items, preparing_items

if TYPE_CHECKING:  # pypgstac.load is imported on first use (its imports take about 0.3 s)
    from pypgstac.load import Loader, Methods

logger = logging.getLogger(__name__)
MODES = ("insert", "upsert", "ignore", "delsert")
STRUCTURAL_RELS = frozenset({"self", "root", "parent", "collection", "item", "items", "child"})
ITEM_LINES_SUFFIXES = (".ndjson", ".jsonl", ".geojsonl")
MAX_LISTED_SKIPS = 20


def _is_relative(href: str) -> bool:
    if href.startswith(("https://", "http://", "/")):  # the common cases, without urlsplit's cost
        return False
    return not urlsplit(href).scheme


def standalone(document: Mapping[str, Any], url: str, collection_id: str | None = None) -> dict[str, Any]:
    """A copy of a STAC document fit for pgstac: asset hrefs absolute (against ``url``, the
    document's own URL), structural links dropped, ``collection`` set when given."""
    doc = dict(document)
    assets = doc.get("assets")
    if isinstance(assets, Mapping):
        doc["assets"] = {
            key: {**asset, "href": urljoin(url, asset["href"])}
            if isinstance(asset, Mapping) and isinstance(asset.get("href"), str) and _is_relative(asset["href"])
            else asset
            for key, asset in assets.items()
        }
    links = doc.get("links")
    if isinstance(links, list):
        doc["links"] = [
            link for link in links if isinstance(link, Mapping) and str(link.get("rel")) not in STRUCTURAL_RELS
        ]
    if collection_id is not None and doc.get("type") == "Feature":
        doc["collection"] = collection_id
    return doc


def parse_documents(name: str, data: bytes) -> list[dict[str, Any]]:
    """The JSON documents of one blob: one, or one per line for ``.ndjson`` / ``.jsonl``."""
    try:
        if name.lower().endswith(ITEM_LINES_SUFFIXES):
            return [orjson.loads(line) for line in data.splitlines() if line.strip()]
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PermanentTaskError(f"{name} is not valid JSON: {exc}") from exc
    return parsed if isinstance(parsed, list) else [parsed]


def walk_catalog(read: Callable[[str], dict[str, Any]], root: str) -> tuple[list[str], list[str]]:
    """(collection blobs, item blobs) reachable from the catalog or collection blob ``root`` through
    relative ``child`` and ``item`` links (absolute links leave the container and are not followed)."""
    collections: list[str] = []
    items: list[str] = []
    seen = {root}
    pending = [root]
    while pending:
        name = pending.pop()
        doc = read(name)
        if doc.get("type") == "Collection":
            collections.append(name)
        for link in doc.get("links") or []:
            href = link.get("href") if isinstance(link, Mapping) else None
            if link.get("rel") not in ("child", "item") or not isinstance(href, str) or not _is_relative(href):
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), href))
            if target.startswith("../") or target in seen:
                continue
            seen.add(target)
            if link["rel"] == "item":
                items.append(target)
            else:
                pending.append(target)
    return collections, sorted(items)


@dataclass
class ItemBatch:
    """Items to load, and what was left out with why."""

    items: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < MAX_LISTED_SKIPS:
            self.reasons.append(reason)

    def add(self, name: str, doc: dict[str, Any], url: str) -> None:
        kind = doc.get("type")
        if kind != "Feature":
            self.skip(f"{name}: type {kind!r} is not an item")
        elif not isinstance(doc.get("id"), str) or not isinstance(doc.get("collection"), str):
            self.skip(f"{name}: an item needs an 'id' and a 'collection'")
        else:
            self.items.append(standalone(doc, url))


@contextmanager
def pgstac_transaction(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """One transaction on a pooled connection with pgstac first on the search path (for this
    transaction only); commits on success. Driver errors are translated by ``Database``."""
    with db.connection() as conn, conn.transaction():
        conn.execute(
            sql.SQL("SET LOCAL search_path TO pgstac, {}, public").format(sql.Identifier(db.schema)), prepare=False
        )
        yield conn


def lock_collections(conn: psycopg.Connection[Any], collection_ids: Iterable[str]) -> None:
    for collection_id in sorted(set(collection_ids)):
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geoetl-pgstac-load:{collection_id}",))


def _loader(conn: psycopg.Connection[Any]) -> Loader:
    from pypgstac.load import Loader

    return Loader(one_connection(conn))


def _method(mode: str, *, collections: bool) -> Methods:
    from pypgstac.load import Methods

    if mode not in MODES:
        raise PermanentTaskError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if collections and mode == "delsert":
        return Methods.upsert
    return Methods(mode)


def _load(action: Callable[[], None], what: str) -> None:
    try:
        action()
    except psycopg.errors.UniqueViolation as exc:
        raise PermanentTaskError(
            f"{what}: an id already exists in pgstac and mode is insert (use upsert, ignore or delsert)"
        ) from exc
    except psycopg.Error:
        raise
    except Exception as exc:  # pypgstac raises plain exceptions for bad input (missing collection, ...)
        raise PermanentTaskError(f"{what}: {exc}") from exc


def load_collections(conn: psycopg.Connection[Any], collections: list[dict[str, Any]], mode: str) -> int:
    if not collections:
        return 0
    lock_collections(conn, (str(c.get("id")) for c in collections))
    loader = _loader(conn)
    _load(lambda: loader.load_collections(iter(collections), _method(mode, collections=True)), "collections")
    return len(collections)


def load_items(conn: psycopg.Connection[Any], items: list[dict[str, Any]], mode: str) -> int:
    if not items:
        return 0
    missing = missing_collections(conn, {str(i["collection"]) for i in items})
    if missing:
        raise PermanentTaskError(f"collection(s) not in pgstac: {', '.join(sorted(missing))}; load them first")
    loader = _loader(conn)
    method = _method(mode, collections=False)
    _load(lambda: _load_items(conn, loader, items, method), "items")
    return len(items)


def _load_items(conn: psycopg.Connection[Any], loader: Loader, items: list[dict[str, Any]], method: Methods) -> None:
    """``Loader.load_items`` in two steps: the CPU-bound formatting (dehydration against the
    collection's base item; ``format_items``, in the process's preparation slot) before the
    collection lock, so the tasks of a job in other processes do it in parallel and a task's COPY
    overlaps the next one's formatting; the partition bookkeeping and COPY under it (pypgstac 0.10's
    own steps, ``_partition_update`` included)."""
    loader.check_version()
    with preparing_items():
        formatted = format_items(loader, items)
    lock_collections(conn, (str(i["collection"]) for i in items))
    loader._partition_cache = {}
    for item in formatted:
        item["partition"] = loader._partition_update(item)
    formatted.sort(key=lambda item: str(item["partition"]))
    for name, group in itertools.groupby(formatted, key=lambda item: str(item["partition"])):
        loader.load_partition(loader._partition_cache[name], list(group), method)


def missing_collections(conn: psycopg.Connection[Any], ids: set[str]) -> set[str]:
    cur = conn.cursor(row_factory=tuple_row)
    rows = cur.execute("SELECT id FROM pgstac.collections WHERE id = ANY(%s)", (list(ids),)).fetchall()
    return ids - {row[0] for row in rows}


def replace_collection(db: Database, collection: dict[str, Any], items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Make pgstac hold exactly this collection and these items (a job's output catalog): the
    collection and items upserted, the collection's other items deleted, in one transaction."""
    collection_id = str(collection["id"])
    batch = [standalone(item, "", collection_id) for item in items]
    with pgstac_transaction(db) as conn:
        load_collections(conn, [collection], "upsert")
        loaded = load_items(conn, batch, "upsert")
        deleted = conn.execute(
            "DELETE FROM pgstac.items WHERE collection = %s AND NOT (id = ANY(%s))",
            (collection_id, [item["id"] for item in batch]),
        ).rowcount
    return {"collection": collection_id, "items": loaded, "deleted": max(deleted, 0)}


def blob_url(storage: BlobStorage, container: str, name: str) -> str:
    return str(storage.client.get_blob_client(container, name).url)


def read_documents(
    storage: BlobStorage, container: str, names: list[str], workers: int = 16
) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(name, URL, documents) of each blob, read ``workers`` at a time, in order."""

    def read(name: str) -> tuple[str, str, list[dict[str, Any]]]:
        return name, blob_url(storage, container, name), parse_documents(name, storage.download_range(container, name))

    if len(names) <= 1:
        yield from (read(name) for name in names)
        return
    with ThreadPoolExecutor(min(workers, len(names)), thread_name_prefix="pgstac-read") as pool:
        yield from pool.map(read, names)


def read_one(storage: BlobStorage, container: str, name: str) -> dict[str, Any]:
    docs = parse_documents(name, storage.download_range(container, name))
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise PermanentTaskError(f"{container}/{name} does not hold one JSON object")
    return docs[0]


def publish_catalog_to_pgstac(
    db: Database, storage: BlobStorage, container: str, collection_blob: str
) -> dict[str, Any]:
    """A job's output catalog (its collection.json and the items it links) into pgstac, replacing
    what pgstac held of that collection: the final step of ``pgstac: true`` jobs."""
    collection = standalone(
        read_one(storage, container, collection_blob), blob_url(storage, container, collection_blob)
    )
    _, item_blobs = walk_catalog(lambda name: read_one(storage, container, name), collection_blob)
    items = [
        standalone(doc, url, str(collection["id"]))
        for _, url, docs in read_documents(storage, container, item_blobs)
        for doc in docs
    ]
    return replace_collection(db, collection, items)
