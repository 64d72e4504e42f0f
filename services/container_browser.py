"""Read-only views of the storage account for the HTTP API: containers and paged blob listings."""

from __future__ import annotations

import re
from typing import Any

from repositories.blob_storage import BlobInfo, BlobStorage
from schemas.blob_names import CONTAINER_NAME_PATTERN, MAX_BLOB_NAME_LENGTH
from schemas.errors import BlobNotFoundError, InvalidRequestError, NotFoundError

# Containers are counted by listing at most this many blobs; past it the count is a lower bound.
COUNT_CAP = 5000


def blob_summary(blob: BlobInfo) -> dict[str, Any]:
    return {
        "name": blob.name,
        "size": blob.size,
        "last_modified": blob.last_modified.isoformat() if blob.last_modified else None,
        "content_type": blob.content_type,
        "etag": blob.etag,
    }


class ContainerBrowser:
    def __init__(self, storage: BlobStorage, *, max_limit: int) -> None:
        self._storage = storage
        self._max_limit = max_limit

    def containers(self) -> dict[str, Any]:
        """Every container with its blob count, exact up to COUNT_CAP blobs (then a lower bound)."""
        result = []
        for name in self._storage.list_containers():
            page, more = self._storage.list_blob_page(name, limit=COUNT_CAP)
            result.append({"name": name, "blob_count": len(page), "blob_count_is_exact": more is None})
        return {"containers": result}

    def blobs(
        self, container: str, *, prefix: str, suffix: str, limit: int | None, cursor: str | None
    ) -> dict[str, Any]:
        """One page of blobs; ``cursor`` is the storage continuation token. With ``suffix`` the
        page is filtered after listing, so it can hold fewer than ``limit`` blobs: follow
        ``next_cursor`` until it is null."""
        details = []
        if not re.match(CONTAINER_NAME_PATTERN, container) or not 3 <= len(container) <= 63:
            details.append({"field": "container", "message": "not a valid container name"})
        for field, value in (("prefix", prefix), ("suffix", suffix)):
            if len(value) > MAX_BLOB_NAME_LENGTH:
                details.append({"field": field, "message": f"at most {MAX_BLOB_NAME_LENGTH} characters"})
        if limit is None:
            limit = min(100, self._max_limit)
        elif not 1 <= limit <= self._max_limit:
            details.append({"field": "limit", "message": f"must be between 1 and {self._max_limit}"})
        if cursor is not None and len(cursor) > 4096:
            details.append({"field": "cursor", "message": "not a cursor returned by this API"})
        if details:
            raise InvalidRequestError("invalid query parameters", details=details)
        try:
            page, next_cursor = self._storage.list_blob_page(container, prefix=prefix, limit=limit, continuation=cursor)
        except BlobNotFoundError as exc:
            raise NotFoundError(f"container {container!r} not found") from exc
        blobs = [blob_summary(b) for b in page if not suffix or b.name.endswith(suffix)]
        return {"container": container, "prefix": prefix, "suffix": suffix, "blobs": blobs, "next_cursor": next_cursor}
