"""Read-only views of the data storage account for the HTTP API: containers and paged blob listings.

Only the deployment's own containers are visible (INPUT_CONTAINERS and OUTPUT_CONTAINERS): the
Functions host's (azure-webjobs-*) and any other container are neither listed nor browsable (403).
"""

from __future__ import annotations

import re
from typing import Any

from repositories.blob_storage import BlobInfo, BlobStorage
from schemas.blob_names import CONTAINER_NAME_PATTERN, MAX_BLOB_NAME_LENGTH
from schemas.errors import (
    BlobAccessDeniedError,
    BlobNotFoundError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)

# Defaults of CONTAINER_BLOB_COUNT_CAP and CONTAINER_LIST_MAX_LIMIT (schemas/settings.py).
COUNT_CAP = 1000
CONTAINER_LIST_MAX_LIMIT = 100


def blob_summary(blob: BlobInfo) -> dict[str, Any]:
    return {
        "name": blob.name,
        "size": blob.size,
        "last_modified": blob.last_modified.isoformat() if blob.last_modified else None,
        "content_type": blob.content_type,
        "etag": blob.etag,
    }


# No blob name holds one (schemas/blob_names.py), so no prefix, suffix or storage token does.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _is_container_name(name: str) -> bool:
    return 3 <= len(name) <= 63 and re.fullmatch(CONTAINER_NAME_PATTERN, name) is not None


class ContainerBrowser:
    def __init__(self, storage: BlobStorage, *, max_limit: int, visible: tuple[str, ...]) -> None:
        self._storage = storage
        self._max_limit = max_limit
        self._visible = frozenset(name for name in visible if not name.startswith("azure-webjobs-"))

    def containers(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        max_limit: int = CONTAINER_LIST_MAX_LIMIT,
        count_cap: int = COUNT_CAP,
    ) -> dict[str, Any]:
        """One page of containers (by name) with their blob counts, exact up to ``count_cap`` blobs
        (then a lower bound): one listing request of at most ``count_cap`` blobs per container, so
        a page costs at most ``limit`` of them. ``cursor`` is the last name of the previous page."""
        details = []
        if limit is None:
            limit = min(50, max_limit)
        elif not 1 <= limit <= max_limit:
            details.append({"field": "limit", "message": f"must be between 1 and {max_limit}"})
        if cursor is not None and not _is_container_name(cursor):
            details.append({"field": "cursor", "message": "not a cursor returned by this API"})
        if details:
            raise InvalidRequestError("invalid query parameters", details=details)
        names = [n for n in self._storage.list_containers() if n in self._visible and (cursor is None or n > cursor)]
        result = []
        for name in names[:limit]:
            try:
                page, more = self._storage.list_blob_page(name, limit=count_cap)
            except BlobNotFoundError:  # deleted since it was listed
                continue
            result.append({"name": name, "blob_count": len(page), "blob_count_is_exact": more is None})
        next_cursor = names[limit - 1] if len(names) > limit else None
        return {"containers": result, "next_cursor": next_cursor}

    def blobs(
        self, container: str, *, prefix: str, suffix: str, limit: int | None, cursor: str | None
    ) -> dict[str, Any]:
        """One page of blobs; ``cursor`` is the storage continuation token. With ``suffix`` the
        page is filtered after listing, so it can hold fewer than ``limit`` blobs: follow
        ``next_cursor`` until it is null."""
        details = []
        if not _is_container_name(container):
            details.append({"field": "container", "message": "not a valid container name"})
        for field, value in (("prefix", prefix), ("suffix", suffix)):
            if len(value) > MAX_BLOB_NAME_LENGTH:
                details.append({"field": field, "message": f"at most {MAX_BLOB_NAME_LENGTH} characters"})
            elif _CONTROL_CHARACTERS.search(value):
                details.append({"field": field, "message": "must not contain control characters"})
        if limit is None:
            limit = min(100, self._max_limit)
        elif not 1 <= limit <= self._max_limit:
            details.append({"field": "limit", "message": f"must be between 1 and {self._max_limit}"})
        # Storage issues its tokens without control characters (Azurite answers 500 to one).
        if cursor is not None and (len(cursor) > 4096 or _CONTROL_CHARACTERS.search(cursor)):
            details.append({"field": "cursor", "message": "not a cursor returned by this API"})
        if details:
            raise InvalidRequestError("invalid query parameters", details=details)
        if container not in self._visible:
            raise ForbiddenError(
                f"container {container!r} is not one of this deployment's input or output containers",
                details=[{"field": "container", "message": "not an input or output container of this deployment"}],
            )
        try:
            page, next_cursor = self._storage.list_blob_page(container, prefix=prefix, limit=limit, continuation=cursor)
        except BlobNotFoundError as exc:
            raise NotFoundError(f"container {container!r} not found") from exc
        except BlobAccessDeniedError as exc:
            if cursor is None:
                raise
            # Storage refuses a continuation token it did not issue (400 InvalidQueryParameterValue).
            raise InvalidRequestError(
                "invalid cursor", details=[{"field": "cursor", "message": "not a cursor returned by this API"}]
            ) from exc
        blobs = [blob_summary(b) for b in page if not suffix or b.name.endswith(suffix)]
        return {"container": container, "prefix": prefix, "suffix": suffix, "blobs": blobs, "next_cursor": next_cursor}
