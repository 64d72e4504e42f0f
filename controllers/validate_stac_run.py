"""The storage side of validate_stac: a container index for links and assets, checking one object,
walking a catalog. A chunk's pipeline (downloads, checks, checksums) is validate_stac_chunk.py.

The checks themselves are pure functions in services/stac/validation.py and services/stac/lint.py.
"""

from __future__ import annotations

import posixpath
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError
from services.stac.lint import lint_problems
from services.stac.validation import (
    AssetFile,
    asset_problems,
    link_problems,
    linked_objects,
    parse_document,
    schema_problems,
    stac_type,
)

HEADS_PER_DIRECTORY = 16  # names HEADed in one directory before it is listed instead


class ContainerIndex:
    """Which blobs exist and their sizes, from listings gathered once per directory.

    A name is looked up in the listing of its directory's subtree (``dir/``), listed on first use
    and kept; a directory inside one already listed is not listed again. Cheaper than one HEAD per
    link or asset: the objects of a chunk mostly point into the same few directories.

    With ``head``, a name in a directory holding the known objects or above them (a parent,
    collection or root link, an asset beside its item) is HEADed instead, up to HEADS_PER_DIRECTORY
    names per directory: listing such a directory would list the chunk itself, and more."""

    def __init__(
        self,
        storage: BlobStorage | None,
        container: str,
        known: dict[str, int] | None = None,
        *,
        listed: tuple[str, ...] = (),
        lister: Callable[[str], Iterable[tuple[str, int]]] | None = None,
        head: Callable[[str], int | None] | None = None,
    ) -> None:
        """``known``: blobs known to exist (name -> size); ``listed``: prefixes whose blobs ``known``
        holds completely ("" = the whole container: no listing at all); ``lister``: (name, size) of
        the blobs under a prefix (a blob reader's; ``storage.list_blobs`` by default); ``head``: the
        size of one blob, None when it does not exist."""
        self._storage = storage
        self._lister = lister
        self._head = head
        self._container = container
        self._sizes: dict[str, int] = dict(known or {})
        self._absent: set[str] = set()
        self._listed: list[str] = list(listed)
        self._above_known = {_prefix(name[:i]) for name in self._sizes for i, c in enumerate(name) if c == "/"}
        self._above_known |= {""} if self._sizes else set()
        self._heads: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.listings = 0
        self.seconds = 0.0  # spent listing and HEADing

    def _covered(self, prefix: str) -> bool:
        return any(prefix.startswith(listed) for listed in self._listed)

    def size(self, name: str) -> int | None:
        with self._lock:
            if name in self._sizes:
                return self._sizes[name]
            if name in self._absent:
                return None
            prefix = _prefix(posixpath.dirname(name))
            if self._covered(prefix):
                return None
            started = time.perf_counter()
            try:
                if self._head is not None and prefix in self._above_known and self._heads[prefix] < HEADS_PER_DIRECTORY:
                    self._heads[prefix] += 1
                    found = self._head(name)
                    if found is None:
                        self._absent.add(name)
                        return None
                    self._sizes[name] = found
                    return found
                self._sizes.update(self._list(prefix))
                self._listed.append(prefix)
                self.listings += 1
                return self._sizes.get(name)
            finally:
                self.seconds += time.perf_counter() - started

    def _list(self, prefix: str) -> Iterable[tuple[str, int]]:
        if self._lister is not None:
            return self._lister(prefix)
        assert self._storage is not None, "an index without storage must be complete"
        return ((blob.name, blob.size) for blob in self._storage.list_blobs(self._container, prefix))

    @property
    def heads(self) -> int:
        return sum(self._heads.values())

    def exists(self, name: str) -> bool:
        return self.size(name) is not None


def _prefix(directory: str) -> str:
    return f"{directory}/" if directory else ""


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
