"""A whole blob to a local file with parallel ranged GETs.

One GET at a time leaves a storage endpoint (and Azurite's single thread) idle while the SDK's
Python handles each response; ``parts_at_once`` ranges in flight keep it busy. Each part is written
at its offset (``os.pwrite``) as soon as it arrives, so memory stays at ``part_bytes *
parts_at_once`` whatever the blob's size. The caller pins the version: read the etag before, check
it after (a write in between changes it), since the ranges are separate requests.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

MIB = 1024 * 1024
# Measured against Azurite: 32 MiB parts cost it about half the CPU of 8 MiB ones per byte served.
DOWNLOAD_PART_BYTES = 32 * MIB
DOWNLOAD_PARTS_AT_ONCE = 2


class RangeReader(Protocol):
    def download_range(self, container: str, name: str, offset: int = 0, length: int | None = None) -> bytes: ...


def part_spans(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """Offset and length of each part of a ``size``-byte blob (none for an empty blob)."""
    if part_bytes < 1:
        raise ValueError("part_bytes must be positive")
    return [(offset, min(part_bytes, size - offset)) for offset in range(0, size, part_bytes)]


def download_to_file(
    storage: RangeReader,
    container: str,
    name: str,
    destination: Path,
    *,
    size: int,
    part_bytes: int = DOWNLOAD_PART_BYTES,
    parts_at_once: int = DOWNLOAD_PARTS_AT_ONCE,
) -> int:
    """Write the blob's first ``size`` bytes (its size, from its properties) to ``destination``;
    returns the bytes written. A part that comes back short (the blob shrank) is an error."""

    with destination.open("wb") as file:
        descriptor = file.fileno()

        def fetch(span: tuple[int, int]) -> int:
            offset, length = span
            data = storage.download_range(container, name, offset, length)
            if len(data) != length:
                raise OSError(f"{container}/{name}: {len(data)} bytes at offset {offset}, expected {length}")
            if os.pwrite(descriptor, data, offset) != length:
                raise OSError(f"short write of {length} bytes at offset {offset} to {destination}")
            return length

        spans = part_spans(size, part_bytes)
        if len(spans) <= 1:
            return sum(map(fetch, spans))
        with ThreadPoolExecutor(min(parts_at_once, len(spans)), thread_name_prefix="blob-download") as pool:
            return sum(pool.map(fetch, spans))
