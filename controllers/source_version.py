"""Pinning a source blob's version at submission, for every job type whose input is one blob."""

from __future__ import annotations

from controllers.process_raster_parameters import unquoted_etag
from repositories.blob_storage import BlobStorage
from schemas.errors import ConflictError, PermanentTaskError


def pin_source_etag(storage: BlobStorage, container: str, blob_name: str, asked: str | None) -> str | None:
    """The blob's current etag (one HEAD request), None when it does not exist (or storage refuses
    to describe it: the job then fails in its first stage with the reason). A caller's own
    ``asked`` etag must be the current one: a 409 naming ``source_etag`` otherwise. Storage outages
    propagate (503)."""
    try:
        current: str | None = unquoted_etag(storage.properties(container, blob_name).etag)
    except PermanentTaskError:
        current = None
    if asked is not None and asked != current:
        now = f"its etag is {current}" if current else "it does not exist"
        message = f"{container}/{blob_name} is not version {asked}: {now}"
        raise ConflictError(
            "the source is not the version asked for", details=[{"field": "source_etag", "message": message}]
        )
    return current
