"""Aggregating probed blobs (inventory summary) and writing JSON Lines outputs to blob storage."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repositories.blob_storage import BlobStorage, UploadedBlob
from services.inventory.probe import KIND_RASTER, KIND_UNREADABLE

JSONL_MEDIA_TYPE = "application/x-ndjson"
MAX_LISTED_UNREADABLE = 1000  # the summary lists at most this many unreadable blobs (all are in the JSONL)


@dataclass
class InventorySummary:
    """Counts and bytes by extension and by kind, COG or not, unreadable blobs with the reason."""

    blobs: int = 0
    bytes: int = 0
    by_extension: dict[str, dict[str, int]] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    rasters: Counter[str] = field(default_factory=Counter)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    unreadable_count: int = 0

    @staticmethod
    def _add(groups: dict[str, dict[str, int]], key: str, size: int) -> None:
        group = groups.setdefault(key, {"count": 0, "bytes": 0})
        group["count"] += 1
        group["bytes"] += size

    def add(self, entry: dict[str, Any]) -> None:
        size = int(entry["size"])
        self.blobs += 1
        self.bytes += size
        self._add(self.by_extension, entry["extension"] or "(none)", size)
        self._add(self.by_kind, entry["kind"], size)
        if entry["kind"] == KIND_RASTER:
            self.rasters["cog" if entry["raster"]["is_cog"] else "not_cog"] += 1
        elif entry["kind"] == KIND_UNREADABLE:
            self.unreadable_count += 1
            if len(self.unreadable) < MAX_LISTED_UNREADABLE:
                self.unreadable.append({"name": entry["name"], "reason": entry["error"]})

    def to_dict(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs,
            "bytes": self.bytes,
            "by_extension": dict(sorted(self.by_extension.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "rasters": {"cog": self.rasters["cog"], "not_cog": self.rasters["not_cog"]},
            "unreadable_count": self.unreadable_count,
            "unreadable": self.unreadable,
        }


def write_jsonl(storage: BlobStorage, container: str, name: str, records: Iterable[dict[str, Any]]) -> UploadedBlob:
    """Stream ``records`` to a local file, one JSON document a line, then upload it in blocks."""
    storage.ensure_container(container)
    with tempfile.TemporaryDirectory(prefix="geoetl-jsonl-") as work:
        path = Path(work) / "out.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")
        return storage.upload_file(container, name, path, content_type=JSONL_MEDIA_TYPE)


def flatten(chunks: Iterable[tuple[str, list[dict[str, Any]]]]) -> Iterator[dict[str, Any]]:
    for _key, entries in chunks:
        yield from entries
