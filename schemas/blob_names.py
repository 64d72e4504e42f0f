"""Names of containers and blobs accepted from settings and job parameters.

Container names follow Azure's rules (3-63 characters: lowercase letters, digits, single hyphens
between them). Blob names are plain relative paths: no URL, no ``..`` or ``.`` segment, no empty
segment, no backslash or control character, at most 1024 characters and 254 segments (Azure's
limits), so they can be joined into output paths and ``/vsiaz/`` paths without surprises.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

CONTAINER_NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
MAX_BLOB_NAME_LENGTH = 1024
MAX_BLOB_PATH_SEGMENTS = 254
_FORBIDDEN_BLOB_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\?#]")

ContainerName = Annotated[str, Field(min_length=3, max_length=63, pattern=CONTAINER_NAME_PATTERN)]


def blob_path_problem(name: str) -> str | None:
    """Why ``name`` is not an acceptable blob path, or None when it is."""
    segments = name.split("/")
    checks = (
        (not name, "must not be empty"),
        (len(name) > MAX_BLOB_NAME_LENGTH, f"must be at most {MAX_BLOB_NAME_LENGTH} characters"),
        (
            "://" in name or name.lower().startswith(("http:", "https:", "/vsi")),
            "must be a path inside the container, not a URL",
        ),
        (name.startswith("/"), "must be relative (no leading '/')"),
        (
            _FORBIDDEN_BLOB_CHARACTERS.search(name) is not None,
            "must not contain control characters, '\\', '?' or '#'",
        ),
        (len(segments) > MAX_BLOB_PATH_SEGMENTS, f"must have at most {MAX_BLOB_PATH_SEGMENTS} path segments"),
        (any(s in {"", ".", ".."} for s in segments), "must not contain empty, '.' or '..' path segments"),
        (name.endswith("."), "must not end with '.'"),
    )
    return next((message for failed, message in checks if failed), None)


def _check_blob_path(name: str) -> str:
    problem = blob_path_problem(name)
    if problem:
        raise ValueError(f"blob path {problem}")
    return name


BlobPath = Annotated[str, AfterValidator(_check_blob_path)]
