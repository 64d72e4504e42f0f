"""Measures a process's peak RSS while a block of work runs (recorded in raster task results).

A sampling thread reads /proc/self/statm: unlike ``getrusage``'s ``ru_maxrss`` (the process's
lifetime high-water mark) it sees the peak of *this* task, even in a long-lived worker. Work done
concurrently by other threads of the process is included: it is the process's peak meanwhile.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATM = Path("/proc/self/statm")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int | None:
    """Resident set size of this process, or None where /proc is not available."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class PeakRss:
    start_bytes: int | None = None
    peak_bytes: int | None = None

    def observe(self, value: int | None) -> None:
        if value is not None and (self.peak_bytes is None or value > self.peak_bytes):
            self.peak_bytes = value


@contextmanager
def track_peak_rss(interval_seconds: float = 0.02) -> Iterator[PeakRss]:
    """Sample RSS every ``interval_seconds`` while the block runs; the result's peak is set on exit."""
    result = PeakRss(start_bytes=current_rss_bytes())
    result.observe(result.start_bytes)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_seconds):
            result.observe(current_rss_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result.observe(current_rss_bytes())


def release_free_memory() -> None:
    """Hand memory freed by a finished conversion back to the OS (glibc ``malloc_trim``).

    GDAL and numpy free their buffers, but glibc keeps the pages in per-thread arenas: without
    this a long-lived worker's RSS ratchets up by hundreds of MiB as tasks run on new threads
    (measured: 122 → ~500 MiB after four 144 MiB tiles; with it, back to ~130 MiB after each).
    A no-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
